"""Urban-v0: contract, checkers with every sensor, signals, pedestrians, events."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import envs  # noqa: F401
from envs.bench import lane_keeping_action
from envs.driving_env import MEASUREMENT_KEYS
from envs.maps.road_map import RouteCommand
from envs.sim.scene import SemanticClass
from envs.traffic.signals import RED
from envs.urban_env import UrbanEnv

FAST = ["traffic.num_vehicles=6", "pedestrians.num_pedestrians=4", "max_steps=60"]


@pytest.fixture(scope="module")
def env() -> UrbanEnv:
    e = UrbanEnv(overrides=FAST)
    yield e
    e.close()


def test_registered_and_checkers_with_every_sensor() -> None:
    e = gym.make("bulletdrive/Urban-v0", overrides=[
        *FAST, "sensors.depth=true", "sensors.semantic=true", "sensors.lidar=true",
        "sensors.state=true", "visual.corruption.name=fog", "visual.corruption.severity=3"])
    try:
        gym_check_env(e.unwrapped, skip_render_check=True)
        sb3_check_env(e.unwrapped, warn=True)
        obs, _ = e.reset(seed=2)
        assert set(obs) == {"camera", "depth", "semantic", "lidar", "state", "measurements"}
    finally:
        e.close()


def test_route_command_is_a_junction_manoeuvre(env: UrbanEnv) -> None:
    obs, _ = env.reset(seed=1)
    m = obs["measurements"]
    onehot = m[2:8]
    assert onehot.sum() == 1.0
    assert env.route is not None
    commands = {seg.command for seg in env.route.segments}
    assert commands & {RouteCommand.LEFT, RouteCommand.RIGHT, RouteCommand.STRAIGHT}
    assert m[MEASUREMENT_KEYS.index("distance_to_manoeuvre_m")] > 0


def test_semantic_classes_seen(env: UrbanEnv) -> None:
    e = UrbanEnv(overrides=[*FAST, "sensors.semantic=true"])
    try:
        obs, _ = e.reset(seed=0)
        seen = set(np.unique(obs["semantic"]).tolist())
        assert {SemanticClass.ROAD, SemanticClass.STATIC, SemanticClass.OTHER} <= seen
    finally:
        e.close()


def test_running_a_red_light_is_reported() -> None:
    e = UrbanEnv(overrides=["traffic.num_vehicles=0", "pedestrians.num_pedestrians=0",
                            "max_steps=200", "terminate_on_off_road=false"])
    try:
        e.reset(seed=3)
        # Freeze the clock in red for every signal: offset so all read red now.
        e.signals.offset = np.zeros_like(e.signals.offset)
        e.signals.green = np.zeros_like(e.signals.green)
        e.signals.amber = np.zeros_like(e.signals.amber)
        assert np.all(e.signals.states(e.sim_time_s) == RED)
        found = []
        for _ in range(200):
            _, _, term, trunc, info = e.step(lane_keeping_action(e, 0.6))
            found += [ev for ev in info["events"] if ev["type"] == "red_light"]
            if found or term or trunc:
                break
        assert found, "driving through a junction on red must raise red_light"
    finally:
        e.close()


def test_traffic_stops_at_red_lights(env: UrbanEnv) -> None:
    env.reset(seed=5)
    tm = env.traffic
    for _ in range(50):
        env.step(lane_keeping_action(env))
    states = env.signals.states(env.sim_time_s)
    lanes = np.flatnonzero(env.signals.lane_signal >= 0)
    red = set(lanes[states[env.signals.lane_signal[lanes]] == RED].tolist())
    # No vehicle stands beyond the stop line of a red approach lane.
    for i in np.flatnonzero(tm.active):
        if int(tm.lane[i]) in red:
            assert tm.s[i] + tm.length[i] / 2 <= tm.lane_length[tm.lane[i]] + 1.0


def test_pedestrians_cross_and_block_lanes() -> None:
    e = UrbanEnv(overrides=["traffic.num_vehicles=0", "pedestrians.num_pedestrians=8",
                            "pedestrians.jaywalk_prob=1.0", "max_steps=100"])
    try:
        e.reset(seed=4)
        peds = e.pedestrians
        assert peds is not None
        start = np.stack([peds.x, peds.y], axis=1).copy()
        blocked_any = False
        for _ in range(60):
            e.step(np.array([0.0, -1.0]))
            blocked_any |= bool(np.isfinite(peds.blocked(len(e.road_map.lanes))).any())
        moved = np.hypot(peds.x - start[:, 0], peds.y - start[:, 1])
        assert moved.max() > 3.0 and blocked_any
    finally:
        e.close()


def _urban_run(prelude: int = 0) -> tuple[np.ndarray, np.ndarray]:
    e = UrbanEnv(overrides=[*FAST, "sensors.lidar=true"])
    try:
        for k in range(prelude):  # other episodes first must not change the result
            e.reset(seed=50 + k)
            e.step(lane_keeping_action(e))
        obs, _ = e.reset(seed=9)
        frames, poses = [obs["camera"]], []
        for _ in range(25):
            obs, *_, info = e.step(lane_keeping_action(e))
            frames.append(obs["camera"])
            poses.append([info["ego"]["x"], info["ego"]["y"], *e.traffic.x, *obs["lidar"],
                          *(e.pedestrians.x if e.pedestrians else [])])
        return np.stack(frames), np.asarray(poses)
    finally:
        e.close()


def test_determinism_urban_same_and_fresh_process() -> None:
    import hashlib
    import json
    import subprocess
    import sys

    a, b = _urban_run(), _urban_run(prelude=1)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    code = ("import hashlib, json, sys; sys.path.insert(0, 'tests/envs'); "
            "from test_urban_env import _urban_run; "
            "print(json.dumps([hashlib.sha256(x.tobytes()).hexdigest() for x in _urban_run()]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    here = [hashlib.sha256(x.tobytes()).hexdigest() for x in a]
    assert json.loads(out.stdout.strip().splitlines()[-1]) == here
