"""Linear probes: ridge closed form, alpha choice, R^2/accuracy, NaN rows, reports."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from common.config import ConfigError, from_dict
from perception.dataset import DatasetError, LabelSpec, ShardWriter, explicit_split
from perception.encoders import build_encoder
from perception.probes import (
    ProbeConfig,
    ProbeReport,
    embed_split,
    fit_ridge,
    probe_classification,
    probe_regression,
    r2_score,
    run_probes,
)


def linear_data(n: int, d: int, seed: int, noise: float = 0.01
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 10.0, size=d) + rng.normal(size=d)
    w = rng.normal(size=d)
    y = X @ w + 3.0 + noise * rng.normal(size=n)
    return X, y, w


def test_ridge_matches_least_squares_as_alpha_goes_to_zero() -> None:
    X, y, _ = linear_data(200, 12, seed=0, noise=0.5)
    fit = fit_ridge(X, y, alpha=1e-12)
    design = np.hstack([X, np.ones((len(X), 1))])
    sol, *_ = np.linalg.lstsq(design, y, rcond=None)
    np.testing.assert_allclose(fit.coef, sol[:-1], rtol=1e-6, atol=1e-9)
    assert float(fit.intercept) == pytest.approx(sol[-1], rel=1e-6)
    # Several targets at once; and fewer rows than features (the dual form).
    Y = np.stack([y, -2 * y], axis=1)
    assert fit_ridge(X, Y, 1e-12).coef.shape == (12, 2)
    np.testing.assert_allclose(fit_ridge(X, Y, 1e-12).coef[:, 1], -2 * sol[:-1], rtol=1e-6)
    Xw, yw, _ = linear_data(10, 30, seed=1)
    wide = fit_ridge(Xw, yw, alpha=1e-9)
    np.testing.assert_allclose(wide.predict(Xw), yw, atol=1e-4)  # interpolates
    # Strong regularisation shrinks towards the mean.
    strong = fit_ridge(X, y, alpha=1e8)
    np.testing.assert_allclose(strong.predict(X), y.mean(), atol=1e-3 * np.abs(y).max())


def test_regression_probe_r2_near_one_for_linear_labels() -> None:
    X, y, w = linear_data(600, 16, seed=2)
    groups = np.repeat(np.arange(15), 40)
    res = probe_regression(X[:400], y[:400], X[400:], y[400:], groups=groups[:400],
                           label="lane_offset_m")
    assert res.metric == "r2" and res.value > 0.999
    assert (res.n_train, res.n_val) == (400, 200) and res.alpha is not None
    assert res.label == "lane_offset_m"


def test_regression_probe_r2_not_positive_for_random_labels() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(500, 32))
    y = rng.normal(size=500)
    res = probe_regression(X[:300], y[:300], X[300:], y[300:], groups=np.arange(300) // 20)
    assert res.value < 0.05
    # Cross-validation on noise picks strong regularisation.
    assert res.alpha is not None and res.alpha >= 10.0


def test_nan_rows_are_dropped_per_label() -> None:
    X, y, _ = linear_data(300, 8, seed=4)
    y_nan = y.copy()
    y_nan[::3] = np.nan  # e.g. no lead vehicle
    res = probe_regression(X[:200], y_nan[:200], X[200:], y_nan[200:])
    assert res.n_train == 200 - 67 and res.n_val == 100 - 33
    assert res.value > 0.999
    empty = probe_regression(X[:10], np.full(10, np.nan), X[10:20], y[10:20])
    assert empty.n_train == 0 and math.isnan(empty.value)
    assert math.isnan(r2_score(np.ones(5), np.zeros(5)))


def test_classification_probe_accuracy_and_majority_baseline() -> None:
    rng = np.random.default_rng(5)
    n = 800
    X = rng.normal(size=(n, 10))
    logits = X[:, :4] @ rng.normal(size=(4, 4)) * 3
    y = np.argmax(logits, axis=1).astype(np.int64)
    res = probe_classification(X[:600], y[:600], X[600:], y[600:],
                               groups=np.arange(600) // 30, label="signal_state")
    assert res.metric == "accuracy" and res.value > 0.85
    majority = np.bincount(y[:600]).argmax()
    assert res.baseline == pytest.approx(float(np.mean(y[600:] == majority)))
    assert res.value > res.baseline
    # Unpredictable labels score about chance.
    noise = rng.integers(0, 3, size=n)
    res_noise = probe_classification(X[:600], noise[:600], X[600:], noise[600:])
    assert res_noise.value < 0.5
    one_class = probe_classification(X[:50], np.zeros(50, int), X[50:60], np.zeros(10, int))
    assert one_class.value == 1.0 == one_class.baseline


def test_probe_config_follows_config_conventions() -> None:
    cfg = from_dict(ProbeConfig, {"labels": ["speed_mps"], "alphas": [0.1, 1], "max_frames": 64})
    assert cfg.labels == ("speed_mps",) and cfg.alphas == (0.1, 1.0) and cfg.batch_size == 256
    with pytest.raises(ConfigError, match="alphas"):
        ProbeConfig(alphas=(0.0,))
    with pytest.raises(ConfigError, match="unknown config key 'alpha'"):
        from_dict(ProbeConfig, {"alpha": [1.0]})


# --------------------------------------------------------------------------- with a dataset


class MeanColour(nn.Module):
    """Parameter-free stand-in encoder: mean colour of a 4 x 4 grid of cells (48 dims)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(1.0 / 255.0))
        self.calls = 0

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        assert not self.training and not torch.is_grad_enabled()
        assert frames.dtype == torch.uint8 and frames.shape[1:] == (84, 84, 3)
        self.calls += 1
        x = frames.permute(0, 3, 1, 2).float() * self.scale
        return nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


SCHEMA = (
    LabelSpec.regression("lane_offset_m"),
    LabelSpec.regression("lead_distance_m"),
    LabelSpec.regression("speed_mps"),
    LabelSpec.classification("signal_state", ("none", "red", "green")),
    LabelSpec.regression("depth", shape=(84, 84)),
)


def make_dataset(root: Path) -> Path:
    """6 episodes x 40 frames; lane offset and signal are painted into the image."""
    split = explicit_split(train_seeds=(0, 1, 2, 3), val_seeds=(4, 5))
    with ShardWriter(root, SCHEMA, frames_per_shard=60, split_of_seed=split) as writer:
        for seed in range(6):
            rng = np.random.default_rng(100 + seed)
            n = 40
            t = np.arange(n)
            lane = np.sin(0.2 * t + seed).astype(np.float32)
            signal = (t // 5 + seed) % 3
            frames = rng.integers(0, 40, size=(n, 84, 84, 3), dtype=np.uint8)
            frames[:, :42, :, 0] += (100 + 60 * lane).astype(np.uint8)[:, None, None]
            for c in range(3):  # each signal state lights its own patch
                frames[signal == c, 42:, 28 * c:28 * (c + 1), 1] += 120
            labels = {
                "lane_offset_m": lane,
                "lead_distance_m": np.where(t % 4 == 0, np.nan, 30 + 10 * lane),
                "speed_mps": rng.normal(size=n),  # not in the image: unpredictable
                "signal_state": signal,
                "depth": np.zeros((n, 84, 84), np.float32),
            }
            writer.add_episode(seed, frames, labels)
    return root


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("probe") / "ds")


def test_embed_split_streams_in_batches_and_restores_mode(dataset: Path) -> None:
    enc = MeanColour()
    enc.train()
    emb, labels = embed_split(enc, dataset, "train", batch_size=32)
    assert emb.shape == (160, 48) and emb.dtype == np.float32
    assert enc.calls >= 160 // 32 and enc.training
    assert set(labels) == {"episode", "seed", "step", "lane_offset_m", "lead_distance_m",
                           "speed_mps", "signal_state"}  # dense depth is left out
    emb2, labels2 = embed_split(enc, dataset, "val", max_frames=50, label_keys=["speed_mps"])
    assert emb2.shape == (50, 48) and set(labels2) == {"episode", "seed", "step", "speed_mps"}


def test_embed_split_rejects_bad_encoder_output(dataset: Path) -> None:
    class Bad(nn.Module):
        def forward(self, frames: torch.Tensor) -> torch.Tensor:
            return frames.float()

    with pytest.raises(ValueError, match=r"encoder must return \(B, D\)"):
        embed_split(Bad(), dataset, "val")


def test_run_probes_report(dataset: Path) -> None:
    report = run_probes({"mean_colour": MeanColour()}, dataset,
                        config=ProbeConfig(batch_size=64))
    assert report.labels == ("lane_offset_m", "lead_distance_m", "speed_mps", "signal_state")
    row = report.rows["mean_colour"]
    assert row["lane_offset_m"].value > 0.95
    assert row["lead_distance_m"].value > 0.95
    assert row["lead_distance_m"].n_train == 160 - 40 and row["lead_distance_m"].n_val == 60
    assert row["speed_mps"].value < 0.2
    assert row["signal_state"].metric == "accuracy" and row["signal_state"].value > 0.95
    data = report.to_json()
    assert data["rows"]["mean_colour"]["signal_state"]["metric"] == "accuracy"
    assert set(data["rows"]["mean_colour"]["lane_offset_m"]) >= {"metric", "value", "n_train",
                                                                  "n_val"}
    md = report.to_markdown().splitlines()
    assert md[0] == ("| encoder | lane_offset_m (R^2) | lead_distance_m (R^2) | speed_mps (R^2) "
                     "| signal_state (acc) |")
    assert len(md) == 3 and md[2].startswith("| mean_colour | ")
    assert "majority" in md[2]


def test_run_probes_label_errors(dataset: Path) -> None:
    with pytest.raises(DatasetError, match="unknown label key 'steer'.*valid keys"):
        run_probes({"m": MeanColour()}, dataset, labels=["steer"])
    with pytest.raises(DatasetError, match="scalar labels"):
        run_probes({"m": MeanColour()}, dataset, labels=["depth"])
    with pytest.raises(DatasetError, match="unknown split 'holdout'"):
        run_probes({"m": MeanColour()}, dataset, config=ProbeConfig(val_split="holdout"))


def test_markdown_marks_missing_values() -> None:
    from perception.probes import ProbeResult

    report = ProbeReport(rows={"a": {"x": ProbeResult("x", "r2", math.nan, 0, 0)}},
                         labels=("x", "y"))
    assert report.to_markdown().splitlines()[2] == "| a | n/a | n/a |"
    assert report.to_json()["rows"]["a"]["x"]["value"] is None


def test_probe_with_nature_cnn(dataset: Path) -> None:
    enc = build_encoder("nature_cnn")
    report = run_probes({"nature_cnn": enc}, dataset, labels=["lane_offset_m", "signal_state"],
                        config=ProbeConfig(max_frames=80, alphas=(1.0, 100.0)))
    row = report.rows["nature_cnn"]
    assert row["lane_offset_m"].n_train == 80 and row["signal_state"].n_val == 80
    assert math.isfinite(row["lane_offset_m"].value)
    assert report.embed_dims["nature_cnn"] == 512


def test_probe_checkpoints_with_random_reference_and_int8(dataset: Path, tmp_path: Path) -> None:
    import json

    from perception.checkpoint import save_encoder
    from perception.encoders import EncoderConfig, build_encoder
    from perception.probes import probe_checkpoints

    ckpt = save_encoder(tmp_path / "run" / "encoder", build_encoder("nature_cnn"),
                        EncoderConfig("nature_cnn"))
    report = probe_checkpoints([ckpt], dataset, tmp_path / "out", quantize=True,
                               config=ProbeConfig(labels=("lane_offset_m",)))
    assert set(report.rows) == {"run", "run_int8", "random_init"}
    fp32 = report.rows["run"]["lane_offset_m"].value
    assert abs(report.rows["run_int8"]["lane_offset_m"].value - fp32) < 0.05
    assert report.speed["run"]["int8_frames_per_s"] > 0
    saved = json.loads((tmp_path / "out" / "probes.json").read_text())
    assert "speed" in saved and (tmp_path / "out" / "probes.md").read_text().startswith("|")
