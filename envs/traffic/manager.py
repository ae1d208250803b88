"""Traffic on a lane map: IDM car-following, MOBIL lane changes, spawning around the ego.

Vehicles are kinematic: their state lives in numpy arrays in lane coordinates (lane,
arc length ``s``, lateral offset ``d``, speed) and is advanced with IDM/MOBIL once per
control step; each vehicle is a static box body in pybullet that is moved to its new
pose, so contacts with the dynamic ego are detected by the physics engine.

Shapes: every per-vehicle array has shape (N,) with N = ``TrafficConfig.num_vehicles``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from common.config import require
from envs.maps.road_map import RoadMap
from envs.sim.scene import SemanticClass
from envs.traffic.idm import (
    FREE_ROAD_GAP_M,
    IDMParams,
    MOBILParams,
    idm_acceleration,
    mobil_decision,
)

#: A float64 array; the dtype is documented, not enforced by the type checker.
FloatArray = NDArray[Any]
IntArray = NDArray[Any]

_PALETTE = np.array([
    [0.85, 0.85, 0.85], [0.15, 0.15, 0.17], [0.55, 0.57, 0.6], [0.7, 0.1, 0.1],
    [0.1, 0.2, 0.55], [0.9, 0.9, 0.95], [0.25, 0.35, 0.25], [0.8, 0.6, 0.1],
])
#: Pose used to park inactive vehicles out of sight [m].
_PARKED = (0.0, 0.0, -100.0)


@dataclass(frozen=True)
class TrafficConfig:
    """Traffic density and driver behaviour.

    Attributes:
        num_vehicles: Vehicles kept around the ego (0 disables traffic).
        window_ahead_m / window_behind_m: Region around the ego station where vehicles live [m].
        opposite_fraction: Share of vehicles on the opposite carriageway.
        ramp_fraction: Share of spawns placed on the on-ramp when it is in the window.
        speed_factor: Range of desired speed as a fraction of the speed limit.
        politeness: Range of MOBIL politeness factors.
        truck_fraction: Share of vehicles that are trucks (12 m x 2.5 m).
        aggressive_fraction: Share of aggressive drivers (short headway, fast, impolite).
        distracted_fraction: Share of distracted drivers (react late: long min gap ignored,
            brake harder; modelled as a larger comfortable deceleration and no lane changes).
        decision_interval_s: Time between a vehicle's lane-change decisions [s].
        lane_change_duration_s: Time to move across one lane [s].
        min_spawn_gap_m: Minimum gap to other vehicles when spawning [m].
        idm: Car-following parameters (per-vehicle headway is drawn around ``time_headway_s``).
        mobil: Lane-change parameters.
    """

    num_vehicles: int = 20
    window_ahead_m: float = 220.0
    window_behind_m: float = 80.0
    opposite_fraction: float = 0.3
    ramp_fraction: float = 0.15
    speed_factor: tuple[float, float] = (0.75, 1.05)
    politeness: tuple[float, float] = (0.0, 0.5)
    truck_fraction: float = 0.1
    aggressive_fraction: float = 0.0
    distracted_fraction: float = 0.0
    decision_interval_s: float = 1.0
    lane_change_duration_s: float = 3.0
    min_spawn_gap_m: float = 12.0
    idm: IDMParams = field(default_factory=IDMParams)
    mobil: MOBILParams = field(default_factory=MOBILParams)

    def __post_init__(self) -> None:
        require(0 <= self.num_vehicles <= 200, "traffic.num_vehicles must be in [0, 200]")
        for name in ("opposite_fraction", "ramp_fraction", "truck_fraction",
                     "aggressive_fraction", "distracted_fraction"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"traffic.{name} must be in [0, 1], got {value}")
        require(0 < self.speed_factor[0] <= self.speed_factor[1],
                "traffic.speed_factor must be an increasing range of positive numbers")
        require(self.window_ahead_m > 20 and self.window_behind_m > 20,
                "traffic windows must be > 20 m")
        require(self.lane_change_duration_s > 0.2, "traffic.lane_change_duration_s must be > 0.2")


@dataclass
class EgoSlot:
    """The ego as seen by traffic: lane index (-1 when off the map), arc length, speed, size."""

    lane: int = -1
    s: float = 0.0
    speed: float = 0.0
    length: float = 4.5


class TrafficManager:
    """Kinematic IDM/MOBIL traffic around the ego on one map.

    Args:
        client: pybullet client id.
        road_map: Map the vehicles drive on.
        cfg: Traffic parameters.
        dt: Control period [s].
    """

    def __init__(self, client: int, road_map: RoadMap, cfg: TrafficConfig, dt: float) -> None:
        self.client = client
        self.map = road_map
        self.cfg = cfg
        self.dt = dt
        n = cfg.num_vehicles
        lanes = road_map.lanes
        self.lane_length = np.array([ln.length for ln in lanes])
        self.successor = np.array([road_map.lane_index[ln.successors[0]] if ln.successors else -1
                                   for ln in lanes])
        self.lane_ends = np.array([ln.kind == "merge" for ln in lanes])
        self.left = np.array([road_map.lane_index[ln.left] if ln.left else -1 for ln in lanes])
        self.right = np.array([road_map.lane_index[ln.right] if ln.right else -1 for ln in lanes])
        self.speed_limit = np.array([ln.speed_limit_mps for ln in lanes])
        self.station_range = np.array([sorted((ln.station[0], ln.station[-1])) for ln in lanes])
        self.forward = [i for i, ln in enumerate(lanes) if ln.id.startswith("main/f")]
        self.backward = [i for i, ln in enumerate(lanes) if ln.id.startswith("main/b")]
        self.ramp = [i for i, ln in enumerate(lanes) if ln.kind == "ramp"]
        self.active = np.zeros(n, dtype=bool)
        self.lane = np.zeros(n, dtype=np.int64)
        self.s = np.zeros(n)
        self.d = np.zeros(n)
        self.d_rate = np.zeros(n)
        self.v = np.zeros(n)
        self.accel = np.zeros(n)
        self.speed_factor = np.zeros(n)
        self.headway = np.zeros(n)
        self.comfort_decel = np.zeros(n)
        self.politeness = np.zeros(n)
        self.can_change = np.ones(n, dtype=bool)
        self.timer = np.zeros(n)
        self.length = np.zeros(n)
        self.width = np.zeros(n)
        self.x = np.zeros(n)
        self.y = np.zeros(n)
        self.yaw = np.zeros(n)
        self.body_ids: list[int] = []
        self._parked: list[bool] = [False] * n
        self.ego = EgoSlot()

    # ------------------------------------------------------------------ bodies
    def _create_bodies(self, rng: np.random.Generator) -> None:
        c = self.client
        self.body_ids = []
        for i in range(self.cfg.num_vehicles):
            truck = rng.random() < self.cfg.truck_fraction
            length, width, height = (12.0, 2.5, 3.6) if truck else (
                float(rng.uniform(4.0, 5.0)), float(rng.uniform(1.7, 1.9)), 1.45)
            self.length[i], self.width[i] = length, width
            color = [*_PALETTE[rng.integers(len(_PALETTE))].tolist(), 1.0]
            if truck:
                half = [[length * 0.38, width / 2, height * 0.45], [length * 0.1, width / 2,
                                                                     height * 0.42]]
                frames = [[-length * 0.1, 0, height * 0.5], [length * 0.39, 0, height * 0.42]]
                colors = [[0.9, 0.9, 0.9, 1.0], color]
            else:
                half = [[length / 2, width / 2, height * 0.25], [length * 0.27, width * 0.45,
                                                                 height * 0.2]]
                frames = [[0, 0, height * 0.3], [-length * 0.05, 0, height * 0.75]]
                colors = [color, [0.12, 0.13, 0.15, 1.0]]
            vis = p.createVisualShapeArray(shapeTypes=[p.GEOM_BOX, p.GEOM_BOX], halfExtents=half,
                                           visualFramePositions=frames, rgbaColors=colors,
                                           physicsClientId=c)
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[length / 2, width / 2,
                                                                  height / 2],
                                         collisionFramePosition=[0, 0, height / 2],
                                         physicsClientId=c)
            body = p.createMultiBody(0, col, vis, basePosition=_PARKED, physicsClientId=c)
            self.body_ids.append(int(body))

    @property
    def body_class(self) -> dict[int, SemanticClass]:
        """Semantic class of every traffic body."""
        return dict.fromkeys(self.body_ids, SemanticClass.VEHICLE)

    # ------------------------------------------------------------------ episode
    def reset(self, rng: np.random.Generator, ego_lane: int, ego_s: float) -> None:
        """Create the vehicle bodies and place them around the ego.

        Args:
            rng: Episode generator (drivers, colours, spawn places).
            ego_lane: Index of the ego's lane.
            ego_s: Ego arc length on that lane [m].
        """
        self.rng = rng
        cfg = self.cfg
        self._create_bodies(rng)
        self.active[:] = False
        self.ego = EgoSlot(ego_lane, ego_s, 0.0)
        ego_station = float(self.map.lanes[ego_lane].station_at(ego_s))
        for i in range(cfg.num_vehicles):
            self._draw_driver(i)
            self._spawn(i, ego_station, region="any")
        self.timer[:] = rng.uniform(0.0, cfg.decision_interval_s, cfg.num_vehicles)
        self._update_poses()

    def _draw_driver(self, i: int) -> None:
        cfg, rng = self.cfg, self.rng
        self.speed_factor[i] = rng.uniform(*cfg.speed_factor)
        self.headway[i] = cfg.idm.time_headway_s * rng.uniform(0.8, 1.2)
        self.comfort_decel[i] = cfg.idm.comfort_decel_mps2
        self.politeness[i] = rng.uniform(*cfg.politeness)
        self.can_change[i] = True
        kind = rng.random()
        if kind < cfg.aggressive_fraction:
            self.speed_factor[i] *= 1.2
            self.headway[i] = 0.6
            self.politeness[i] = 0.0
        elif kind < cfg.aggressive_fraction + cfg.distracted_fraction:
            self.headway[i] = 0.5
            self.comfort_decel[i] = cfg.idm.comfort_decel_mps2 * 2.0
            self.can_change[i] = False

    def _spawn(self, i: int, ego_station: float, region: str) -> None:
        """Place vehicle ``i`` in a free slot; ``region`` is "any", "ahead" or "behind"."""
        cfg, rng = self.cfg, self.rng
        for _ in range(8):
            opposite = rng.random() < cfg.opposite_fraction
            lanes = self.backward if opposite else self.forward
            if region == "any":
                station = ego_station + rng.uniform(-cfg.window_behind_m, cfg.window_ahead_m)
            else:
                edge = (region == "ahead") != opposite  # opposite traffic comes from ahead
                station = (ego_station + cfg.window_ahead_m - rng.uniform(0, 30) if edge
                           else ego_station - cfg.window_behind_m + rng.uniform(0, 20))
            lane = int(rng.choice(lanes))
            if self.ramp and not opposite and rng.random() < cfg.ramp_fraction:
                lane = int(rng.choice(self.ramp))
                lo, hi = self.station_range[lane]
                station = float(rng.uniform(lo, hi - 30.0))
            lo, hi = self.station_range[lane]
            if not lo + 5.0 <= station <= hi - 40.0:
                continue
            s = float(self.map.lanes[lane].s_at_station(station))
            if not self._slot_free(lane, s, self.length[i]):
                continue
            self.lane[i], self.s[i], self.d[i], self.d_rate[i] = lane, s, 0.0, 0.0
            self.v[i] = self.speed_factor[i] * self.speed_limit[lane] * rng.uniform(0.8, 1.0)
            self.accel[i] = 0.0
            self.active[i] = True
            return
        self.active[i] = False

    def _slot_free(self, lane: int, s: float, length: float) -> bool:
        others = self.active & (self.lane == lane)
        gap = self.cfg.min_spawn_gap_m + length
        if np.any(np.abs(self.s[others] - s) < gap):
            return False
        if self.ego.lane >= 0:
            ego_lane = self.map.lanes[self.ego.lane]
            here = self.map.lanes[lane]
            if ego_lane.road == here.road:
                ego_station = float(ego_lane.station_at(self.ego.s))
                if abs(float(here.station_at(s)) - ego_station) < gap + 10.0:
                    return False
        return True

    # ------------------------------------------------------------------ dynamics
    def _agents(self) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """Lane, s, speed, length of all traffic plus the ego (last entry)."""
        lane = np.where(self.active, self.lane, -2)
        return (np.append(lane, self.ego.lane), np.append(self.s, self.ego.s),
                np.append(self.v, self.ego.speed), np.append(self.length, self.ego.length))

    def _leaders(self, lane: IntArray, s: FloatArray, q_lane: IntArray, q_s: FloatArray,
                 q_len: FloatArray, exclude: IntArray) -> tuple[FloatArray, FloatArray, IntArray]:
        """Gap [m], leader speed [m/s] and leader index for query points on ``q_lane``.

        Looks at the query lane and its first successor; lanes that end (merge lanes)
        act as a stopped leader at their end.
        """
        a_lane, a_s, a_v, a_len = lane, s, self._all_v, self._all_len
        same = a_lane[None, :] == q_lane[:, None]
        ahead = same & (a_s[None, :] > q_s[:, None])
        gap = np.where(ahead, a_s[None, :] - q_s[:, None], np.inf)
        succ = self.successor[np.maximum(q_lane, 0)]
        rest = self.lane_length[np.maximum(q_lane, 0)] - q_s
        on_succ = (a_lane[None, :] == succ[:, None]) & (succ[:, None] >= 0)
        gap = np.where(on_succ, rest[:, None] + a_s[None, :], gap)
        gap[np.arange(len(q_lane)), exclude] = np.inf
        idx = np.argmin(gap, axis=1)
        best = gap[np.arange(len(q_lane)), idx]
        found = np.isfinite(best)
        bumper = best - (q_len + a_len[idx]) / 2.0
        out_gap = np.where(found, bumper, FREE_ROAD_GAP_M)
        out_v = np.where(found, a_v[idx], 0.0)
        ends = self.lane_ends[np.maximum(q_lane, 0)]
        end_gap = rest - q_len / 2.0
        use_end = ends & (end_gap < out_gap)
        out_gap = np.where(use_end, end_gap, out_gap)
        out_v = np.where(use_end, 0.0, out_v)
        return out_gap, out_v, np.where(found & ~use_end, idx, -1)

    def _followers(self, lane: IntArray, s: FloatArray, q_lane: int, q_s: float,
                   exclude: int) -> int:
        behind = (lane == q_lane) & (s < q_s)
        behind[exclude] = False
        if not behind.any():
            return -1
        cand = np.flatnonzero(behind)
        return int(cand[np.argmax(s[cand])])

    def _idm(self, idx: IntArray, gap: FloatArray, lead_v: FloatArray, speed: FloatArray,
             lane: IntArray | None = None) -> FloatArray:
        """IDM for vehicles ``idx``; desired speed = factor x speed limit of ``lane``."""
        lanes = self.lane[idx] if lane is None else lane
        v_des = self.speed_factor[idx] * self.speed_limit[lanes]
        return idm_acceleration(speed, v_des, gap, lead_v, self.cfg.idm.max_accel_mps2,
                                self.comfort_decel[idx], self.headway[idx],
                                self.cfg.idm.min_gap_m, self.cfg.idm.delta)

    def step(self, ego: EgoSlot) -> None:
        """Advance all vehicles by one control period.

        Args:
            ego: Where the ego is now (traffic treats it as an ordinary vehicle).
        """
        self.ego = ego
        n = self.cfg.num_vehicles
        if n == 0:
            return
        lane, s, self._all_v, self._all_len = self._agents()
        idx = np.arange(n)
        gap, lead_v, _ = self._leaders(lane, s, self.lane, self.s, self.length, idx)
        acc = self._idm(idx, gap, lead_v, self.v)
        self._lane_changes(lane, s, acc)
        acc = np.where(self.active, acc, 0.0)
        # Semi-implicit Euler, speeds never negative.
        dt = self.dt
        v_new = np.maximum(self.v + acc * dt, 0.0)
        self.s = self.s + 0.5 * (self.v + v_new) * dt
        self.v, self.accel = v_new, acc
        self._move_lateral()
        self._advance_lanes(ego)
        self._update_poses()

    def _lane_changes(self, lane: IntArray, s: FloatArray, acc: FloatArray) -> None:
        cfg = self.cfg
        self.timer -= self.dt
        due = np.flatnonzero(self.active & self.can_change & (self.timer <= 0.0)
                             & (np.abs(self.d) < 0.5))
        self.timer[due] = cfg.decision_interval_s
        for i in due:
            cur = int(self.lane[i])
            station = float(self.map.lanes[cur].station_at(self.s[i]))
            mandatory = bool(self.lane_ends[cur])
            for target, bias in ((self.left[cur], 0.0), (self.right[cur],
                                                         cfg.mobil.keep_right_bias_mps2)):
                if target < 0 or (mandatory and target != self.left[cur]):
                    continue
                lo, hi = self.station_range[target]
                if not lo + 5.0 <= station <= hi - 30.0:
                    continue
                if self.map.lanes[target].kind == "merge":
                    continue  # never move onto an ending acceleration lane
                t_s = float(self.map.lanes[target].s_at_station(station))
                if self._try_change(int(i), lane, s, acc, int(target), t_s,
                                    bias + (3.0 if mandatory else 0.0)):
                    break

    def _try_change(self, i: int, lane: IntArray, s: FloatArray, acc: FloatArray,
                    target: int, t_s: float, bias: float) -> bool:
        one = np.array([i])
        q_lane, q_s, q_len = np.array([target]), np.array([t_s]), self.length[one]
        gap_new, v_new, _ = self._leaders(lane, s, q_lane, q_s, q_len, one)
        acc_new = self._idm(one, gap_new, v_new, self.v[one], q_lane)[0]
        # New follower: how hard it must brake behind us.
        nf = self._followers(lane, s, target, t_s, i)
        nf_now = nf_new = 0.0
        if nf >= 0 and nf < len(self.v):
            g_now, lv_now, _ = self._leaders(lane, s, np.array([target]), s[[nf]],
                                             self.length[[nf]], np.array([nf]))
            nf_now = float(self._idm(np.array([nf]), g_now, lv_now, self.v[[nf]])[0])
            gap = t_s - s[nf] - (self.length[nf] + self.length[i]) / 2.0
            nf_new = float(self._idm(np.array([nf]), np.array([gap]), self.v[[i]],
                                     self.v[[nf]])[0])
        elif nf >= 0:  # the ego follows: it must not be cut off dangerously
            gap = t_s - s[nf] - (self.ego.length + self.length[i]) / 2.0
            if gap < 5.0 or gap < (self.ego.speed - self.v[i]) * 2.0:
                return False
        ok = mobil_decision(acc[i], acc_new, nf_now, nf_new, 0.0, 0.0, self.politeness[i],
                            self.cfg.mobil, bias)
        if not bool(ok):
            return False
        old_lane = self.map.lanes[int(self.lane[i])]
        new_lane = self.map.lanes[target]
        # Keep the world position: the offset to the new centre line is the lane spacing.
        pos = old_lane.position(self.s[i], self.d[i])
        _, d = new_lane.project(pos)
        self.lane[i], self.s[i], self.d[i] = target, t_s, d
        self.d_rate[i] = -np.sign(d) * float(new_lane.width[0]) / self.cfg.lane_change_duration_s
        return True

    def _move_lateral(self) -> None:
        step = self.d_rate * self.dt
        done = np.abs(self.d) <= np.abs(step)
        self.d = np.where(done, 0.0, self.d + step)
        self.d_rate = np.where(done, 0.0, self.d_rate)

    def _advance_lanes(self, ego: EgoSlot) -> None:
        over = self.active & (self.s > self.lane_length[self.lane])
        for i in np.flatnonzero(over):
            nxt = self.successor[self.lane[i]]
            if nxt >= 0:
                self.s[i] -= self.lane_length[self.lane[i]]
                self.lane[i] = nxt
            else:
                self.active[i] = False
        if ego.lane < 0:
            return
        ego_station = float(self.map.lanes[ego.lane].station_at(ego.s))
        rel = self.stations() - ego_station
        for k in range(self.cfg.num_vehicles):
            if not self.active[k]:
                self._draw_driver(k)
                self._spawn(k, ego_station, "ahead" if self.rng.random() < 0.5 else "behind")
            elif rel[k] > self.cfg.window_ahead_m + 10.0:
                self._draw_driver(k)
                self._spawn(k, ego_station, "behind")
            elif rel[k] < -self.cfg.window_behind_m - 10.0:
                self._draw_driver(k)
                self._spawn(k, ego_station, "ahead")

    def _per_lane(self, fn_name: str, s: FloatArray, d: FloatArray | None = None
                  ) -> list[tuple[FloatArray, FloatArray]]:
        """Evaluate a Lane method for all active vehicles, one vectorised call per lane.

        Returns:
            (mask of the vehicles, values) pairs, one per occupied lane.
        """
        out: list[tuple[FloatArray, FloatArray]] = []
        for lane_idx in np.unique(self.lane[self.active]):
            sel = self.active & (self.lane == lane_idx)
            ln = self.map.lanes[int(lane_idx)]
            out.append((sel, getattr(ln, fn_name)(s[sel]) if d is None
                        else getattr(ln, fn_name)(s[sel], d[sel])))
        return out

    def stations(self) -> FloatArray:
        """Road station of every vehicle (NaN when inactive) [m]."""
        st = np.full(self.cfg.num_vehicles, np.nan)
        for sel, values in self._per_lane("station_at", self.s):
            st[sel] = values
        return st

    def _update_poses(self) -> None:
        c = self.client
        heading = np.zeros(self.cfg.num_vehicles)
        for sel, xy in self._per_lane("position", self.s, self.d):
            self.x[sel], self.y[sel] = xy[:, 0], xy[:, 1]
        for sel, h in self._per_lane("heading_at", self.s):
            heading[sel] = h
        self.yaw = heading + np.arctan2(self.d_rate, np.maximum(self.v, 1.0))
        half = 0.5 * self.yaw
        qz, qw = np.sin(half), np.cos(half)
        for i, body in enumerate(self.body_ids):
            if self.active[i]:
                p.resetBasePositionAndOrientation(body, (self.x[i], self.y[i], 0.0),
                                                  (0.0, 0.0, qz[i], qw[i]), physicsClientId=c)
            elif self._parked[i] is False:
                p.resetBasePositionAndOrientation(body, _PARKED, (0, 0, 0, 1), physicsClientId=c)
            self._parked[i] = not self.active[i]

    def boxes(self) -> FloatArray:
        """Active vehicles as rows ``[x, y, yaw, length, width, speed]`` (M, 6)."""
        a = self.active
        return np.column_stack([self.x[a], self.y[a], self.yaw[a], self.length[a],
                                self.width[a], self.v[a]])
