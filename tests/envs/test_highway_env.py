"""Highway-v0: the gymnasium contract, checkers, events, bad input, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs
from common.config import ConfigError
from envs.bench import lane_keeping_action
from envs.driving_env import MEASUREMENT_KEYS, state_layout
from envs.highway_env import HighwayEnv

# Small, fast settings for tests: fewer vehicles and a short map still exercise everything.
FAST = ["traffic.num_vehicles=8", "max_steps=60"]


@pytest.fixture
def env() -> HighwayEnv:
    e = HighwayEnv(overrides=FAST)
    yield e
    e.close()


def test_registered_and_spaces() -> None:
    e = gym.make("bulletdrive/Highway-v0", overrides=FAST)
    try:
        obs, info = e.reset(seed=1)
        assert set(obs) == {"camera", "measurements"}
        assert obs["camera"].shape == (84, 84, 3) and obs["camera"].dtype == np.uint8
        assert obs["measurements"].shape == (len(MEASUREMENT_KEYS),)
        assert e.action_space.shape == (2,)
        for key in ("ego", "route_completion", "events", "speed_limit_mps"):
            assert key in info
    finally:
        e.close()


def test_gymnasium_and_sb3_checkers_with_state() -> None:
    e = HighwayEnv(overrides=[*FAST, "sensors.state=true"])
    try:
        gym_check_env(e, skip_render_check=True)
        sb3_check_env(e, warn=True)
        obs, _ = e.reset(seed=0)
        assert obs["state"].shape == (len(state_layout(8)),)
    finally:
        e.close()


def test_camera_frame_has_structure(env: HighwayEnv) -> None:
    obs, _ = env.reset(seed=2)
    img = obs["camera"].astype(float)
    # Sky on top is bluish and bright; road at the bottom is grey and darker.
    top, bottom = img[:10].mean(axis=(0, 1)), img[-15:].mean(axis=(0, 1))
    assert top[2] > top[0] and top.mean() > bottom.mean()
    assert img[-15:].std() > 1.0  # asphalt grain / markings, not a flat colour


def test_measurements_route_command(env: HighwayEnv) -> None:
    obs, info = env.reset(seed=0, options={"start_lane": "ramp/r0"})
    m = obs["measurements"]
    assert m[MEASUREMENT_KEYS.index("cmd_follow_lane")] == 1.0
    assert m[MEASUREMENT_KEYS.index("distance_to_manoeuvre_m")] > 100.0
    assert abs(m[0] - info["ego"]["speed_mps"]) < 1e-4


def test_driving_makes_progress_and_reward(env: HighwayEnv) -> None:
    env.reset(seed=4)
    total = 0.0
    for _ in range(40):
        _, r, term, trunc, info = env.step(lane_keeping_action(env))
        total += r
        assert not term
    assert info["route_completion"] > 0.02
    assert info["route_progress_m"] > 60.0  # about 25 m/s for 4 s
    # Progress dominates the reward when nothing goes wrong.
    assert total > 0.8 * env.config.reward.progress_per_m * info["route_progress_m"]


def test_off_road_terminates(env: HighwayEnv) -> None:
    env.reset(seed=5, options={"start_lane": "main/f0"})
    types: set[str] = set()
    for _ in range(60):
        _, r, term, trunc, info = env.step(np.array([1.0, 0.5]))  # hard left into the median
        types |= {e["type"] for e in info["events"]}
        if term:
            break
    assert term
    assert "off_road" in types or "collision" in types


def test_collision_with_vehicle_is_detected_with_fault() -> None:
    e = HighwayEnv(overrides=["traffic.num_vehicles=1", "traffic.opposite_fraction=0",
                              "traffic.ramp_fraction=0", "ramp_start_prob=0"])
    try:
        e.reset(seed=0, options={"start_lane": "main/f0", "start_s_m": 100.0})
        # Put the only vehicle 25 m ahead in the ego's lane, standing still.
        t = e.traffic
        lane = e.road_map.lane_index["main/f0"]
        t.active[0], t.lane[0], t.s[0], t.v[0], t.d[0] = True, lane, 125.0, 0.0, 0.0
        t.speed_factor[0] = 0.0
        t._update_poses()
        hit = None
        for _ in range(40):
            _, _, term, _, info = e.step(np.array([0.0, 1.0]))
            hits = [ev for ev in info["events"] if ev["type"] == "collision"]
            if hits:
                hit = hits[0]
                break
        assert hit is not None and term
        assert hit["class"] == "vehicle" and hit["at_fault"] is True
    finally:
        e.close()


def test_timeout_truncates() -> None:
    e = HighwayEnv(overrides=["traffic.num_vehicles=0", "max_steps=5"])
    try:
        e.reset(seed=0)
        for _ in range(5):
            _, _, term, trunc, info = e.step(lane_keeping_action(e))
        assert trunc and not term
        assert info["events"][-1]["type"] == "timeout"
    finally:
        e.close()


@pytest.mark.parametrize("bad", [[np.nan, 0.0], [0.0, np.inf], [0.0, -np.inf]])
def test_nan_and_inf_actions_raise(env: HighwayEnv, bad: list[float]) -> None:
    env.reset(seed=0)
    with pytest.raises(ValueError, match="NaN or inf"):
        env.step(np.array(bad))


def test_out_of_range_actions_are_clipped(env: HighwayEnv) -> None:
    env.reset(seed=3)
    env.step(np.array([5.0, -7.0]))
    assert env.vehicle.state().steer_cmd == 1.0 and env.vehicle.state().accel_cmd == -1.0
    with pytest.raises(ValueError, match="2 values"):
        env.step(np.zeros(3))


def test_bad_config_and_options() -> None:
    with pytest.raises(ConfigError, match="unknown config key 'traffic.num_vehicle'.*num_vehicles"):
        HighwayEnv(overrides=["traffic.num_vehicle=3"])
    with pytest.raises(ConfigError, match="must be an integer"):
        HighwayEnv(overrides=["traffic.num_vehicles=many"])
    with pytest.raises(ConfigError, match="no config 'nope'"):
        HighwayEnv(config="nope")
    e = HighwayEnv(overrides=FAST)
    try:
        with pytest.raises(ValueError, match="valid options: map_seed, start_lane"):
            e.reset(seed=0, options={"weather": 1})
        with pytest.raises(ValueError, match="seed must be a non-negative integer"):
            e.reset(seed=-1)
        with pytest.raises(ValueError, match="not a start lane"):
            e.reset(seed=0, options={"start_lane": "main/b0"})
    finally:
        e.close()
    with pytest.raises(ValueError, match="unknown env id"):
        envs.make("bulletdrive/Nope-v0")


def _rollout(seed: int, steps: int, prelude: int = 0) -> tuple[np.ndarray, ...]:
    e = HighwayEnv(overrides=FAST)
    try:
        for k in range(prelude):  # other episodes first: must not change the result
            e.reset(seed=100 + k)
            for _ in range(5):
                e.step(lane_keeping_action(e))
        obs, _ = e.reset(seed=seed)
        cams, states, rewards = [obs["camera"]], [], []
        rng = np.random.default_rng(seed)
        for _ in range(steps):
            action = lane_keeping_action(e) + rng.normal(0, 0.1, 2).astype(np.float32)
            obs, r, term, trunc, info = e.step(np.clip(action, -1, 1))
            cams.append(obs["camera"])
            states.append([*info["ego"].values()][:9] + list(e.traffic.x) + list(e.traffic.y))
            rewards.append(r)
            if term or trunc:
                break
        return np.stack(cams), np.asarray(states, dtype=np.float64), np.asarray(rewards)
    finally:
        e.close()


def test_determinism_same_process_after_other_episodes() -> None:
    a = _rollout(7, 30)
    b = _rollout(7, 30, prelude=2)
    for x, y in zip(a, b, strict=True):
        assert np.array_equal(x, y)


def test_determinism_in_fresh_process() -> None:
    code = textwrap.dedent("""
        import hashlib, json, sys
        sys.path.insert(0, "tests/envs")
        from test_highway_env import _rollout
        print(json.dumps([hashlib.sha256(a.tobytes()).hexdigest() for a in _rollout(7, 30)]))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    import hashlib

    here = [hashlib.sha256(a.tobytes()).hexdigest() for a in _rollout(7, 30)]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here


def test_many_envs_in_one_process() -> None:
    es = [HighwayEnv(overrides=FAST) for _ in range(3)]
    try:
        clients = {e.client for e in es}
        assert len(clients) == 3
        for i, e in enumerate(es):
            e.reset(seed=i)
            e.step(lane_keeping_action(e))
    finally:
        for e in es:
            e.close()
    es[0].close()  # closing twice is harmless


def test_render_rgb_array() -> None:
    e = HighwayEnv(overrides=FAST, render_mode="rgb_array")
    try:
        e.reset(seed=0)
        frame = e.render()
        assert frame is not None and frame.shape == (256, 512, 3)
    finally:
        e.close()


def test_all_sensors_pass_checkers_and_agree() -> None:
    e = HighwayEnv(overrides=[*FAST, "sensors.depth=true", "sensors.semantic=true",
                              "sensors.lidar=true", "sensors.state=true"])
    try:
        gym_check_env(e, skip_render_check=True)
        sb3_check_env(e, warn=True)
        obs, _ = e.reset(seed=3)
        for _ in range(5):
            obs, *_ = e.step(lane_keeping_action(e))
        depth, sem = obs["depth"], obs["semantic"]
        assert depth.dtype == np.float32 and sem.dtype == np.uint8
        h, w = depth.shape
        # Straight ahead at the bottom: road close by; top row: sky at the far plane.
        assert depth[-1, w // 2] < 10.0 and np.all(depth[0] >= e.config.camera.far_m - 1e-3)
        from envs.sim.scene import SemanticClass

        assert sem[-1, w // 2] in (SemanticClass.ROAD, SemanticClass.LANE_MARKING)
        assert np.all(sem[0] == SemanticClass.OTHER)
        assert (sem == SemanticClass.LANE_MARKING).any()
        lidar = obs["lidar"]
        cfg = e.config.sensors.lidar_config
        assert lidar.shape == (cfg.num_rays,) and np.all(lidar <= cfg.range_m)
        # Downward channel hits the ground at h / tan(elevation) ahead.
        expect = cfg.mount_xyz_m[2] / np.tan(-cfg.elevations_rad[0])
        assert abs(float(lidar[cfg.beams // 2]) - expect) < 0.5
    finally:
        e.close()
