"""Save camera and bird's-eye frames (PNG) and drive a short episode to video (MP4).

Used by ``bulletdrive snapshot`` and, until the learning pipeline lands,
``bulletdrive demo``. Files are written to a temporary name and renamed.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

import envs
from common.io import atomic_path
from envs.bench import lane_keeping_action
from envs.driving_env import DrivingEnv

#: A privileged policy: env in, ``[steer, accel]`` out.
Policy = Callable[[DrivingEnv], NDArray[Any]]


def write_png(path: Path, rgb: NDArray[np.uint8]) -> Path:
    """Write an RGB image as PNG atomically."""
    with atomic_path(path) as tmp:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
        if not ok:
            raise OSError(f"could not encode {path}")
        tmp.write_bytes(buf.tobytes())
    return path


def _camera_large(env: DrivingEnv, size: int = 336) -> NDArray[np.uint8]:
    assert env.camera is not None
    frame = env._frame
    assert frame is not None
    big: NDArray[Any] = cv2.resize(frame.rgb, (size, size), interpolation=cv2.INTER_NEAREST)
    return big


def save_snapshots(out: str | Path, env_id: str = "bulletdrive/Highway-v0", seed: int = 0,
                   steps: int = 30, overrides: Sequence[str] = (),
                   policy: Policy = lane_keeping_action) -> list[Path]:
    """Drive ``steps`` steps with ``policy`` (default: the lane keeper), then save the
    frames as PNG.

    Writes ``camera.png`` (the policy's 84x84 view, as is), ``camera_x4.png`` (scaled
    for viewing), ``bev.png`` (bird's-eye view) and ``map.png`` (whole-map overview).

    Returns:
        The written paths.
    """
    out = Path(out)
    env = envs.make(env_id, overrides=list(overrides))
    try:
        obs, _ = env.reset(seed=seed)
        for _ in range(steps):
            obs, _, terminated, truncated, _ = env.step(policy(env))
            if terminated or truncated:
                break
        paths = []
        if "camera" in obs:
            paths.append(write_png(out / "camera.png", obs["camera"]))
            paths.append(write_png(out / "camera_x4.png", _camera_large(env)))
        paths.append(write_png(out / "bev.png", env.bev(336, 0.35)))
        assert env._bev is not None and env.route is not None
        paths.append(write_png(out / "map.png", env._bev.overview(768,
                                                                   route_path=env._route_line)))
    finally:
        env.close()
    return paths


def drive_episode(out: str | Path, env_id: str = "bulletdrive/Highway-v0", seed: int = 0,
                  max_steps: int = 300, overrides: Sequence[str] = (),
                  policy: Policy = lane_keeping_action) -> dict[str, Any]:
    """Drive one episode with ``policy``; write ``episode.mp4`` and frames.

    Returns:
        A summary: steps, return, route completion, events seen, wall time.
    """
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    env = envs.make(env_id, overrides=list(overrides))
    t0 = time.perf_counter()
    events: dict[str, int] = {}
    total = 0.0
    info: dict[str, Any] = {}
    try:
        env.reset(seed=seed)
        with atomic_path(out / "episode.mp4") as tmp:
            writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter.fourcc(*"mp4v"),
                                     env.config.control_hz, (672, 336))
            try:
                steps = 0
                for _ in tqdm(range(max_steps), desc="demo episode", unit="step"):
                    steps += 1
                    _, reward, terminated, truncated, info = env.step(policy(env))
                    total += reward
                    for event in info["events"]:
                        events[event["type"]] = events.get(event["type"], 0) + 1
                    frame = np.concatenate([_camera_large(env), env.bev(336, 0.35)], axis=1)
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
                    if terminated or truncated:
                        break
            finally:
                writer.release()
        write_png(out / "camera.png", _camera_large(env))
        write_png(out / "bev.png", env.bev(336, 0.35))
    finally:
        env.close()
    return {"env": env_id, "seed": seed, "steps": steps, "return": round(total, 3),
            "route_completion": round(float(info.get("route_completion", 0.0)), 4),
            "events": events, "wall_s": round(time.perf_counter() - t0, 2),
            "video": str(out / "episode.mp4")}
