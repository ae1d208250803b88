"""TTC reward shaping: the penalty in closed form, and the wrapper's reward against a twin
env without it."""

from __future__ import annotations

import math

import numpy as np
import pytest

import envs
from agents.config import ShapingConfig, load_train_config
from agents.shaping import TTCPenalty, ttc_penalty
from common.config import ConfigError
from envs.driving_env import DrivingEnv
from planning.safety import time_to_collision

QUIET = ["sensors.camera=false", "ramp_start_prob=0", "traffic.num_vehicles=1"]


def test_penalty_is_linear_from_the_threshold_to_contact() -> None:
    cfg = ShapingConfig(ttc_threshold_s=4.0, ttc_weight=2.0)
    assert ttc_penalty(0.0, cfg) == 2.0
    assert ttc_penalty(1.0, cfg) == pytest.approx(1.5)
    assert ttc_penalty(4.0, cfg) == 0.0
    assert ttc_penalty(math.inf, cfg) == 0.0
    assert ttc_penalty(0.0, ShapingConfig()) == 0.0  # off by default
    with pytest.raises(ConfigError, match="shaping.ttc_threshold_s must be > 0"):
        load_train_config(overrides=["shaping.ttc_threshold_s=0"])
    with pytest.raises(ConfigError, match="shaping.ttc_weight must be >= 0"):
        load_train_config(overrides=["shaping.ttc_weight=-1"])


def _stopped_car_ahead(env: DrivingEnv, ahead_m: float) -> None:
    lp = env.lane_point
    assert lp is not None and env.road_map is not None
    t = env.traffic
    t.active[:] = False
    t.active[0], t.lane[0] = True, env.road_map.lane_index[lp.lane]
    t.s[0], t.v[0], t.d[0], t.d_rate[0] = lp.s + ahead_m, 0.0, 0.0, 0.0
    t._update_poses()


def test_wrapper_subtracts_the_penalty_of_the_state_after_the_step() -> None:
    cfg = ShapingConfig(ttc_threshold_s=3.0, ttc_weight=1.0)
    plain = envs.make("Highway-v0", overrides=QUIET)
    shaped = TTCPenalty(envs.make("Highway-v0", overrides=QUIET), cfg)
    try:
        options = {"start_lane": "main/f1", "start_s_m": 100.0}
        plain.reset(seed=299_710, options=options)
        shaped.reset(seed=299_710, options=options)
        _stopped_car_ahead(plain, 40.0)
        _stopped_car_ahead(shaped.driving, 40.0)
        action = np.array([0.0, 0.5], np.float32)
        penalties = []
        for _ in range(5):
            _, r_plain, *_ = plain.step(action)
            _, r_shaped, _, _, info = shaped.step(action)
            ttc, _ = time_to_collision(plain)
            expected = max(0.0, 1.0 - ttc / 3.0)
            assert info["ttc_s"] == ttc and info["ttc_penalty"] == pytest.approx(expected)
            assert float(r_shaped) == pytest.approx(float(r_plain) - expected)
            penalties.append(expected)
        assert max(penalties) > 0.0  # the stopped car was closing in
    finally:
        plain.close()
        shaped.close()


def test_training_envs_are_shaped_only_when_the_weight_is_set() -> None:
    from agents.env_factory import env_fns

    for weight, shaped in ((0.0, False), (0.5, True)):
        cfg = load_train_config(overrides=["obs=privileged", "num_envs=1",
                                           f"shaping.ttc_weight={weight}"])
        env = env_fns(cfg)[0]()
        try:
            layers = []
            layer = env
            while hasattr(layer, "env"):
                layers.append(type(layer).__name__)
                layer = layer.env
            assert ("TTCPenalty" in layers) == shaped
            env.reset(seed=1)
            _, _, _, _, info = env.step(env.action_space.sample())
            assert ("ttc_penalty" in info) == shaped
        finally:
            env.close()
