"""The rule-based expert driver (privileged): follows the route, keeps safe gaps, changes
lanes where the route asks, stops for red lights and yields to pedestrians.

It reads the env's privileged state (map, route, traffic, signals, pedestrians) and
returns the ``control`` action ``[steer, accel]``. Lateral control is pure pursuit on a
look-ahead point of the lane it wants to be in; longitudinal control is IDM behind the
nearest vehicle, stop line or pedestrian on its path.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from envs.maps.road_map import RouteCommand
from envs.traffic.idm import FREE_ROAD_GAP_M, idm_acceleration
from envs.traffic.signals import AMBER, GREEN
from planning.controllers import pure_pursuit_steer

if TYPE_CHECKING:
    from envs.driving_env import DrivingEnv


@dataclass(frozen=True)
class ExpertConfig:
    """Expert driving style.

    Attributes:
        speed_factor: Desired speed as a fraction of the speed limit.
        lookahead_s: Pure-pursuit look-ahead time [s] (at least ``min_lookahead_m``).
        min_lookahead_m: Minimum look-ahead distance [m].
        max_lat_accel_mps2: Lateral acceleration allowed in curves [m/s^2].
        time_headway_s / min_gap_m / comfort_decel_mps2: IDM parameters of the expert.
        change_gap_m: Free length needed in the target lane, ahead and behind, to change [m].
        pedestrian_margin_m: Lateral distance to the path at which pedestrians block it [m].
    """

    speed_factor: float = 0.95
    lookahead_s: float = 0.8
    min_lookahead_m: float = 7.0
    max_lat_accel_mps2: float = 2.5
    time_headway_s: float = 1.4
    min_gap_m: float = 3.0
    comfort_decel_mps2: float = 3.0
    change_gap_m: float = 12.0
    pedestrian_margin_m: float = 2.5


@dataclass(frozen=True)
class ExpertPlan:
    """The expert's intent for the current step.

    Attributes:
        lane: Lane it wants to drive in (the route lane, or the next one once a lane
            change is free); ``None`` when off every lane.
        accel_mps2: Acceleration it wants (IDM behind the nearest obstacle) [m/s^2].
        control: The ``[steer, accel]`` command in [-1, 1].
        gap_m: IDM's gap to what it follows along its path (vehicle, merging vehicle,
            stop line or pedestrian) [m]; ``FREE_ROAD_GAP_M`` on a free road.
        lead_speed_mps: Speed of what it follows (0 for stop lines and pedestrians) [m/s].
        desired_speed_mps: IDM's free-road speed (speed limit times the style's factor,
            lower in curves) [m/s].
    """

    lane: str | None
    accel_mps2: float
    control: NDArray[np.float32]
    gap_m: float = math.nan
    lead_speed_mps: float = math.nan
    desired_speed_mps: float = math.nan


class Expert:
    """A privileged policy for a :class:`envs.driving_env.DrivingEnv`.

    Args:
        cfg: Driving style.
    """

    def __init__(self, cfg: ExpertConfig | None = None) -> None:
        self.cfg = cfg or ExpertConfig()

    # ------------------------------------------------------------------ path
    def _path(self, env: DrivingEnv) -> tuple[list[tuple[int, float]], float]:
        """Lanes ahead as (lane index, entry arc length) and the ego's arc length on the
        first one."""
        rm, route, lp = env.road_map, env.route, env.lane_point
        assert rm is not None and route is not None and lp is not None
        k = route.segment_at(env.route_progress)
        seg = route.segments[k]
        here = rm.lane(seg.lane)
        ego_lane = rm.lane(lp.lane)
        if seg.lane == lp.lane:
            s = lp.s
        elif ego_lane.road == here.road:  # beside the route lane: same station
            s = float(here.s_at_station(ego_lane.station_at(lp.s)))
        else:
            s = seg.s_start
        lanes = [(rm.lane_index[seg.lane], s)]
        target = k
        if seg.command in (RouteCommand.CHANGE_LANE_LEFT, RouteCommand.CHANGE_LANE_RIGHT) \
                and k + 1 < len(route.segments):
            nxt = route.segments[k + 1]
            s_n = float(rm.lane(nxt.lane).s_at_station(here.station_at(s)))
            ahead_len = here.length - s
            if self._free(env, rm.lane_index[nxt.lane], s_n) or ahead_len < 30.0:
                lanes = [(rm.lane_index[nxt.lane], s_n)]
                target = k + 1
        for later in route.segments[target + 1:target + 4]:
            lanes.append((rm.lane_index[later.lane], later.s_start))
        return lanes, lanes[0][1]

    def _free(self, env: DrivingEnv, lane: int, s: float) -> bool:
        t = env.traffic
        on = t.active & (t.lane == lane)
        if not on.any():
            return True
        ds = t.s[on] - s
        speed = max(env.state.speed_mps, 0.0)
        behind_need = self.cfg.change_gap_m + 1.0 * np.maximum(t.v[on] - speed, 0.0)
        ok_ahead = ds > self.cfg.change_gap_m
        ok_behind = -ds > behind_need
        return bool(np.all(ok_ahead | ok_behind))

    @staticmethod
    def _walk(env: DrivingEnv, lanes: list[tuple[int, float]], s0: float,
              distance: float) -> tuple[float, float]:
        """World point ``distance`` metres along the path."""
        rm = env.road_map
        assert rm is not None
        remaining = distance
        s = s0
        for i, (lane, entry) in enumerate(lanes):
            ln = rm.lanes[lane]
            start = s if i == 0 else entry
            if start + remaining <= ln.length or i == len(lanes) - 1:
                x, y = ln.position(min(start + remaining, ln.length))
                return float(x), float(y)
            remaining -= ln.length - start
        raise AssertionError("unreachable")

    # ------------------------------------------------------------------ act
    def act(self, env: DrivingEnv) -> NDArray[np.float32]:
        """The ``[steer, accel]`` command for the env's current state."""
        return self.plan(env).control

    def plan(self, env: DrivingEnv) -> ExpertPlan:
        """What the expert wants now: its lane, its acceleration and the control."""
        cfg = self.cfg
        st = env.state
        vcfg = env.config.vehicle
        rm = env.road_map
        if env.lane_point is None or rm is None:
            return ExpertPlan(None, -vcfg.max_brake_mps2, np.array([0.0, -1.0], np.float32))
        lanes, s0 = self._path(env)
        speed = max(st.speed_mps, 0.0)
        ld = max(cfg.min_lookahead_m, cfg.lookahead_s * speed)
        rear_x = st.x - math.cos(st.yaw) * vcfg.wheelbase_m / 2.0
        rear_y = st.y - math.sin(st.yaw) * vcfg.wheelbase_m / 2.0
        tx, ty = self._walk(env, lanes, s0, ld + vcfg.wheelbase_m / 2.0)
        c, s = math.cos(st.yaw), math.sin(st.yaw)
        lx = c * (tx - rear_x) + s * (ty - rear_y)
        ly = -s * (tx - rear_x) + c * (ty - rear_y)
        delta = pure_pursuit_steer(lx, ly, vcfg.wheelbase_m)
        steer = delta / vcfg.max_steer_rad
        accel, gap, lead_v, v_des = self._longitudinal(env, lanes, s0, speed)
        cmd = accel / (vcfg.max_accel_mps2 if accel > 0 else vcfg.max_brake_mps2)
        control = np.clip(np.array([steer, cmd], np.float32), -1.0, 1.0)
        return ExpertPlan(rm.lanes[lanes[0][0]].id, accel, control, gap, lead_v, v_des)

    def _desired_speed(self, env: DrivingEnv, lanes: list[tuple[int, float]], s0: float,
                       speed: float) -> float:
        rm = env.road_map
        assert rm is not None
        limit = min(rm.lanes[lane].speed_limit_mps for lane, _ in lanes[:2])
        v = self.cfg.speed_factor * limit
        # Slow down for curvature seen over the next few seconds.
        pts = np.array([self._walk(env, lanes, s0, d) for d in (0.0, 10.0, 20.0, 30.0, 45.0)])
        heading = np.arctan2(np.diff(pts[:, 1]), np.diff(pts[:, 0]))
        dh = np.abs(np.angle(np.exp(1j * np.diff(heading))))
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        kappa = float(np.max(dh / np.maximum(0.5 * (seg[1:] + seg[:-1]), 1e-3))) if len(dh) else 0
        if kappa > 1e-4:
            v = min(v, math.sqrt(self.cfg.max_lat_accel_mps2 / kappa))
        return v

    def _longitudinal(self, env: DrivingEnv, lanes: list[tuple[int, float]], s0: float,
                      speed: float) -> tuple[float, float, float, float]:
        """IDM's acceleration [m/s^2] and its inputs: gap [m], lead speed [m/s] and
        desired speed [m/s]."""
        cfg = self.cfg
        rm = env.road_map
        assert rm is not None
        half_len = env.config.vehicle.length_m / 2.0
        gap, lead_v = FREE_ROAD_GAP_M, 0.0
        t = env.traffic
        states = env.signals.states(env.sim_time_s)
        base = 0.0  # distance from the ego to where lane i is entered
        ego_lane = rm.lane_index[env.lane_point.lane] if env.lane_point else -1
        for i, (lane, entry) in enumerate(lanes):
            ln = rm.lanes[lane]
            start = s0 if i == 0 else entry
            on = t.active & ((t.lane == lane) | ((t.lane == ego_lane) & (i == 0)))
            if on.any():
                ds = base + t.s[on] - start - (t.length[on] / 2 + half_len)
                ahead = ds > -half_len
                if ahead.any():
                    j = int(np.argmin(np.where(ahead, ds, np.inf)))
                    if ds[j] < gap:
                        gap, lead_v = float(max(ds[j], 0.1)), float(t.v[on][j])
            # Vehicles on other connectors merging into the same lane, nearer the merge.
            if ln.kind == "connector" and len(ln.successors) == 1:
                merge = t.merge_into
                rest_here = base + ln.length - start
                others = t.active & (t.lane != lane) & (merge[np.maximum(t.lane, 0)]
                                                        == merge[lane])
                if others.any():
                    rest = t.lane_length[t.lane[others]] - t.s[others]
                    ahead = rest < rest_here
                    if ahead.any():
                        d = float(np.min(rest_here - rest[ahead])) - 2.0 * half_len
                        if d < gap:
                            gap, lead_v = max(d, 0.1), float(np.min(t.v[others][ahead]))
            # Stop lines of lights that are not green (amber: only if it can stop).
            k = int(env.signals.lane_signal[lane]) if len(states) else -1
            if k >= 0:
                state = states[k]
                to_line = base + ln.length - start - half_len - 1.0
                # Amber: stop only if that needs no more than 4 m/s^2.
                can_stop = to_line > speed * speed / (2.0 * 4.0)
                held = state != GREEN and to_line > -0.5 and (state != AMBER or can_stop)
                if held and to_line < gap:
                    gap, lead_v = max(to_line, 0.1), 0.0
            base += ln.length - start
            if base > 120.0:
                break
        peds = env.pedestrians
        if peds is not None and peds.n:
            pts = np.array([self._walk(env, lanes, s0, d) for d in np.arange(0.0, 32.0, 2.0)])
            dist = np.hypot(pts[:, None, 0] - peds.x[None, :], pts[:, None, 1] - peds.y[None, :])
            near = (dist < cfg.pedestrian_margin_m).any(axis=1)
            if near.any():
                first = float(np.argmax(near) * 2.0) - half_len - 2.0
                if first < gap:
                    gap, lead_v = max(first, 0.1), 0.0
        v_des = self._desired_speed(env, lanes, s0, speed)
        accel = float(idm_acceleration(speed, max(v_des, 0.5), gap, lead_v, max_accel=2.0,
                                       comfort_decel=cfg.comfort_decel_mps2,
                                       time_headway=cfg.time_headway_s, min_gap=cfg.min_gap_m))
        return accel, gap, lead_v, v_des


def expert_policy(env: DrivingEnv) -> NDArray[Any]:
    """Convenience: one expert action with the default style."""
    return Expert().act(env)
