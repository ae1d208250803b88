"""Measure the built-in policies over held-out seeds and draw the expert's manoeuvres.

    python scripts/expert_figures.py measure --episodes 50 --modes control
    python scripts/expert_figures.py pictures --out docs/images

``measure`` prints one JSON line per (env, mode, policy) with the mean route completion,
the share of episodes with an at-fault collision, and the seeds concerned. Seeds start
at 1000; tests use seeds below 100.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers the ids)
from envs.render.bev import BirdEyeView, BoxAgent
from planning.policies import make_policy

#: Signal state colours (GREEN, AMBER, RED), RGB.
_LIGHTS = {0: (40, 200, 60), 1: (245, 190, 20), 2: (230, 30, 30)}


def run_episode(env_id: str, mode: str, policy_name: str, seed: int) -> dict[str, Any]:
    """One episode without camera; returns its outcome."""
    env = gym.make(f"bulletdrive/{env_id}", action_mode=mode,
                   overrides=["sensors.camera=false"])
    policy = make_policy(policy_name, seed=seed)
    policy.reset(seed)
    obs, info = env.reset(seed=seed)
    at_fault = collided = False
    terminated = truncated = False
    while not (terminated or truncated):
        obs, _, terminated, truncated, info = env.step(policy.act(obs, env))
        for e in info["events"]:
            if e["type"] == "collision":
                collided = True
                at_fault |= bool(e.get("at_fault"))
    env.close()
    return {"seed": seed, "route_completion": info["route_completion"], "at_fault": at_fault,
            "collision": collided, "timeout": bool(truncated)}


def measure(args: argparse.Namespace) -> None:
    """Print the figures for each env, mode and policy."""
    seeds = range(args.first_seed, args.first_seed + args.episodes)
    for env_id in args.envs:
        for mode in args.modes:
            for name in args.policies:
                rows = [run_episode(env_id, mode, name, s) for s in seeds]
                print(json.dumps({
                    "env": env_id, "mode": mode, "policy": name, "episodes": len(rows),
                    "route_completion": round(float(np.mean(
                        [r["route_completion"] for r in rows])), 3),
                    "at_fault_rate": round(float(np.mean([r["at_fault"] for r in rows])), 3),
                    "at_fault_seeds": [r["seed"] for r in rows if r["at_fault"]],
                    "other_collision_seeds": [r["seed"] for r in rows
                                              if r["collision"] and not r["at_fault"]],
                    "timeout_seeds": [r["seed"] for r in rows if r["timeout"]]}), flush=True)


def _manoeuvre_picture(env_id: str, seed: int, mode: str, moment: Any, out: Path,
                       title: str, metres_per_px: float) -> None:
    """Drive the expert; draw a north-up bird's-eye view around the step where
    ``moment`` first holds: the driven path, the ego every second from 3 s before to
    3 s after (faded), and the traffic and signals at that step."""
    env = gym.make(f"bulletdrive/{env_id}", action_mode=mode,
                   overrides=["sensors.camera=false"])
    policy = make_policy("expert")
    obs, _ = env.reset(seed=seed)
    driving = env.unwrapped
    cfg = driving.config.vehicle
    poses: list[tuple[float, float, float]] = []
    times: list[float] = []
    hit: int | None = None
    snapshot: tuple[list[BoxAgent], Any] | None = None
    for step in range(3000):
        obs, _, terminated, truncated, info = env.step(policy.act(obs, env))
        st = driving.state
        poses.append((st.x, st.y, st.yaw))
        times.append(driving.sim_time_s)
        if hit is None and moment(driving, info):
            hit = step
            traffic = [BoxAgent(*map(float, b[:5])) for b in driving.traffic.boxes()]
            peds = driving.pedestrians
            if peds is not None:
                traffic += [BoxAgent(float(x), float(y), 0.0, 0.7, 0.7, (40, 90, 230))
                            for x, y in zip(peds.x, peds.y, strict=True)]
            states = driving.signals.states(driving.sim_time_s)
            lights = [(sig.stop_line, _LIGHTS[int(states[k])])
                      for k, sig in enumerate(driving.road_map.signals)] if len(states) else []
            snapshot = (traffic, lights)
        if (hit is not None and times[-1] >= times[hit] + 3.5) or terminated or truncated:
            break
    if hit is None or snapshot is None:
        raise SystemExit(f"{title}: the manoeuvre did not happen for seed {seed}")
    t = np.array(times)
    ghosts = sorted({int(np.argmin(np.abs(t - (t[hit] + dt)))) for dt in range(-3, 4)},
                    key=lambda k: -abs(k - hit))  # the current pose drawn last, on top
    ego = [BoxAgent(*poses[k], cfg.length_m, cfg.width_m,
                    (255, int(60 * min(abs(t[k] - t[hit]), 3.0)), 40)) for k in ghosts]
    traffic, lights = snapshot
    view = BirdEyeView(driving.road_map, 480, metres_per_px, heading_up=False)
    x, y, _ = poses[hit]
    img = view.render(x, y, 0.0, traffic + ego, driving.route.polyline(),
                      np.array([(px, py) for px, py, _ in poses]), lights)
    env.close()
    label = f"{title}: {env_id} seed {seed}, {mode} mode, ego every 1 s (red = now)"
    cv2.putText(img, label, (6, 16), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (255, 255, 255), 1,
                cv2.LINE_AA)
    out.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out), cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
    print(f"wrote {out} (seed {seed}, step {hit})")


def pictures(args: argparse.Namespace) -> None:
    """Bird's-eye strips of an expert lane change and a signalised left turn."""
    out = Path(args.out)

    def lane_change(driving: Any, info: dict[str, Any]) -> bool:
        return any(e["type"] == "lane_invasion" for e in info["events"])

    def left_turn(driving: Any, info: dict[str, Any]) -> bool:
        lp = driving.lane_point
        if lp is None or driving.road_map is None:
            return False
        lane = driving.road_map.lane(lp.lane)
        return lane.turn == "left" and lp.s > 0.4 * lane.length

    _manoeuvre_picture("Highway-v0", args.highway_seed, args.mode, lane_change,
           out / "expert_lane_change_bev.png", "lane change", 0.3)
    _manoeuvre_picture("Urban-v0", args.urban_seed, args.mode, left_turn,
           out / "expert_left_turn_bev.png", "left turn", 0.15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("--envs", nargs="+", default=["Highway-v0", "Urban-v0"])
    m.add_argument("--modes", nargs="+", default=["control", "behavior", "trajectory"])
    m.add_argument("--policies", nargs="+", default=["expert"])
    m.add_argument("--episodes", type=int, default=50)
    m.add_argument("--first-seed", type=int, default=1000)
    m.set_defaults(func=measure)
    pic = sub.add_parser("pictures")
    pic.add_argument("--out", default="docs/images")
    pic.add_argument("--mode", default="behavior")
    pic.add_argument("--highway-seed", type=int, default=1003)
    pic.add_argument("--urban-seed", type=int, default=1000)
    pic.set_defaults(func=pictures)
    args = parser.parse_args()
    args.func(args)


if __name__ == "__main__":
    main()
