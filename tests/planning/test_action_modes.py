"""The behavior and trajectory decision layers, through gymnasium.make."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401  (registers the ids)
from common.config import ConfigError
from planning.action_modes import BehaviorWrapper, MetaAction, TrajectoryWrapper

NO_CAMERA = ["sensors.camera=false"]
QUIET = ["sensors.camera=false", "traffic.num_vehicles=0"]


def _make(mode: str, overrides: list[str] = NO_CAMERA, env_id: str = "Highway-v0"
          ) -> gym.Env[Any, Any]:
    return gym.make(f"bulletdrive/{env_id}", action_mode=mode, overrides=overrides)


@pytest.mark.filterwarnings("ignore:.*is different from the unwrapped version")
@pytest.mark.parametrize("mode", ["behavior", "trajectory"])
def test_registered_ids_take_the_action_mode_and_pass_the_checkers(mode: str) -> None:
    env = _make(mode, ["camera.width=32", "camera.height=32"])
    assert env.unwrapped.config.action.mode == mode
    expected = gym.spaces.Discrete(6) if mode == "behavior" else gym.spaces.Box(
        -1.0, 1.0, (3,), np.float32)
    assert env.action_space == expected
    check_env(env, skip_render_check=True)  # the wrapped env is the one under test
    sb3_check_env(env, warn=False)
    env.close()


def test_control_mode_is_the_bare_env() -> None:
    env = gym.make("bulletdrive/Highway-v0", overrides=NO_CAMERA)
    assert env.action_space == gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    env.close()


def test_decision_holds_for_several_control_steps_and_collects_events() -> None:
    env = _make("behavior")
    _, info = env.reset(seed=3)
    assert info["decision"]["action"] == "keep_lane"
    driving = env.unwrapped
    _, _, _, _, info = env.step(int(MetaAction.KEEP_LANE))
    assert info["control_steps"] == 3 and driving.steps == 3
    assert isinstance(info["events"], list)
    env.close()


def test_change_left_moves_one_lane_smoothly_within_the_configured_time() -> None:
    env = _make("behavior", QUIET)
    env.reset(seed=0, options={"start_lane": "main/f1"})
    driving = env.unwrapped
    env.step(int(MetaAction.CHANGE_LEFT))
    lateral = []
    for _ in range(12):  # 12 decisions = 3.6 s, lane_change_s = 3 s
        env.step(int(MetaAction.KEEP_LANE))
        lp = driving.lane_point
        lateral.append((lp.lane, lp.d))
    assert lateral[-1][0] == "main/f0" and abs(lateral[-1][1]) < 0.3
    # Smooth: no overshoot beyond a third of a lane.
    assert max(abs(d) for lane, d in lateral if lane == "main/f0") < 3.75 * 0.5
    env.close()


def test_behavior_observation_carries_the_layer_target() -> None:
    env = _make("behavior", QUIET)
    obs, _ = env.reset(seed=0, options={"start_lane": "main/f1"})
    cfg = env.unwrapped.config.action.behavior
    speed0 = float(obs["measurements"][0])
    np.testing.assert_allclose(obs["decision"], [speed0, 0.0, 0.0], atol=1e-3)
    obs, *_ = env.step(int(MetaAction.FASTER))
    assert obs["decision"][0] == pytest.approx(speed0 + cfg.speed_step_mps, abs=1e-4)
    obs, *_ = env.step(int(MetaAction.CHANGE_LEFT))
    width = 3.75  # the highway's lane width [m]
    # Target lane one lane to the left, nearly a full lane away after one decision.
    assert 0.5 * width < obs["decision"][1] < 1.05 * width
    steps = env.unwrapped.config.action.behavior.steps_per_decision
    assert obs["decision"][2] == pytest.approx(cfg.lane_change_s - steps * env.unwrapped.dt,
                                               abs=1e-4)
    assert env.observation_space.contains(obs)
    env.close()


def test_change_towards_a_missing_neighbour_keeps_the_lane() -> None:
    env = _make("behavior", QUIET)
    env.reset(seed=0, options={"start_lane": "main/f0"})  # leftmost lane
    _, _, _, _, info = env.step(int(MetaAction.CHANGE_LEFT))
    assert info["decision"]["target_lane"] == "main/f0"
    env.close()


def test_faster_forever_crashes_and_stop_stops() -> None:
    env = _make("behavior")
    env.reset(seed=1, options={"start_lane": "main/f1"})
    crashed = False
    for _ in range(200):
        _, _, terminated, truncated, info = env.step(int(MetaAction.FASTER))
        crashed = any(e["type"] == "collision" and e["at_fault"] for e in info["events"])
        if terminated or truncated:
            break
    assert crashed, "the layer must not avoid collisions on its own"
    env.reset(seed=1)
    for _ in range(40):
        _, _, terminated, _, info = env.step(int(MetaAction.STOP))
        assert not terminated
    assert abs(env.unwrapped.state.speed_mps) < 0.2
    env.close()


def test_trajectory_offset_moves_laterally_and_speed_is_tracked() -> None:
    env = _make("trajectory", QUIET)
    env.reset(seed=0, options={"start_lane": "main/f1"})
    driving = env.unwrapped
    cfg = driving.config.action.trajectory
    want_speed = 20.0
    action = np.array([1.0 / cfg.max_offset_lanes, 2 * want_speed / cfg.max_speed_mps - 1, 0.0],
                      np.float32)
    for _ in range(20):
        env.step(action)  # one lane left, replanned relative to the lane the ego is in ...
        action[0] = 0.0 if driving.lane_point.lane == "main/f0" else action[0]
    assert driving.lane_point.lane == "main/f0" and abs(driving.lane_point.d) < 0.5
    assert driving.state.speed_mps == pytest.approx(want_speed, abs=0.5)
    env.close()


@pytest.mark.parametrize("bad", [6, -1, 2.5, float("nan"), [1, 2], "left"])
def test_invalid_behavior_action_is_rejected(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"behavior action must be one integer in 0\.\.5"):
        BehaviorWrapper.parse(bad)


def test_valid_behavior_action_forms() -> None:
    assert BehaviorWrapper.parse(np.int64(2)) == MetaAction.CHANGE_RIGHT
    assert BehaviorWrapper.parse(np.array([4])) == MetaAction.SLOWER
    assert BehaviorWrapper.parse(5.0) == MetaAction.STOP


def test_invalid_trajectory_action_is_rejected_and_large_values_clipped() -> None:
    env = _make("trajectory", QUIET)
    env.reset(seed=0)
    layer = env
    while not isinstance(layer, TrajectoryWrapper):
        layer = layer.env  # type: ignore[assignment]
    for bad in ([0.0, float("nan"), 0.0], [0.0, 0.0], [0.0, 0.0, float("inf")]):
        with pytest.raises(ValueError, match="trajectory action must be 3 finite values"):
            env.step(np.array(bad))
    offset, speed, horizon = layer.scale([5.0, 9.0, -9.0])
    assert offset == layer.cfg.max_offset_lanes and speed == layer.cfg.max_speed_mps
    assert horizon == layer.cfg.horizon_s[0]
    env.close()


def test_unknown_action_mode_is_rejected_with_the_valid_ones() -> None:
    with pytest.raises(ValueError, match="unknown action mode 'teleport'; valid: control, "
                                         "behavior, trajectory"):
        gym.make("bulletdrive/Highway-v0", action_mode="teleport")
    with pytest.raises(ConfigError, match="action.mode"):
        gym.make("bulletdrive/Highway-v0", overrides=["action.mode=teleport"])
