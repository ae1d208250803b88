"""Frame collection: labels, splits by seed, resume, bad config."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

import envs
from agents.collect import CollectConfig, collect, frame_labels, load_collect_config
from common.config import ConfigError
from perception.dataset import FrameDataset, load_split_arrays, read_manifest


def _small(**kw: object) -> CollectConfig:
    base = {"envs": ("Highway-v0",), "episodes_per_env": 3, "max_steps": 12,
            "overrides": ("camera.width=32", "camera.height=32"), "val_fraction": 0.5,
            "frames_per_shard": 16}
    base.update(kw)
    return CollectConfig(**base)  # type: ignore[arg-type]


def test_shipped_collect_yaml_equals_defaults() -> None:
    assert load_collect_config() == CollectConfig()


def test_collect_writes_labelled_frames_split_by_seed_and_resumes(tmp_path: Path) -> None:
    out = tmp_path / "frames"
    summary = collect(_small(), out, progress=False)
    manifest = read_manifest(out)
    assert sum(summary["frames"].values()) == manifest.num_frames() == 36
    seeds = {split: set(manifest.seeds(split)) for split in manifest.splits()}
    assert not set.intersection(*seeds.values()) if len(seeds) > 1 else True
    assert manifest.image_shape == (32, 32, 3)
    arrays = load_split_arrays(out, manifest.splits()[0])
    assert np.all(np.abs(arrays["lane_offset_m"]) < 2.0)
    assert np.all(arrays["speed_mps"] > 0.0)
    assert set(np.unique(arrays["route_command"])) <= set(range(6))
    item = next(iter(FrameDataset(out, manifest.splits()[0])))
    assert item["frames"].shape == (32, 32, 3)
    again = collect(_small(), out, progress=False)
    assert again["skipped_already_collected"] == 3
    assert read_manifest(out).num_frames() == 36


def test_frame_labels_match_the_env_state() -> None:
    env = envs.make("Highway-v0", overrides=["sensors.camera=false"])
    env.reset(seed=4, options={"start_lane": "main/f1"})
    labels = frame_labels(env)
    assert labels["lane_offset_m"] == pytest.approx(env.lane_point.d)
    assert labels["speed_mps"] == pytest.approx(env.state.speed_mps)
    lead = labels["lead_distance_m"]
    assert math.isnan(lead) or 0.0 <= lead < 80.0
    assert labels["signal_state"] == 0.0  # no signals on the highway
    env.close()


def test_bad_collect_config_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown env id 'Moon-v0'"):
        CollectConfig(envs=("Moon-v0",))
    with pytest.raises(ConfigError, match="unknown policy 'pilot'"):
        CollectConfig(policy="pilot")
    with pytest.raises(ConfigError, match="valid keys"):
        load_collect_config(overrides=["bogus=1"])
