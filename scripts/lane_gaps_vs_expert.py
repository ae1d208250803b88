"""Compare the lane-gap sensor with the expert's own gap and closing speed.

    python scripts/lane_gaps_vs_expert.py --episodes 8

The expert drives ``Highway-v0`` in ``behavior`` mode with the flat 180-beam lidar of the
README's lane-gap runs; at every decision where its IDM follows something under 75 m
away, the sensor's ``ahead_m`` is compared with the expert's gap and its
``closing_mps`` with the expert's closing speed (ego speed minus the lead's). The
closing speed is also computed the old way, as the change of ``ahead_m`` over the
decision period (clipped to +-15 m/s, 0 when either reading is out of range), for
comparison. Prints one JSON line. Seeds start at 60000 (training range).
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from planning.lane_gaps import LaneGaps, decision_period_s
from planning.make import make_env
from planning.policies import ExpertPolicy

#: The lidar of the README's lane-gap runs (no camera: it is not needed here).
OVERRIDES = ["sensors.camera=false", "sensors.lidar=true", "sensors.lidar_config.beams=180",
             "sensors.lidar_config.elevations_rad=[0.0]", "sensors.lidar_config.range_m=80.0",
             "sensors.lidar_config.mount_xyz_m=[0.0,0.0,0.3]"]
#: Decisions whose expert gap is at least this are left out (free road) [m].
NEAR_M = 75.0


def main() -> None:
    """Drive, compare, print."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=250, help="decisions per episode at most")
    args = parser.parse_args()
    env = LaneGaps(make_env("bulletdrive/Highway-v0", action_mode="behavior",
                            overrides=OVERRIDES))
    period = decision_period_s(env)
    limit = 80.0
    rows = []  # expert gap, expert closing, ahead, tracked closing, differenced closing
    for ep in range(args.episodes):
        policy = ExpertPolicy()
        policy.reset(ep)
        obs, _ = env.reset(seed=60_000 + ep)
        previous = None
        for _ in range(args.steps):
            action = policy.act(obs, env)  # its plan is for the state obs shows
            ahead, closing = float(obs["lane_gaps"][0]), float(obs["lane_gaps"][1])
            diff = 0.0
            if previous is not None and max(previous, ahead) < limit:
                diff = float(np.clip((previous - ahead) / period, -15.0, 15.0))
            previous = ahead
            plan = policy.last_plan
            if plan is not None and plan.gap_m < NEAR_M:
                speed = env.unwrapped.state.speed_mps  # type: ignore[attr-defined]
                rows.append((plan.gap_m, speed - plan.lead_speed_mps, ahead, closing, diff))
            obs, _, terminated, truncated, _ = env.step(action)
            if terminated or truncated:
                break
    env.close()
    gap, true_closing, ahead, tracked, differenced = np.asarray(rows).T
    print(json.dumps({
        "decisions": len(rows),
        "gap_corr": round(float(np.corrcoef(gap, ahead)[0, 1]), 3),
        "gap_median_abs_err_m": round(float(np.median(np.abs(gap - ahead))), 2),
        "closing_corr_tracked": round(float(np.corrcoef(true_closing, tracked)[0, 1]), 3),
        "closing_corr_differenced": round(float(np.corrcoef(true_closing, differenced)[0, 1]),
                                          3)}))


if __name__ == "__main__":
    main()
