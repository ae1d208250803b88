"""Throughput benchmarks of the driving envs (used by ``bulletdrive bench``).

Each figure is measured on one core in this process: env steps per second with the
camera on and off, and the cost of the parts of a step (rendering one frame, one
physics substep, one traffic update). Resets are timed separately and not counted in
steps per second. A simple lane-keeping controller drives so that episodes are long.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pybullet as p

from envs.driving_env import DrivingEnv
from envs.highway_env import HighwayEnv
from envs.traffic.idm import FREE_ROAD_GAP_M, idm_acceleration
from envs.urban_env import UrbanEnv


def lane_keeping_action(env: DrivingEnv, target_speed_factor: float = 0.9) -> np.ndarray:
    """A simple privileged driver for benchmarks and smoke runs (not the expert).

    Steering follows the Stanley law on the current lane's centre line; speed follows
    IDM behind the nearest vehicle ahead in the same lane. It never changes lanes.
    """
    st = env.state
    lp = env.lane_point
    if lp is None:
        return np.array([0.0, -1.0], np.float32)
    vcfg = env.config.vehicle
    heading_err = math.remainder(st.yaw - lp.heading, 2 * math.pi)
    delta = -heading_err - math.atan2(1.5 * lp.d, max(st.speed_mps, 0.0) + 2.0)
    steer = delta / vcfg.max_steer_rad
    traffic = env.traffic
    lane = env.road_map.lane_index[lp.lane] if env.road_map is not None else -1
    ahead = traffic.active & (traffic.lane == lane) & (traffic.s > lp.s)
    gap, lead_v = FREE_ROAD_GAP_M, 0.0
    if ahead.any():
        k = int(np.flatnonzero(ahead)[np.argmin(traffic.s[ahead])])
        gap = float(traffic.s[k] - lp.s - (traffic.length[k] + vcfg.length_m) / 2.0)
        lead_v = float(traffic.v[k])
    target = target_speed_factor * env._speed_limit()
    accel = float(idm_acceleration(max(st.speed_mps, 0.0), target, gap, lead_v,
                                   max_accel=2.0, comfort_decel=3.0, time_headway=1.5))
    cmd = accel / (vcfg.max_accel_mps2 if accel > 0 else vcfg.max_brake_mps2)
    return np.clip(np.array([steer, cmd], np.float32), -1.0, 1.0)


def _time_steps(env: DrivingEnv, steps: int, seed: int) -> dict[str, float]:
    env.reset(seed=seed)
    step_time = reset_time = 0.0
    episodes = 0
    done_steps = 0
    while done_steps < steps:
        action = lane_keeping_action(env)
        t0 = time.perf_counter()
        _, _, terminated, truncated, _ = env.step(action)
        step_time += time.perf_counter() - t0
        done_steps += 1
        if terminated or truncated:
            t0 = time.perf_counter()
            env.reset(seed=seed + 1000 + episodes)
            reset_time += time.perf_counter() - t0
            episodes += 1
    return {"steps_per_s": steps / step_time, "ms_per_step": 1e3 * step_time / steps,
            "resets": float(episodes), "ms_per_reset": 1e3 * reset_time / max(episodes, 1)}


def _time_call(fn: Callable[[], Any], repeats: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeats):
        fn()
    return 1e3 * (time.perf_counter() - t0) / repeats


def bench_env(overrides: Sequence[str] = (), steps: int = 1000, seed: int = 0,
              env_cls: type[DrivingEnv] = HighwayEnv) -> dict[str, Any]:
    """Measure an env with ``overrides`` applied (default: camera, 20 vehicles).

    Returns:
        Steps per second, ms per step/reset, and ms per rendered frame, physics substep
        and traffic update.
    """
    env = env_cls(overrides=list(overrides))
    try:
        out: dict[str, Any] = _time_steps(env, steps, seed)
        env.reset(seed=seed)
        for _ in range(20):
            env.step(lane_keeping_action(env))
        c = env.client
        out["ms_per_physics_substep"] = _time_call(lambda: p.stepSimulation(physicsClientId=c),
                                                   500)
        slot = env._ego_slot()
        out["ms_per_traffic_update"] = _time_call(lambda: env.traffic.step(slot), 200)
        if env.camera is not None:
            st = env.state
            cam = env.camera
            out["ms_per_frame"] = _time_call(lambda: cam.render(st.x, st.y, st.z, st.yaw), 300)
        out["substeps_per_step"] = env.config.substeps
        out["traffic_vehicles"] = env.config.traffic.num_vehicles
        if env.pedestrians is not None:
            out["pedestrians"] = env.pedestrians.n
        out["camera"] = (f"{env.config.camera.width}x{env.config.camera.height}"
                         if env.camera is not None else "off")
    finally:
        env.close()
    return out


def bench_highway_env(steps: int = 300, seed: int = 0) -> dict[str, Any]:
    """Measure highway-env's ``highway-fast-v0`` with an 84x84 grayscale image observation.

    Raises:
        ImportError: When highway-env is not installed (``pip install highway-env``).
    """
    import os

    import gymnasium as gym

    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")  # highway-env renders with pygame
    import highway_env  # noqa: F401  (registers the envs)

    config = {
        "observation": {"type": "GrayscaleObservation", "observation_shape": (84, 84),
                        "stack_size": 1, "weights": [0.2989, 0.5870, 0.1140], "scaling": 1.75},
    }
    env = gym.make("highway-fast-v0", config=config)
    rng = np.random.default_rng(seed)
    try:
        obs, _ = env.reset(seed=seed)
        assert np.asarray(obs).shape[-2:] == (84, 84)
        step_time = 0.0
        for k in range(steps):
            action = int(rng.integers(env.action_space.n))  # type: ignore[attr-defined]
            t0 = time.perf_counter()
            _, _, terminated, truncated, _ = env.step(action)
            step_time += time.perf_counter() - t0
            if terminated or truncated:
                env.reset(seed=seed + k + 1)
    finally:
        env.close()
    return {"steps_per_s": steps / step_time, "ms_per_step": 1e3 * step_time / steps,
            "observation": "GrayscaleObservation 84x84"}


def run_bench(steps: int = 1000, compare: Sequence[str] = ()) -> dict[str, Any]:
    """All env throughput figures, as printed by ``bulletdrive bench --json``."""
    results: dict[str, Any] = {
        "highway_camera": bench_env((), steps),
        "highway_no_camera": bench_env(("sensors.camera=false",), steps),
        "urban_camera": bench_env(("traffic.num_vehicles=20", "pedestrians.num_pedestrians=10"),
                                  steps, env_cls=UrbanEnv),
    }
    if "highway-env" in compare:
        he = bench_highway_env(max(steps // 3, 100))
        results["highway_env_fast_v0"] = he
        results["speedup_vs_highway_env"] = (results["highway_camera"]["steps_per_s"]
                                             / he["steps_per_s"])
    return results
