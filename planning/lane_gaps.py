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
- ``closing_mps``: how fast the lead comes nearer [m/s]: the lead's rear now is matched
  with the previous decision's returns around it (the same car, as a tracker would), so
  a new lead (a cut-in, or the old lead leaving the lane) does not read as a jump of
  the gap (:func:`closing_speed`). 0 on the first decision of an episode, while nothing
  is ahead, and when the lead was not near the same place at the previous decision;
- ``left_ahead_m`` / ``left_behind_m`` and ``right_ahead_m`` / ``right_behind_m``: the
  free length ahead of the ego's front and behind its rear in the neighbouring lanes
  (0 when something is beside the ego; a guard rail where there is no lane reads short).

Where nothing is hit the value is the lidar's range.

A guard rail beside the ego reads like a car beside it (0 ahead and behind), so on an
on-ramp the gaps cannot tell the moment a merge becomes possible from the moment a car
blocks it. With ``presence`` two more features say which neighbours exist, from the map
at the ego's place (:func:`lanes_beside`): ``left_lane`` and ``right_lane``, 1 where
there is a lane in the ego's direction beside its own, else 0.

The gap behind says where the car in the next lane is, not how fast it comes: a merge
into a gap of 20 m is safe in front of a car at the ego's speed and not in front of one
10 m/s faster (the expert's own lane-change check reads that speed from the traffic
state). With ``rear_closing`` two more features, :data:`REAR_CLOSING_FEATURES`, say how
fast the nearest car behind in the left and the right lane comes nearer [m/s], tracked
between decisions as the lead is (:func:`rear_closing_speed`); 0 where nothing is behind.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
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
#: Names of the features ``presence`` appends, in order.
PRESENCE_FEATURES = ("left_lane", "right_lane")
#: Names of the features ``rear_closing`` appends (after the presence flags), in order.
REAR_CLOSING_FEATURES = ("left_behind_closing_mps", "right_behind_closing_mps")
#: Closing speeds are clipped to +-this [m/s]; it also bounds how far the lead may have
#: moved, relative to the ego, since the previous decision when it is matched.
MAX_CLOSING_MPS = 25.0
#: Half-width of the band of returns taken as the lead, now and at the previous decision
#: (ego frame) [m]: a car's half-width plus the sideways motion of a lane change in one
#: decision (about 0.4 m in 0.3 s).
TRACK_LATERAL_GATE_M = 1.5
#: A car's length, the reach of the lead's returns beyond its nearest one [m].
CAR_LENGTH_M = 4.5


@dataclass(frozen=True)
class LaneScan:
    """One lidar scan sorted into lanes.

    Attributes:
        gaps: ``[ahead, left_ahead, left_behind, right_ahead, right_behind]`` [m], each
            in ``[0, range_m]``.
        points: The hits in the ego frame, ``(n, 2)`` (x forward, y left) [m].
        lead: The ego-frame point of the nearest hit ahead in the ego's lane, ``(2,)``
            [m], or ``None`` when nothing is there.
        rears: The ego-frame points of the nearest hits behind in the left and the right
            lane, each ``(2,)`` [m] or ``None``.
    """

    gaps: NDArray[np.float64]
    points: NDArray[np.float64]
    lead: NDArray[np.float64] | None
    rears: tuple[NDArray[np.float64] | None, NDArray[np.float64] | None] = (None, None)


def lane_gaps(env: DrivingEnv, ranges: NDArray[Any]) -> NDArray[np.float64]:
    """The five gaps of :data:`FEATURES` (without the closing speed) from one scan.

    Args:
        env: The bare env whose lidar produced ``ranges`` (its current pose).
        ranges: The lidar's ranges ``(num_rays,)`` [m].

    Returns:
        ``[ahead, left_ahead, left_behind, right_ahead, right_behind]`` [m], each in
        ``[0, range_m]``.
    """
    return scan_lanes(env, ranges).gaps


def scan_lanes(env: DrivingEnv, ranges: NDArray[Any]) -> LaneScan:
    """Sort one scan's hits into the ego's lane and its neighbours (see :class:`LaneScan`).

    Args:
        env: The bare env whose lidar produced ``ranges`` (its current pose).
        ranges: The lidar's ranges ``(num_rays,)`` [m].
    """
    assert env.lidar is not None, "lane gaps need the lidar (sensors.lidar=true)"
    cfg = env.config.sensors.lidar_config
    limit = cfg.range_m
    empty = LaneScan(np.full(5, limit), np.zeros((0, 2)), None)
    lp = env.lane_point
    path = ego_path(env)
    if lp is None or path is None or env.road_map is None:
        return empty
    st = env.state
    hit = np.asarray(ranges, np.float64) < limit - 1e-3
    if not hit.any():
        return empty
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
    lead = None
    rears: list[NDArray[np.float64] | None] = []
    for k, (lo, hi) in enumerate(bands):
        in_band = forward & (lat > lo) & (lat <= hi)
        gaps.append(gap(in_band, ahead_dist))
        if k == 0 and in_band.any():
            nearest = np.flatnonzero(in_band)[np.argmin(ahead_dist[in_band])]
            lead = np.array([ex[nearest], ey[nearest]])
        if k > 0:
            behind = (~forward) & (lat_behind > lo) & (lat_behind <= hi)
            gaps.append(gap(behind, behind_dist))
            rear = None
            if behind.any():
                nearest = np.flatnonzero(behind)[np.argmin(behind_dist[behind])]
                rear = np.array([ex[nearest], ey[nearest]])
            rears.append(rear)
    return LaneScan(np.asarray(gaps), np.column_stack([ex, ey]), lead,
                    (rears[0], rears[1]))


def closing_speed(lead: NDArray[np.float64] | None, points: NDArray[np.float64],
                  previous_points: NDArray[np.float64] | None, period_s: float) -> float:
    """How fast the lead comes nearer, from this scan and the previous one [m/s].

    The lead's rear is the rearmost return within :data:`TRACK_LATERAL_GATE_M` sideways
    and :data:`CAR_LENGTH_M` along of its nearest return (nearest along the lane, which
    on a curve need not be the rearmost in the ego frame); its rear at the
    previous scan is the rearmost previous return within the same lateral band and
    ``MAX_CLOSING_MPS * period_s`` along. Both are in the ego frame, so the change is
    the lead's motion relative to the ego. Taking the rearmost return of a band on both
    scans, rather than single returns, keeps beams that hit the car's side or corner on
    one scan and its rear on the other from reading as speed.

    Args:
        lead: The lead's nearest return now (ego frame) [m], or ``None``.
        points: This scan's returns ``(n, 2)`` (ego frame) [m].
        previous_points: The previous scan's returns ``(n, 2)`` (ego frame) [m], or
            ``None`` at the start of an episode.
        period_s: Time between the two scans [s].

    Returns:
        The closing speed, positive when the gap shrinks; 0 when there is no lead or it
        was not seen before.
    """
    if lead is None or previous_points is None or len(previous_points) == 0:
        return 0.0
    x0, y0 = float(lead[0]), float(lead[1])
    band = np.abs(points[:, 1] - y0) < TRACK_LATERAL_GATE_M
    rear = float(points[band & (points[:, 0] >= x0 - CAR_LENGTH_M)
                        & (points[:, 0] <= x0 + CAR_LENGTH_M), 0].min(initial=x0))
    reach = MAX_CLOSING_MPS * period_s
    near = ((np.abs(previous_points[:, 1] - y0) < TRACK_LATERAL_GATE_M)
            & (np.abs(previous_points[:, 0] - rear) < reach))
    if not near.any():
        return 0.0
    before = float(previous_points[near, 0].min())
    return float(np.clip((before - rear) / period_s, -MAX_CLOSING_MPS, MAX_CLOSING_MPS))


def rear_closing_speed(rear: NDArray[np.float64] | None, points: NDArray[np.float64],
                       previous_points: NDArray[np.float64] | None, period_s: float) -> float:
    """How fast a car behind comes nearer, from this scan and the previous one [m/s].

    :func:`closing_speed` looking backwards: with the ego frame mirrored front to back
    the car behind is a lead, and its front (the frontmost return of its band) is
    tracked as the lead's rear is. A guard rail is not a car: its returns run on past
    the ego, so the previous scan's match lands at the edge of its reach, and the rail
    reads as receding at up to :data:`MAX_CLOSING_MPS` (about -22 m/s to -25 m/s at
    18 m/s on the on-ramp).

    Args:
        rear: The car's nearest return now (ego frame, behind the ego) [m], or ``None``.
        points: This scan's returns ``(n, 2)`` (ego frame) [m].
        previous_points: The previous scan's returns ``(n, 2)``, or ``None``.
        period_s: Time between the two scans [s].

    Returns:
        The closing speed, positive when the car behind comes nearer; 0 when nothing is
        behind or it was not seen before.
    """
    if rear is None:
        return 0.0
    mirror = np.array([-1.0, 1.0])
    return closing_speed(rear * mirror, points * mirror,
                         None if previous_points is None else previous_points * mirror,
                         period_s)


def lanes_beside(env: DrivingEnv) -> tuple[float, float]:
    """Whether the map has a lane in the ego's direction left and right of the ego's
    lane, at its place: ``(left, right)``, each 1.0 or 0.0 (both 0 off the map).

    A neighbour counts where it runs beside the ego: the ego's road station lies within
    the neighbour's (an acceleration lane is the right neighbour of the outer lane only
    along its own length)."""
    lp, rm = env.lane_point, env.road_map
    if lp is None or rm is None:
        return 0.0, 0.0
    lane = rm.lane(lp.lane)
    station = float(lane.station_at(lp.s))

    def beside(neighbour: str | None) -> float:
        if neighbour is None:
            return 0.0
        st = rm.lane(neighbour).station
        return float(min(st[0], st[-1]) <= station <= max(st[0], st[-1]))

    return beside(lane.left), beside(lane.right)


class LaneGapSensor:
    """:func:`lane_gaps` plus the closing speed, which needs the previous decision's scan.

    Args:
        period_s: Time between two calls (the decision period) [s].
        presence: Append :data:`PRESENCE_FEATURES` (:func:`lanes_beside`).
        rear_closing: Append :data:`REAR_CLOSING_FEATURES` (:func:`rear_closing_speed`).
    """

    def __init__(self, period_s: float, presence: bool = False,
                 rear_closing: bool = False) -> None:
        self.period_s = period_s
        self.presence = presence
        self.rear_closing = rear_closing
        self.previous_points: NDArray[np.float64] | None = None
        self.last: NDArray[np.float32] | None = None  # the features last returned

    def reset(self) -> None:
        """Forget the last episode."""
        self.previous_points = None
        self.last = None

    def __call__(self, env: DrivingEnv, ranges: NDArray[Any]) -> NDArray[np.float32]:
        """The features of :data:`FEATURES` (and :data:`PRESENCE_FEATURES`,
        :data:`REAR_CLOSING_FEATURES`) for the current state."""
        scan = scan_lanes(env, ranges)
        previous, self.previous_points = self.previous_points, scan.points
        closing = closing_speed(scan.lead, scan.points, previous, self.period_s)
        beside = lanes_beside(env) if self.presence else ()
        rears = tuple(rear_closing_speed(rear, scan.points, previous, self.period_s)
                      for rear in scan.rears) if self.rear_closing else ()
        self.last = np.array([scan.gaps[0], closing, *scan.gaps[1:], *beside, *rears],
                             np.float32)
        return self.last

    @staticmethod
    def width(presence: bool, rear_closing: bool) -> int:
        """The number of features with these options."""
        return (len(FEATURES) + (len(PRESENCE_FEATURES) if presence else 0)
                + (len(REAR_CLOSING_FEATURES) if rear_closing else 0))


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
        presence: Append :data:`PRESENCE_FEATURES` (which neighbour lanes exist).
        rear_closing: Append :data:`REAR_CLOSING_FEATURES` (how fast the cars behind in
            the neighbour lanes come nearer).
    """

    def __init__(self, env: gym.Env[dict[str, Any], Any], keep_ranges: bool = False,
                 presence: bool = False, rear_closing: bool = False) -> None:
        super().__init__(env)
        self.keep_ranges = keep_ranges
        driving = env.unwrapped
        if not isinstance(driving, DrivingEnv) or not driving.config.sensors.lidar:
            raise ValueError("lane_gaps needs the lidar: add sensors.lidar=true to the env "
                             "overrides")
        self.driving = driving
        self.sensor = LaneGapSensor(decision_period_s(env), presence, rear_closing)
        limit = driving.config.sensors.lidar_config.range_m
        width = LaneGapSensor.width(presence, rear_closing)
        low = np.zeros(width, np.float32)
        high = np.full(width, limit, np.float32)
        low[1], high[1] = -MAX_CLOSING_MPS, MAX_CLOSING_MPS
        flags = LaneGapSensor.width(presence, rear_closing=False)
        high[len(FEATURES):flags] = 1.0  # the presence flags
        low[flags:], high[flags:] = -MAX_CLOSING_MPS, MAX_CLOSING_MPS
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
