"""The supervised ceiling: a label painted into the frames is read, a label that is not
there is not; undefined labels are filled or left out; bad input gives one message."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from perception.ceiling import CeilingConfig, fit_ceiling, load_split, main
from perception.dataset import LabelSpec, ShardWriter, explicit_split

SCHEMA = (LabelSpec.regression("bright"), LabelSpec.regression("noise"),
          LabelSpec.classification("colour", ("red", "green")))


def make_dataset(root: Path) -> Path:
    """8 episodes x 40 frames of 36 x 36 px: ``bright`` is the brightness of the upper half
    (NaN on every 5th frame), ``noise`` is not in the image."""
    split = explicit_split(train_seeds=tuple(range(6)), val_seeds=(6, 7))
    with ShardWriter(root, SCHEMA, frames_per_shard=100, split_of_seed=split) as writer:
        for seed in range(8):
            rng = np.random.default_rng(seed)
            n = 40
            bright = rng.uniform(0.0, 1.0, n)
            frames = rng.integers(0, 30, size=(n, 36, 36, 3), dtype=np.uint8)
            frames[:, :18] += (200 * bright).astype(np.uint8)[:, None, None, None]
            writer.add_episode(seed, frames, {
                "bright": np.where(np.arange(n) % 5 == 0, np.nan, bright),
                "noise": rng.normal(size=n), "colour": rng.integers(0, 2, n)})
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("ceiling") / "ds")


def _fit(dataset: Path, label: str) -> float:
    cfg = CeilingConfig(label=label, steps=150, eval_every=150, batch_size=32,
                        learning_rate=1e-3, device="cpu")
    points = fit_ceiling(load_split(dataset, "train", cfg), load_split(dataset, "val", cfg), cfg)
    assert [p.step for p in points] == [150]
    return points[-1].r2


def test_painted_label_is_read_and_absent_one_is_not(dataset: Path) -> None:
    assert _fit(dataset, "bright") > 0.8
    assert _fit(dataset, "noise") < 0.2


def test_undefined_labels_are_left_out_or_filled(dataset: Path) -> None:
    frames, y = load_split(dataset, "val", CeilingConfig(label="bright"))
    assert len(y) == len(frames) == 2 * 32 and np.isfinite(y).all()
    _, filled = load_split(dataset, "val", CeilingConfig(label="bright", fill=5.0, clip=2.0))
    assert len(filled) == 80 and np.count_nonzero(filled == 2.0) == 16 and filled.max() == 2.0


def test_command_writes_table_and_json(dataset: Path, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "curve.json"
    assert main([str(dataset), "--label", "bright", "--steps", "4", "--eval-every", "2",
                 "--device", "cpu", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| steps | held-out R^2 | MAE | time [s] |" in table and "| 4 |" in table
    saved = json.loads(out.read_text())
    assert [p["step"] for p in saved["curve"]] == [2, 4]
    assert saved["frames"] == {"train": 192, "val": 64}


@pytest.mark.parametrize(("args", "message"), [
    (["--label", "colour"], "not a scalar regression label"),
    (["--label", "nope"], "valid: bright, noise"),
    (["--encoder", "resnet"], "unknown encoder 'resnet'"),
    (["--steps", "0"], "steps, batch_size and eval_every must be >= 1"),
])
def test_bad_input_is_one_clear_error(dataset: Path, args: list[str], message: str,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(dataset), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err


def test_missing_dataset_is_an_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(tmp_path / "none")]) == 2
    assert "error: " in capsys.readouterr().err


def test_unwritable_json_is_an_error(dataset: Path, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "file").write_text("x")
    assert main([str(dataset), "--label", "bright", "--steps", "1", "--device", "cpu",
                 "--json", str(tmp_path / "file" / "out.json")]) == 2
    assert "error: cannot write" in capsys.readouterr().err
