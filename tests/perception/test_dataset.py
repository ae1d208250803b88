"""Frame dataset shards: writing, streaming, splits, shuffling, workers, pairs, faults."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from perception.dataset import (
    DatasetError,
    FrameDataset,
    LabelSpec,
    ShardWriter,
    explicit_split,
    iter_frame_chunks,
    load_split_arrays,
    num_frames,
    read_manifest,
    split_by_seed,
    temporal_pairs,
)

SEEDS = (11, 12, 13, 14, 15, 16)
STEPS = 40
SCHEMA = (
    LabelSpec.regression("lane_offset_m"),
    LabelSpec.regression("lead_distance_m"),
    LabelSpec.classification("signal_state", ("none", "red", "yellow", "green")),
    LabelSpec.regression("depth", shape=(84, 84)),
)
SPLIT = explicit_split(train_seeds=(11, 12, 14, 16), val_seeds=(13, 15))


def episode(seed: int, n: int = STEPS) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Frames that name themselves (pixel [0, 0] = seed, step) and known labels."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, size=(n, 84, 84, 3), dtype=np.uint8)
    t = np.arange(n)
    frames[:, 0, 0, 0] = seed
    frames[:, 0, 0, 1] = t
    lead = np.where(t % 3 == 0, np.nan, 20.0 + t).astype(np.float32)
    labels = {
        "lane_offset_m": (0.01 * seed + 0.001 * t).astype(np.float64),  # cast to float32
        "lead_distance_m": lead,
        "signal_state": (t % 4).astype(np.int64),
        "depth": np.full((n, 84, 84), float(seed), dtype=np.float32),
    }
    return frames, labels


def write_dataset(root: Path, frames_per_shard: int = 80) -> Path:
    with ShardWriter(root, SCHEMA, frames_per_shard=frames_per_shard,
                     split_of_seed=SPLIT, metadata={"env": "synthetic"}) as writer:
        for seed in SEEDS:
            frames, labels = episode(seed)
            writer.add_episode(seed, frames, labels)
    return root


@pytest.fixture()
def dataset(tmp_path: Path) -> Path:
    return write_dataset(tmp_path / "ds")


def ids(samples: list[dict[str, torch.Tensor]]) -> list[tuple[int, int]]:
    return [(int(s["seed"]), int(s["step"])) for s in samples]


def test_manifest_and_whole_episode_shards(dataset: Path) -> None:
    manifest = read_manifest(dataset)
    assert manifest.image_shape == (84, 84, 3)
    assert manifest.label_names == ("lane_offset_m", "lead_distance_m", "signal_state", "depth")
    assert manifest.label("signal_state").num_classes == 4
    assert manifest.metadata == {"env": "synthetic"}
    assert num_frames(dataset, "train") == 4 * STEPS and num_frames(dataset, "val") == 2 * STEPS
    raw = json.loads((dataset / "manifest.json").read_text())
    assert raw["format_version"] == 1 and raw["labels"][2]["class_names"][1] == "red"
    for info in manifest.shards:
        with np.load(dataset / info.file, allow_pickle=False) as npz:
            assert npz["frames"].dtype == np.uint8 and npz["lane_offset_m"].dtype == np.float32
            seeds = npz["seed"]
            # Whole episodes only, of one split.
            assert sorted(Counter(seeds.tolist()).values()) == [STEPS] * len(info.seeds)
            assert set(seeds.tolist()) == set(info.seeds)
            assert {SPLIT(int(s)) for s in seeds} == {info.split}
            assert len(np.unique(npz["episode"])) == len(info.seeds)
    assert set(manifest.seeds("train")).isdisjoint(manifest.seeds("val"))
    assert not list(dataset.glob("*.tmp*")), "no temporary files left behind"


def test_streaming_yields_every_frame_once_per_split(dataset: Path) -> None:
    seen: dict[str, list[tuple[int, int]]] = {}
    for split in ("train", "val"):
        ds = FrameDataset(dataset, split, keys=["lane_offset_m", "signal_state"],
                          shuffle_buffer=16)
        samples = list(ds)
        seen[split] = ids(samples)
        assert len(seen[split]) == len(set(seen[split])) == num_frames(dataset, split)
        s = samples[0]
        assert s["frames"].shape == (84, 84, 3) and s["frames"].dtype == torch.uint8
        assert s["lane_offset_m"].dtype == torch.float32 and s["signal_state"].dtype == torch.int64
        assert "depth" not in s and "lead_distance_m" not in s
        for s in samples:  # labels travel with their frame
            seed, step = int(s["frames"][0, 0, 0]), int(s["frames"][0, 0, 1])
            assert (seed, step) == (int(s["seed"]), int(s["step"]))
            assert float(s["lane_offset_m"]) == pytest.approx(0.01 * seed + 0.001 * step)
    train_seeds = {seed for seed, _ in seen["train"]}
    val_seeds = {seed for seed, _ in seen["val"]}
    assert train_seeds == {11, 12, 14, 16} and val_seeds == {13, 15}


def test_split_by_seed_is_deterministic_and_per_seed() -> None:
    splits = [split_by_seed(s, 0.3, salt=1) for s in range(2000)]
    assert splits == [split_by_seed(s, 0.3, salt=1) for s in range(2000)]
    assert set(splits) == {"train", "val"}
    assert 0.25 < splits.count("val") / 2000 < 0.35
    assert splits != [split_by_seed(s, 0.3, salt=2) for s in range(2000)]
    assert all(split_by_seed(s, 0.0) == "train" for s in range(50))
    with pytest.raises(DatasetError, match="both 'train' and 'val'"):
        explicit_split(train_seeds=[1], val_seeds=[1])
    with pytest.raises(DatasetError, match="none of the explicit"):
        explicit_split(train_seeds=[1])(2)


def test_hash_split_keeps_seeds_apart(tmp_path: Path) -> None:
    with ShardWriter(tmp_path / "h", SCHEMA[:1], frames_per_shard=30,
                     split_of_seed=lambda s: split_by_seed(s, 0.5)) as writer:
        for seed in range(12):
            frames, labels = episode(seed, n=10)
            writer.add_episode(seed, frames, {"lane_offset_m": labels["lane_offset_m"]})
    manifest = read_manifest(tmp_path / "h")
    assert set(manifest.seeds("train")).isdisjoint(manifest.seeds("val"))
    assert sorted(manifest.seeds()) == list(range(12))


def test_shuffling_is_deterministic_per_seed_and_epoch(dataset: Path) -> None:
    def order(seed: int, epoch: int) -> list[tuple[int, int]]:
        ds = FrameDataset(dataset, "train", keys=[], seed=seed, shuffle_buffer=32)
        ds.set_epoch(epoch)
        return ids(list(ds))

    a = order(0, 0)
    assert a == order(0, 0)
    assert a != order(0, 1) and a != order(1, 0)
    assert sorted(a) == sorted(order(0, 1))
    plain = ids(list(FrameDataset(dataset, "train", keys=[], shuffle_shards=False,
                                  shuffle_buffer=0)))
    assert plain != a and plain == ids(list(FrameDataset(dataset, "train", keys=[],
                                                         shuffle_shards=False,
                                                         shuffle_buffer=0)))
    manifest = read_manifest(dataset)
    assert plain[0] == (manifest.shards_of("train")[0].seeds[0], 0)


def test_dataloader_with_two_workers_yields_each_frame_once(dataset: Path) -> None:
    ds = FrameDataset(dataset, "train", keys=["signal_state"], shuffle_buffer=8)
    loader = DataLoader(ds, batch_size=16, num_workers=2)
    got: list[tuple[int, int]] = []
    for batch in loader:
        assert batch["frames"].shape[1:] == (84, 84, 3)
        got += list(zip(batch["seed"].tolist(), batch["step"].tolist(), strict=True))
    assert len(got) == len(set(got)) == 4 * STEPS


def test_temporal_pairs_are_k_steps_apart_in_the_same_episode(dataset: Path) -> None:
    k = 3
    ds = FrameDataset(dataset, "val", keys=["lane_offset_m"], temporal_offset_k=k,
                      shuffle_buffer=10)
    samples = list(ds)
    assert len(samples) == 2 * (STEPS - k)  # the last k steps have no partner
    for s in samples:
        nxt = s["frames_next"]
        assert int(nxt[0, 0, 0]) == int(s["seed"])  # same episode
        assert int(nxt[0, 0, 1]) == int(s["step"]) + k
    # Irregular steps: partners are found by step value, not by position.
    src, dst = temporal_pairs(np.array([0, 0, 0, 1, 1]), np.array([0, 2, 4, 0, 2]), 2)
    assert src.tolist() == [0, 1, 3] and dst.tolist() == [1, 2, 4]


def test_load_split_arrays_and_frame_chunks_align(dataset: Path) -> None:
    arrays = load_split_arrays(dataset, "train", ["lead_distance_m", "signal_state"])
    assert set(arrays) == {"episode", "seed", "step", "lead_distance_m", "signal_state"}
    assert len(arrays["seed"]) == 4 * STEPS and np.isnan(arrays["lead_distance_m"]).any()
    chunks = list(iter_frame_chunks(dataset, "train", chunk=25))
    assert all(1 <= len(c) <= 25 for c in chunks)
    frames = np.concatenate(chunks)
    assert frames[:, 0, 0, 0].tolist() == arrays["seed"].tolist()
    assert frames[:, 0, 0, 1].tolist() == arrays["step"].tolist()
    limited = load_split_arrays(dataset, "train", ["signal_state", "frames"], max_frames=50)
    assert len(limited["signal_state"]) == len(limited["frames"]) == 50
    assert sum(len(c) for c in iter_frame_chunks(dataset, "train", 30, max_frames=50)) == 50
    depth = load_split_arrays(dataset, "val", ["depth"])["depth"]
    assert depth.shape == (2 * STEPS, 84, 84)


def test_interrupted_writer_leaves_complete_shards(tmp_path: Path) -> None:
    root = tmp_path / "crash"
    writer = ShardWriter(root, SCHEMA, frames_per_shard=80, split_of_seed=SPLIT)
    for seed in SEEDS[:5]:  # 11, 12 fill a train shard; 13, 15 a val shard; 14 waits
        frames, labels = episode(seed)
        writer.add_episode(seed, frames, labels)
    assert writer.completed_seeds() == {11, 12, 13, 15}
    assert writer.pending_seeds() == {14}
    # The process dies here: close() is never called.
    del writer
    manifest = read_manifest(root)
    assert sorted(manifest.seeds()) == [11, 12, 13, 15]
    assert len(list(FrameDataset(root, "train", keys=[]))) == 2 * STEPS

    # Resume: the collector skips completed seeds and adds the rest.
    with ShardWriter(root, SCHEMA, frames_per_shard=80, split_of_seed=SPLIT,
                     resume=True) as writer:
        assert writer.completed_seeds() == {11, 12, 13, 15}
        with pytest.raises(DatasetError, match="seed 12 is already"):
            writer.add_episode(12, *episode(12))
        for seed in SEEDS:
            if seed not in writer.completed_seeds():
                writer.add_episode(seed, *episode(seed))
    manifest = read_manifest(root)
    assert sorted(manifest.seeds()) == list(SEEDS)
    episodes = load_split_arrays(root, "train", [])["episode"]
    assert len(np.unique(episodes)) == 4  # global ids stay unique across the resume


def test_exception_mid_episode_keeps_finished_episodes(tmp_path: Path) -> None:
    root = tmp_path / "exc"
    with pytest.raises(RuntimeError, match="simulator crashed"), \
            ShardWriter(root, SCHEMA, frames_per_shard=1000, split_of_seed=SPLIT) as writer:
        writer.add_episode(11, *episode(11))
        frames, labels = episode(12)
        with pytest.raises(DatasetError, match="shape"):  # a bad episode is refused whole
            writer.add_episode(12, frames[:-1], labels)
        raise RuntimeError("simulator crashed")
    manifest = read_manifest(root)
    assert manifest.seeds() == (11,)
    assert len(list(FrameDataset(root, "train", keys=[]))) == STEPS
    with pytest.raises(DatasetError, match="already exists"):
        ShardWriter(root, SCHEMA, split_of_seed=SPLIT)
    with pytest.raises(DatasetError, match="label schema"):
        ShardWriter(root, SCHEMA[:2], split_of_seed=SPLIT, resume=True)


def test_orphan_shard_after_crash_is_ignored(dataset: Path) -> None:
    # A shard renamed into place whose manifest update never happened.
    (dataset / "shard_00099.npz").write_bytes(b"half a shard")
    assert num_frames(dataset, "train") == 4 * STEPS
    with ShardWriter(dataset, SCHEMA, split_of_seed=explicit_split(train_seeds=[20]),
                     resume=True) as writer:
        writer.add_episode(20, *episode(20))
    assert read_manifest(dataset).shards[-1].file == "shard_00100.npz"
    assert (dataset / "shard_00099.npz").read_bytes() == b"half a shard"


def test_writer_rejects_bad_episodes(tmp_path: Path) -> None:
    writer = ShardWriter(tmp_path / "bad", SCHEMA, split_of_seed=SPLIT)
    frames, labels = episode(11)
    with pytest.raises(DatasetError, match="missing \\['depth'\\]"):
        writer.add_episode(11, frames, {k: v for k, v in labels.items() if k != "depth"})
    with pytest.raises(DatasetError, match="uint8"):
        writer.add_episode(11, frames.astype(np.float32), labels)
    with pytest.raises(DatasetError, match="outside \\[0, 4\\)"):
        writer.add_episode(11, frames, {**labels, "signal_state": np.full(STEPS, 7)})
    with pytest.raises(DatasetError, match="does not cast"):
        writer.add_episode(11, frames, {**labels, "signal_state": np.zeros(STEPS)})
    with pytest.raises(DatasetError, match="strictly increasing"):
        writer.add_episode(11, frames, labels, steps=np.zeros(STEPS, dtype=np.int64))
    writer.add_episode(11, frames, labels)
    with pytest.raises(DatasetError, match="dataset holds \\(84, 84, 3\\)"):
        writer.add_episode(12, frames[:, :40], labels)
    with pytest.raises(DatasetError, match="reserved"):
        LabelSpec.regression("frames")
    with pytest.raises(DatasetError, match="integer dtype"):
        LabelSpec("x", dtype="float32", kind="classification", num_classes=3)


def test_missing_dataset_and_manifest(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset at .*bulletdrive collect"):
        FrameDataset(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="expected manifest.json"):
        read_manifest(tmp_path / "empty")


def test_corrupt_manifest(dataset: Path) -> None:
    (dataset / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="corrupt dataset manifest"):
        FrameDataset(dataset)
    (dataset / "manifest.json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(DatasetError, match="not a 'bulletdrive.frames' manifest"):
        read_manifest(dataset)


def test_missing_shard_file(dataset: Path) -> None:
    info = read_manifest(dataset).shards_of("val")[0]
    (dataset / info.file).unlink()
    with pytest.raises(DatasetError, match=f"shard file .*{info.file} listed .* is missing"):
        FrameDataset(dataset, "val")


def test_corrupt_shard_is_named(dataset: Path) -> None:
    info = read_manifest(dataset).shards_of("val")[0]
    path = dataset / info.file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(DatasetError, match=f"corrupt shard .*{info.file}"):
        list(FrameDataset(dataset, "val"))
    with pytest.raises(DatasetError, match=f"corrupt shard .*{info.file}"):
        list(iter_frame_chunks(dataset, "val"))
    path.write_bytes(b"garbage" * 100)
    with pytest.raises(DatasetError, match=f"corrupt shard .*{info.file}"):
        load_split_arrays(dataset, "val")


def test_unknown_split_key_and_empty_split(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="unknown split 'trian'; valid splits: train, val"):
        FrameDataset(dataset, "trian")
    with pytest.raises(DatasetError, match="split 'test' .* is empty"):
        FrameDataset(dataset, "test")
    with pytest.raises(DatasetError, match="unknown label key 'speed' .*; valid keys: "
                                           "lane_offset_m, lead_distance_m, signal_state"):
        FrameDataset(dataset, "train", keys=["speed"])
    with pytest.raises(DatasetError, match="unknown label key"):
        load_split_arrays(dataset, "train", ["speed"])
    ShardWriter(tmp_path / "nothing", SCHEMA).close()
    with pytest.raises(DatasetError, match="split 'train' .* is empty"):
        FrameDataset(tmp_path / "nothing", "train")
    assert num_frames(tmp_path / "nothing", "train") == 0
