"""The label study: inputs that explain a label score high, inputs that do not score low."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from agents.bc import REASON_COLUMNS
from agents.label_study import (
    FitSettings,
    cross_validate,
    input_sets,
    load_dataset,
    main,
    reason_r2,
    run_study,
)
from planning.action_modes import MetaAction


def synthetic_dataset(path: Path, episodes: int = 24, length: int = 60) -> Path:
    """An expert that brakes exactly when its gap is under 30 m; the policy's
    ``embedding`` is noise, so only the gap explains the label."""
    rng = np.random.default_rng(0)
    rows = episodes * length
    gap = rng.uniform(5.0, 200.0, rows)
    speed = rng.uniform(10.0, 30.0, rows)
    label = np.where(gap < 30.0, MetaAction.SLOWER, MetaAction.KEEP_LANE)
    reasons = np.column_stack([speed, gap, np.full(rows, 5.0), np.full(rows, 30.0)])
    assert reasons.shape[1] == len(REASON_COLUMNS)
    np.savez(path, embedding=rng.normal(size=(rows, 16)).astype(np.float32),
             measurements=speed[:, None].astype(np.float32),
             decision=np.column_stack([speed, np.zeros(rows), np.zeros(rows)]).astype(
                 np.float32),
             label=label, episode=np.repeat(np.arange(episodes), length),
             expert_reasons=reasons)
    return path


def test_the_gap_explains_braking_and_noise_does_not(tmp_path: Path) -> None:
    data = load_dataset(synthetic_dataset(tmp_path / "d.npz"))
    sets = input_sets(data)
    settings = FitSettings(hidden=(32,), epochs=15, batch_size=64, learning_rate=3e-3)
    policy = next(k for k in sets if k.startswith("policy inputs ("))
    assert "embedding" in policy
    _, _, blind = cross_validate(sets[policy], data["label"], data["episode"], settings)
    _, _, seeing = cross_validate(sets["policy inputs + expert's gap"], data["label"],
                                  data["episode"], settings)
    assert blind["slower"] < 0.3  # 16 % of labels, unexplained: mostly predicted `keep`
    assert seeing["slower"] > 0.8
    assert np.isnan(seeing["stop"])  # never a label here


def test_the_embedding_rows_drop_or_penalise_it(tmp_path: Path) -> None:
    # The label follows the target speed in `decision`; 64 noise embedding features let
    # the plain fit memorise. Without the embedding, or with its weights penalised, the
    # held-out likelihood is better.
    rng = np.random.default_rng(1)
    episodes, length = 16, 40
    rows = episodes * length
    target = rng.uniform(10.0, 30.0, rows)
    path = tmp_path / "d.npz"
    np.savez(path, embedding=rng.normal(size=(rows, 64)).astype(np.float32),
             decision=np.column_stack([target, rng.normal(size=(rows, 2))]).astype(np.float32),
             label=np.where(target < 20.0, MetaAction.SLOWER, MetaAction.KEEP_LANE),
             episode=np.repeat(np.arange(episodes), length),
             expert_reasons=np.tile([20.0, 50.0, 20.0, 25.0], (rows, 1)))
    settings = FitSettings(hidden=(64,), epochs=30, batch_size=32, learning_rate=3e-3,
                           embedding_l2=0.3)
    out = {r.inputs: r for r in run_study(load_dataset(path), settings)}
    names = list(out)
    plain = names[names.index("policy inputs (decision, embedding)")]
    assert names[names.index(plain) + 1:names.index(plain) + 3] == [
        "policy inputs without the embedding", "policy inputs, embedding L2 0.3"]
    assert out["policy inputs without the embedding"].features == 3
    assert out["policy inputs, embedding L2 0.3"].features == 67
    assert out["policy inputs, embedding L2 0.3"].nll < out[plain].nll
    assert out["policy inputs without the embedding"].nll < out[plain].nll
    assert out["policy inputs, embedding L2 0.3"].accuracy > 0.9


def test_reason_r2_finds_a_reason_the_inputs_carry(tmp_path: Path) -> None:
    # The policy's `measurements` hold the ego speed; the gap is independent noise to it.
    path = synthetic_dataset(tmp_path / "d.npz")
    data = dict(load_dataset(path))
    reasons = data["expert_reasons"].copy()
    reasons[:, 3] = 2.0 * reasons[:, 0]  # desired speed: twice the (observed) speed
    data["expert_reasons"] = reasons
    r2 = reason_r2(data, FitSettings(hidden=(32,), epochs=15, batch_size=64,
                                     learning_rate=3e-3))
    assert r2["desired_speed_mps"] > 0.9
    assert r2["gap_m"] < 0.2


def test_the_command_prints_a_table_and_rejects_bad_files(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = synthetic_dataset(tmp_path / "d.npz", episodes=4, length=20)
    assert main([str(path), "--epochs", "1", "--folds", "2", "--json",
                 str(tmp_path / "rows.json")]) == 0
    out = capsys.readouterr().out
    assert "| policy inputs (decision, embedding, measurements) |" in out
    assert "labels: keep_lane" in out
    result = json.loads((tmp_path / "rows.json").read_text())
    rows = result["rows"]
    assert len(rows) == 7 and {"inputs", "accuracy", "nll", "recall"} <= set(rows[0])
    assert set(result["reason_r2"]) == {"gap_m", "closing_speed_mps", "desired_speed_mps"}
    assert "Held-out R^2 of the expert's reasons" in out
    assert main([str(tmp_path / "missing.npz")]) == 2
    assert "cannot read BC dataset" in capsys.readouterr().err
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    assert main([str(tmp_path / "other.npz")]) == 2
    assert "missing ['label', 'episode', 'expert_reasons']" in capsys.readouterr().err
    assert main([str(path), "--folds", "1"]) == 2
    assert main([str(path), "--embedding-l2", "-1"]) == 2
    assert "--embedding-l2 >= 0" in capsys.readouterr().err


def test_continuous_labels_unwritable_output_and_unexplained_rows(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = synthetic_dataset(tmp_path / "d.npz", episodes=4, length=20)
    data = dict(np.load(path))
    # A control-mode run's labels are [steer, accel] rows: refused with the reason.
    np.savez(tmp_path / "control.npz", **{**data, "label": np.zeros((80, 2), np.float32)})
    assert main([str(tmp_path / "control.npz")]) == 2
    assert "needs a BC run in action_mode 'behavior'" in capsys.readouterr().err
    # An output path that cannot be written: one error line, exit 2.
    assert main([str(path), "--epochs", "1", "--folds", "2", "--json",
                 str(path / "rows.json")]) == 2  # its parent is a file
    assert "error: cannot write" in capsys.readouterr().err
    # Decisions without the expert's reasons (off every lane) are left out.
    reasons = data["expert_reasons"].copy()
    reasons[:5, 1] = np.nan
    np.savez(tmp_path / "nan.npz", **{**data, "expert_reasons": reasons})
    loaded = load_dataset(tmp_path / "nan.npz")
    assert all(len(v) == 75 for v in loaded.values())
    assert np.isfinite(loaded["expert_reasons"]).all()
