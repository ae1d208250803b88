"""The shipped env YAML spells out exactly the embedded defaults; overrides apply."""

from __future__ import annotations

import pytest

from common.config import ConfigError
from envs.config import HighwayEnvConfig, load_env_config


def test_shipped_yaml_equals_defaults() -> None:
    assert load_env_config("highway") == HighwayEnvConfig()


def test_overrides_and_validation() -> None:
    cfg = load_env_config("highway", ["traffic.num_vehicles=5", "camera.width=64"])
    assert cfg.traffic.num_vehicles == 5 and cfg.camera.width == 64
    assert cfg.substeps == 24
    with pytest.raises(ConfigError, match="whole multiple"):
        load_env_config(None, ["physics_hz=245"])
    with pytest.raises(ConfigError, match="valid choices: 'control'"):
        load_env_config(None, ["action.mode=teleport"])


def test_shipped_urban_yaml_equals_defaults() -> None:
    from envs.config import UrbanEnvConfig

    assert load_env_config("urban", cls=UrbanEnvConfig) == UrbanEnvConfig()
    with pytest.raises(ConfigError, match="valid choices: null, 'gaussian_noise'"):
        load_env_config("urban", ["visual.corruption.name=snow"], cls=UrbanEnvConfig)
