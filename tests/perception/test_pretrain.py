"""Pre-training loop: outputs, budgets, exact resumption, config checks, objectives, errors."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.torch
import torch

from common.config import CONFIG_DIR, ConfigError, from_dict, load_config, read_yaml, to_dict
from perception.checkpoint import CheckpointError, load_encoder, read_checkpoint_meta
from perception.dataset import DatasetError, LabelSpec, ShardWriter, explicit_split
from perception.pretrain import (
    PretrainConfig,
    config_differences,
    load_pretrain_config,
    load_training_state,
    pretrain,
)

SEEDS = (1, 2, 3, 4, 5, 6)
STEPS = 24
TRAIN_FRAMES = 4 * STEPS  # seeds 1-4 are train, 5-6 val
SCHEMA = (
    LabelSpec.regression("lane_offset_m"),
    LabelSpec.regression("speed_mps"),
    LabelSpec.classification("signal_state", ("none", "red", "green")),
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 episodes x 24 frames of 84x84 in 3 shards: smooth frames with a moving stripe."""
    root = tmp_path_factory.mktemp("pretrain") / "ds"
    split = explicit_split(train_seeds=SEEDS[:4], val_seeds=SEEDS[4:])
    with ShardWriter(root, SCHEMA, frames_per_shard=2 * STEPS, split_of_seed=split) as writer:
        for seed in SEEDS:
            rng = np.random.default_rng(seed)
            t = np.arange(STEPS)
            base = rng.integers(0, 200, size=(1, 84, 84, 3)).astype(np.uint8)
            frames = np.repeat(base, STEPS, axis=0)
            for i in t:  # a bright column drifting right: temporal structure for ATC
                frames[i, :, (3 * i + seed) % 84] = 255
            labels = {
                "lane_offset_m": (0.1 * seed - 0.01 * t).astype(np.float32),
                "speed_mps": np.full(STEPS, 10.0 + seed, dtype=np.float32),
                "signal_state": (t % 3).astype(np.int64),
            }
            writer.add_episode(seed, frames, labels)
    return root


def tiny(*overrides: str, **changes: Any) -> PretrainConfig:
    """A small, fast CPU config (nature_cnn + CURL, batch 8) with extra changes."""
    base = ["encoder.embed_dim=64", "objective.curl.projection_dim=32", "batch_size=8",
            "log_every_steps=2", "checkpoint_every_steps=4", "shuffle_buffer=16",
            "device=cpu"]
    return dataclasses.replace(load_pretrain_config(None, [*base, *overrides]), **changes)


def state_tensors(out_dir: Path) -> dict[str, torch.Tensor]:
    return safetensors.torch.load_file(str(out_dir / "checkpoint" / "state.safetensors"))


def state_json(out_dir: Path) -> dict[str, Any]:
    data = json.loads((out_dir / "checkpoint" / "state.json").read_text())
    assert isinstance(data, dict)
    return data


def scalar_tags(tb_dir: Path) -> dict[str, list[int]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    return {tag: [e.step for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def no_temp_files(root: Path) -> bool:
    return not [p for p in root.rglob("*") if ".tmp" in p.name]


# --------------------------------------------------------------------------- config


def test_shipped_yaml_equals_defaults() -> None:
    path = CONFIG_DIR / "perception" / "pretrain.yaml"
    assert load_pretrain_config("pretrain") == PretrainConfig()
    assert load_config(PretrainConfig, path) == PretrainConfig()
    assert from_dict(PretrainConfig, read_yaml(path)) == PretrainConfig()
    assert read_yaml(path) == to_dict(PretrainConfig())  # spelled out, key for key


def test_config_overrides_and_validation() -> None:
    cfg = load_pretrain_config("pretrain", ["objective.name=atc", "batch_size=16",
                                            "max_minutes=5"])
    assert cfg.objective.name == "atc" and cfg.batch_size == 16 and cfg.max_minutes == 5.0
    assert load_pretrain_config(cfg) is cfg
    assert load_pretrain_config(cfg, ["lr=0.01"]).lr == 0.01
    with pytest.raises(ConfigError, match="unknown objective|valid choices"):
        load_pretrain_config(None, ["objective.name=simclr"])
    with pytest.raises(ConfigError, match="unknown encoder 'resnet'"):
        load_pretrain_config(None, ["encoder.name=resnet"])
    with pytest.raises(ConfigError, match="unknown config key 'epochs'"):
        load_pretrain_config(None, ["epochs=3"])
    with pytest.raises(ConfigError, match="batch_size must be >= 2"):
        load_pretrain_config(None, ["batch_size=1"])


def test_config_differences_ignore_budgets() -> None:
    a = to_dict(PretrainConfig())
    b = to_dict(dataclasses.replace(PretrainConfig(), max_steps=5, max_minutes=1.0, lr=0.5))
    assert config_differences(a, b) == ["lr (checkpoint 0.0003, now 0.5)"]


# --------------------------------------------------------------------------- training


def test_curl_run_writes_checkpoint_encoder_and_tensorboard(dataset: Path,
                                                            tmp_path: Path) -> None:
    cfg = tiny()
    rng_before = torch.get_rng_state()
    result = pretrain(cfg, dataset, tmp_path / "run", max_steps=6, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before), "the global RNG is left alone"
    assert result.steps == result.steps_this_call == 6 and result.resumed_from is None
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    out = result.out_dir

    # The resolved config, with the budget that was used.
    used = dataclasses.replace(cfg, max_steps=6)
    assert load_pretrain_config(result.config_path) == used
    meta = state_json(out)
    assert meta["step"] == 6 and meta["config"] == to_dict(used)
    assert (meta["epoch"], meta["batch_in_epoch"]) == (0, 6)
    assert meta["optimizer"]["param_groups"][0]["lr"] == cfg.lr
    tensors = state_tensors(out)
    assert any(k.startswith("objective.key_encoder.") for k in tensors)  # EMA target too
    assert "objective.W" in tensors and "optim.state.0.exp_avg" in tensors
    assert tensors["rng.objective"].dtype == torch.uint8

    # The encoder checkpoint is the online encoder of the state.
    encoder = load_encoder(result.encoder_dir, expected=cfg.encoder)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, tensors["objective.encoder." + key])
    extra = read_checkpoint_meta(result.encoder_dir)["extra"]
    assert extra == {"objective": "curl", "steps": 6, "data": str(dataset)}

    tags = scalar_tags(result.tb_dir)
    assert tags["train/loss"] == [2, 4, 6]
    assert {"train/accuracy", "train/lr", "perf/frames_per_s"} <= set(tags)
    assert no_temp_files(out)


def test_resume_continues_exactly(dataset: Path, tmp_path: Path) -> None:
    # batch 16 over 96 train frames: 6 batches per epoch, so the run crosses an epoch
    # and is resumed once inside epoch 0 and once inside epoch 1.
    cfg = tiny("batch_size=16")
    whole = pretrain(cfg, dataset, tmp_path / "whole", max_steps=8, progress=False)
    parts = tmp_path / "parts"
    first = pretrain(cfg, dataset, parts, max_steps=3, progress=False)
    assert first.steps == 3
    second = pretrain(cfg, dataset, parts, max_steps=7, progress=False)
    assert (second.resumed_from, second.steps, second.steps_this_call) == (3, 7, 4)
    assert (state_json(parts)["epoch"], state_json(parts)["batch_in_epoch"]) == (1, 1)
    last = pretrain(cfg, dataset, parts, max_steps=8, progress=False)
    assert (last.resumed_from, last.steps) == (7, 8)

    a, b = state_tensors(tmp_path / "whole"), state_tensors(parts)
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-5, atol=1e-6, msg=key)
    assert state_json(parts)["recent_losses"] == pytest.approx(
        state_json(tmp_path / "whole")["recent_losses"], rel=1e-5)
    assert last.final_loss == pytest.approx(whole.final_loss, rel=1e-5)
    assert last.total_minutes >= last.minutes


def test_resume_with_another_config_raises(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny()
    out = tmp_path / "run"
    pretrain(cfg, dataset, out, max_minutes=0, progress=False)
    with pytest.raises(ValueError, match=r"lr \(checkpoint 0.0003, now 0.002\)"):
        pretrain(dataclasses.replace(cfg, lr=2e-3), dataset, out, max_minutes=0,
                 progress=False)
    with pytest.raises(ValueError, match="objective.curl.tau"):
        pretrain(tiny("objective.curl.tau=0.5"), dataset, out, max_minutes=0, progress=False)
    # Budgets and log/checkpoint frequencies may change.
    again = pretrain(dataclasses.replace(cfg, log_every_steps=3), dataset, out, max_steps=50,
                     max_minutes=0, progress=False)
    assert again.resumed_from == 0
    # resume=False starts over with the new config.
    fresh = pretrain(dataclasses.replace(cfg, lr=2e-3), dataset, out, max_steps=1,
                     resume=False, progress=False)
    assert fresh.resumed_from is None and fresh.steps == 1
    assert state_json(out)["config"]["lr"] == 2e-3


def test_max_minutes_zero_writes_a_checkpoint_without_training(dataset: Path,
                                                                tmp_path: Path) -> None:
    cfg = tiny()
    result = pretrain(cfg, dataset, tmp_path / "run", max_minutes=0, progress=False)
    assert result.steps == 0 and result.final_loss is None
    assert state_json(result.out_dir)["step"] == 0
    assert load_training_state(result.checkpoint_dir).step == 0
    encoder = load_encoder(result.encoder_dir, expected=cfg.encoder)
    assert encoder.embed_dim == 64


def test_atc_trains_on_temporal_pairs(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny("objective.name=atc", "objective.atc.latent_dim=32",
               "objective.atc.hidden_dim=64", "temporal_k=3")
    result = pretrain(cfg, dataset, tmp_path / "atc", max_steps=2, progress=False)
    assert result.steps == 2
    assert result.final_loss is not None and math.isfinite(result.final_loss)
    assert any(k.startswith("objective.target_encoder.") for k in state_tensors(result.out_dir))


def test_mae_step(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny("objective.name=mae", "objective.mae.decoder_channels=8")
    result = pretrain(cfg, dataset, tmp_path / "mae", max_steps=1, progress=False)
    assert result.steps == 1
    assert result.final_loss is not None and math.isfinite(result.final_loss)


def test_aux_heads_read_dataset_labels(dataset: Path, tmp_path: Path) -> None:
    cfg = tiny("objective.aux.heads=[{label: lane_offset_m}, {label: signal_state, "
               "kind: classification, num_classes: 3}]", "objective.aux.hidden_dim=16",
               "log_every_steps=1")
    result = pretrain(cfg, dataset, tmp_path / "aux", max_steps=1, progress=False)
    tags = scalar_tags(result.tb_dir)
    assert {"train/aux/lane_offset_m", "train/aux/signal_state/accuracy",
            "train/ssl_loss"} <= set(tags)
    missing = tiny("objective.aux.heads=[{label: depth, kind: depth}]")
    with pytest.raises(DatasetError, match="unknown label key 'depth'"):
        pretrain(missing, dataset, tmp_path / "aux2", max_steps=1, progress=False)


# --------------------------------------------------------------------------- errors


def test_clear_errors(dataset: Path, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no dataset"):
        pretrain(tiny(), tmp_path / "nowhere", tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match=r"84x84 .*encoder.image_size is 96x96"):
        pretrain(tiny("encoder.image_size=[96, 96]"), dataset, tmp_path / "b", progress=False)
    assert not (tmp_path / "b").exists(), "nothing is written before the checks pass"
    with pytest.raises(DatasetError, match="unknown split 'trian'"):
        pretrain(tiny("split=trian"), dataset, tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="fewer samples than one batch"):
        pretrain(tiny(f"batch_size={TRAIN_FRAMES + 1}"), dataset, tmp_path / "d",
                 max_steps=1, progress=False)
    with pytest.raises(ConfigError, match="max_steps must be >= 0"):
        pretrain(tiny(), dataset, tmp_path / "e", max_steps=-1, progress=False)


def test_corrupt_checkpoint_is_reported(dataset: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    pretrain(tiny(), dataset, out, max_minutes=0, progress=False)
    (out / "checkpoint" / "state.safetensors").write_bytes(b"\x00garbage")
    with pytest.raises(CheckpointError, match="corrupt"):
        pretrain(tiny(), dataset, out, max_minutes=0, progress=False)


def test_interrupted_save_keeps_the_previous_checkpoint(dataset: Path, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    pretrain(tiny(), dataset, out, max_minutes=0, progress=False)

    def interrupted(tensors: Any, filename: str, metadata: Any = None) -> None:
        Path(filename).write_bytes(b"half a file")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        pretrain(tiny(), dataset, out, max_steps=1, progress=False)
    monkeypatch.undo()
    assert load_training_state(out / "checkpoint").step == 0
    assert no_temp_files(out)
