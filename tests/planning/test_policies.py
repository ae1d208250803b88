"""Built-in policies by name, in every action mode."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from planning.policies import POLICY_NAMES, make_policy

MODES = ["control", "behavior", "trajectory"]


@pytest.mark.parametrize("mode", MODES)
def test_expert_drives_safely_in_every_mode(mode: str) -> None:
    env = gym.make("bulletdrive/Highway-v0", action_mode=mode,
                   overrides=["sensors.camera=false"])
    policy = make_policy("expert")
    obs, info = env.reset(seed=7)
    policy.reset(7)
    control_steps = 0
    while control_steps < 250:
        obs, _, terminated, truncated, info = env.step(policy.act(obs, env))
        control_steps += info.get("control_steps", 1)
        assert not any(e["type"] in ("collision", "off_road") for e in info["events"])
        if terminated or truncated:
            break
    assert info["route_completion"] > 0.2
    env.close()


@pytest.mark.parametrize("mode", MODES)
def test_random_policy_is_reproducible_and_in_the_space(mode: str) -> None:
    env = gym.make("bulletdrive/Highway-v0", action_mode=mode,
                   overrides=["sensors.camera=false", "traffic.num_vehicles=0"])
    obs, _ = env.reset(seed=0)
    a, b = make_policy("random", seed=5), make_policy("random", seed=5)
    acts_a = [a.act(obs, env) for _ in range(5)]
    acts_b = [b.act(obs, env) for _ in range(5)]
    for x, y in zip(acts_a, acts_b, strict=True):
        assert env.action_space.contains(np.asarray(x, dtype=env.action_space.dtype)
                                         if mode != "behavior" else x)
        np.testing.assert_array_equal(x, y)
    env.close()


@pytest.mark.parametrize("mode", MODES)
def test_keep_lane_keeps_its_lane_and_speed(mode: str) -> None:
    env = gym.make("bulletdrive/Highway-v0", action_mode=mode,
                   overrides=["sensors.camera=false", "traffic.num_vehicles=0"])
    obs, _ = env.reset(seed=0, options={"start_lane": "main/f1"})
    driving = env.unwrapped
    v0 = driving.state.speed_mps
    policy = make_policy("keep_lane")
    policy.reset(0)
    for _ in range(30):
        obs, *_ = env.step(policy.act(obs, env))
    assert driving.lane_point.lane == "main/f1" and abs(driving.lane_point.d) < 0.3
    assert driving.state.speed_mps == pytest.approx(v0, abs=0.6)
    env.close()


def test_unknown_policy_name_lists_the_valid_ones() -> None:
    assert POLICY_NAMES == ("expert", "random", "keep_lane")
    with pytest.raises(ValueError, match="unknown policy 'pilot'; valid: expert, random, "
                                         "keep_lane"):
        make_policy("pilot")
