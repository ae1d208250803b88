"""Lane occupancy measured with the lidar and the map: how much free road there is ahead
and behind in the ego's lane and in the lanes beside it.

A policy that only sees one 84 x 84 camera frame cannot tell a lead 26 m ahead from one
58 m ahead, nor see a car coming up beside it (the agents section of the README measures
both). This sensor turns the lidar's returns into the few numbers a driver decides on:
each hit point is placed on the map relative to the ego's lane (arc length along the
lane's centre line ahead, lateral offset from it) and sorted into the ego's lane or the
left / right neighbour by the lane width. It reads only the lidar ranges, the ego's pose
(localisation) and the map, never the traffic state, so it is a sensor, not a shortcut.

Features (float32, :data:`FEATURES`), all in metres except the closing speed:

- ``ahead_m``: bumper-to-hit gap to the nearest return in the ego's lane ahead;
- ``closing_mps``: how fast ``ahead_m`` shrank since the previous decision [m/s]
  (0 on the first decision of an episode and while nothing is in range);
- ``left_ahead_m`` / ``left_behind_m`` and ``right_ahead_m`` / ``right_behind_m``: the
  free length ahead of the ego's front and behind its rear in the neighbouring lanes
  (0 when something is beside the ego; a guard rail where there is no lane reads short).

Where nothing is hit the value is the lidar's range.
"""

from __future__ import annotations

import math
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.driving_env import DrivingEnv
from planning.safety import ego_path, project_onto_path

#: Names of the features, in order.
FEATURES = ("ahead_m", "closing_mps", "left_ahead_m", "left_behind_m", "right_ahead_m",
            "right_behind_m")
#: Closing speeds are clipped to +-this [m/s] (a new lead appearing is not a speed).
MAX_CLOSING_MPS = 15.0


def lane_gaps(env: DrivingEnv, ranges: NDArray[Any]) -> NDArray[np.float64]:
    """The five gaps of :data:`FEATURES` (without the closing speed) from one scan.

    Args:
        env: The bare env whose lidar produced ``ranges`` (its current pose).
        ranges: The lidar's ranges ``(num_rays,)`` [m].

    Returns:
        ``[ahead, left_ahead, left_behind, right_ahead, right_behind]`` [m], each in
        ``[0, range_m]``.
    """
    assert env.lidar is not None, "lane gaps need the lidar (sensors.lidar=true)"
    cfg = env.config.sensors.lidar_config
    limit = cfg.range_m
    out = np.full(5, limit)
    lp = env.lane_point
    path = ego_path(env)
    if lp is None or path is None or env.road_map is None:
        return out
    st = env.state
    hit = np.asarray(ranges, np.float64) < limit - 1e-3
    if not hit.any():
        return out
    c, s = math.cos(st.yaw), math.sin(st.yaw)
    local = env.lidar.directions[hit] * np.asarray(ranges, np.float64)[hit, None]
    mount = np.asarray(cfg.mount_xyz_m)
    ex = local[:, 0] + mount[0]  # ego frame: x forward, y left [m]
    ey = local[:, 1] + mount[1]
    xy = np.column_stack([st.x + c * ex - s * ey, st.y + s * ex + c * ey])
    half_len = env.config.vehicle.length_m / 2.0
    width = float(env.road_map.lane(lp.lane).width_at(lp.s))
    # Ahead: along the lane's centre line (curves and the lanes after it count).
    arc, lat, _ = project_onto_path(path, xy)
    forward = ex > 0.0
    # Behind: in the ego frame, offset by the ego's place in its lane (short and straight).
    lat_behind = ey + lp.d
    bands = ((-width / 2, width / 2), (width / 2, 1.5 * width), (-1.5 * width, -width / 2))

    def gap(mask: NDArray[np.bool_], dist: NDArray[np.float64]) -> float:
        return float(np.clip(dist[mask].min(), 0.0, limit)) if mask.any() else limit

    ahead_dist = arc - half_len
    behind_dist = -ex - half_len
    gaps = []
    for k, (lo, hi) in enumerate(bands):
        in_band = forward & (lat > lo) & (lat <= hi)
        gaps.append(gap(in_band, ahead_dist))
        if k > 0:
            behind = (~forward) & (lat_behind > lo) & (lat_behind <= hi)
            gaps.append(gap(behind, behind_dist))
    return np.asarray(gaps)


class LaneGapSensor:
    """:func:`lane_gaps` plus the closing speed, which needs the previous decision's gap.

    Args:
        period_s: Time between two calls (the decision period) [s].
    """

    def __init__(self, period_s: float) -> None:
        self.period_s = period_s
        self.previous_ahead_m: float | None = None

    def reset(self) -> None:
        """Forget the last episode."""
        self.previous_ahead_m = None

    def __call__(self, env: DrivingEnv, ranges: NDArray[Any]) -> NDArray[np.float32]:
        """The features of :data:`FEATURES` for the current state."""
        gaps = lane_gaps(env, ranges)
        limit = env.config.sensors.lidar_config.range_m
        ahead = float(gaps[0])
        closing = 0.0
        if self.previous_ahead_m is not None and max(ahead, self.previous_ahead_m) < limit:
            closing = float(np.clip((self.previous_ahead_m - ahead) / self.period_s,
                                    -MAX_CLOSING_MPS, MAX_CLOSING_MPS))
        self.previous_ahead_m = ahead
        return np.array([ahead, closing, *gaps[1:]], np.float32)


def decision_period_s(env: gym.Env[Any, Any]) -> float:
    """Seconds between two actions of ``env`` (its decision layer's period, if any)."""
    try:
        steps = int(env.get_wrapper_attr("steps_per_decision"))
    except AttributeError:  # the control mode: one action per control step
        steps = 1
    return steps * float(env.unwrapped.dt)  # type: ignore[attr-defined]


class LaneGaps(gym.Wrapper[dict[str, Any], Any, dict[str, Any], Any]):
    """Adds ``lane_gaps`` (float32, :data:`FEATURES`) to a lidar env's observations.

    Args:
        env: A bulletdrive env with ``sensors.lidar=true`` (possibly wrapped).
        keep_ranges: Keep the raw ``lidar`` ranges in the observation too; by default the
            gaps replace them.
    """

    def __init__(self, env: gym.Env[dict[str, Any], Any], keep_ranges: bool = False) -> None:
        super().__init__(env)
        self.keep_ranges = keep_ranges
        driving = env.unwrapped
        if not isinstance(driving, DrivingEnv) or not driving.config.sensors.lidar:
            raise ValueError("lane_gaps needs the lidar: add sensors.lidar=true to the env "
                             "overrides")
        self.driving = driving
        self.sensor = LaneGapSensor(decision_period_s(env))
        limit = driving.config.sensors.lidar_config.range_m
        low = np.zeros(len(FEATURES), np.float32)
        high = np.full(len(FEATURES), limit, np.float32)
        low[1], high[1] = -MAX_CLOSING_MPS, MAX_CLOSING_MPS
        assert isinstance(env.observation_space, spaces.Dict)
        kept = {k: v for k, v in env.observation_space.spaces.items()
                if keep_ranges or k != "lidar"}
        self.observation_space = spaces.Dict(
            {**kept, "lane_gaps": spaces.Box(low, high, dtype=np.float32)})

    def _add(self, obs: dict[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in obs.items() if self.keep_ranges or k != "lidar"}
        return {**kept, "lane_gaps": self.sensor(self.driving, obs["lidar"])}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, Any], dict[str, Any]]:
        """Reset the env and the closing-speed memory."""
        self.sensor.reset()
        obs, info = self.env.reset(seed=seed, options=options)
        return self._add(obs), info

    def step(self, action: Any) -> tuple[dict[str, Any], SupportsFloat, bool, bool,
                                         dict[str, Any]]:
        """Step and add the features."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._add(obs), reward, terminated, truncated, info
