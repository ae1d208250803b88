"""Traffic on a lane map: IDM car-following, MOBIL lane changes, spawning around the ego.

Vehicles are kinematic: their state lives in numpy arrays in lane coordinates (lane,
arc length ``s``, lateral offset ``d``, speed) and is advanced with IDM/MOBIL once per
control step; each vehicle is a static box body in pybullet that is moved to its new
pose, so contacts with the dynamic ego are detected by the physics engine.

Shapes: every per-vehicle array has shape (N,) with N = ``TrafficConfig.num_vehicles``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
        window_ahead_m / window_behind_m: Region around the ego station where vehicles live
            on corridor maps (highways) [m].
        spawn_radius_m: Radius around the ego where vehicles live on network maps (urban) [m].
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
    spawn_radius_m: float = 150.0
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

    Vehicles live in a window around the ego: on ``"corridor"`` maps (the highway) a range
    of stations of the road ``main``; on ``"network"`` maps (urban grids) a radius. At the
    end of a lane each vehicle takes a successor drawn from the episode generator.

    Args:
        client: pybullet client id.
        road_map: Map the vehicles drive on.
        cfg: Traffic parameters.
        dt: Control period [s].
        layout: ``"corridor"`` or ``"network"``.
        tint: Maps each body colour (RGBA) to the one to draw; ``None`` draws them as they
            are. The EGL renderer uses it to match TinyRenderer's lighting
            (see :mod:`envs.sim.egl_shading`).
    """

    def __init__(self, client: int, road_map: RoadMap, cfg: TrafficConfig, dt: float,
                 layout: str = "corridor",
                 tint: Callable[[Sequence[float]], list[float]] | None = None) -> None:
        if layout not in ("corridor", "network"):
            raise ValueError(f"unknown traffic layout {layout!r}; valid: corridor, network")
        self.layout = layout
        self.tint = tint
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
        self.roads = [i for i, ln in enumerate(lanes) if ln.kind != "connector"
                      and ln.length > 30.0]
        self.lane_mid = np.array([ln.position(ln.length / 2.0) for ln in lanes])
        self.lane_radius = np.array([ln.length / 2.0 for ln in lanes])
        self.block_s = np.where(self.lane_ends, self.lane_length, np.inf)
        # Connectors that end in the same lane merge: each knows its single successor.
        self.merge_into = np.array([self.successor[i] if ln.kind == "connector" else -1
                                    for i, ln in enumerate(lanes)])
        self.active = np.zeros(n, dtype=bool)
        self.lane = np.zeros(n, dtype=np.int64)
        self.next_lane = np.full(n, -1, dtype=np.int64)
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
            if self.tint is not None:
                colors = [self.tint(rgba) for rgba in colors]
            vis = p.createVisualShapeArray(shapeTypes=[p.GEOM_BOX, p.GEOM_BOX], halfExtents=half,
                                           visualFramePositions=frames, rgbaColors=colors,
                                           physicsClientId=c)
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[length / 2, width / 2,
                                                                  height / 2],
                                         collisionFramePosition=[0, 0, height / 2],
                                         physicsClientId=c)
            body = p.createMultiBody(0, col, vis, basePosition=_PARKED,
                                     useMaximalCoordinates=True, physicsClientId=c)
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
        for i in range(cfg.num_vehicles):
            self._draw_driver(i)
            self._spawn(i, "any")
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

    def _ego_anchor(self) -> tuple[float, float, float]:
        """The ego's station on its road (corridor maps) and its position."""
        if self.ego.lane < 0:
            return float("nan"), float("nan"), float("nan")
        lane = self.map.lanes[self.ego.lane]
        x, y = lane.position(self.ego.s)
        return float(lane.station_at(self.ego.s)), float(x), float(y)

    def _spawn(self, i: int, region: str) -> None:
        """Place vehicle ``i`` in a free slot; ``region`` is "any", "ahead" or "behind"."""
        for _ in range(8):
            slot = (self._corridor_slot(region) if self.layout == "corridor"
                    else self._network_slot(region))
            if slot is None:
                continue
            lane, s = slot
            if not self._slot_free(lane, s, self.length[i]):
                continue
            self.lane[i], self.s[i], self.d[i], self.d_rate[i] = lane, s, 0.0, 0.0
            self.next_lane[i] = self._choose_next(lane)
            self.v[i] = (self.speed_factor[i] * self.speed_limit[lane]
                         * self.rng.uniform(0.8, 1.0))
            self.accel[i] = 0.0
            self.active[i] = True
            return
        self.active[i] = False

    def _corridor_slot(self, region: str) -> tuple[int, float] | None:
        cfg, rng = self.cfg, self.rng
        ego_station, _, _ = self._ego_anchor()
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
            return None
        return lane, float(self.map.lanes[lane].s_at_station(station))

    def _network_slot(self, region: str) -> tuple[int, float] | None:
        """A random point on a road lane within the spawn radius (its outer part when
        respawning), away from the ego."""
        rng = self.rng
        _, ex, ey = self._ego_anchor()
        radius = self.cfg.spawn_radius_m
        mid = self.lane_mid[self.roads]
        dist = np.hypot(mid[:, 0] - ex, mid[:, 1] - ey)
        reach = self.lane_radius[self.roads]
        ok = dist - reach < radius
        if not ok.any():
            return None
        lane = int(rng.choice(np.asarray(self.roads)[ok]))
        s = float(rng.uniform(5.0, max(self.lane_length[lane] - 15.0, 6.0)))
        x, y = self.map.lanes[lane].position(s)
        d = float(np.hypot(x - ex, y - ey))
        lo = 0.6 * radius if region != "any" else 20.0
        if not lo <= d <= radius:
            return None
        return lane, s

    def _choose_next(self, lane: int) -> int:
        """Draw the lane a vehicle takes after ``lane`` (-1 when the lane leads nowhere)."""
        succ = self.map.lanes[lane].successors
        if not succ:
            return -1
        return self.map.lane_index[succ[int(self.rng.integers(len(succ)))]]

    def _slot_free(self, lane: int, s: float, length: float) -> bool:
        others = self.active & (self.lane == lane)
        gap = self.cfg.min_spawn_gap_m + length
        if np.any(np.abs(self.s[others] - s) < gap):
            return False
        if self.ego.lane >= 0:
            _, ex, ey = self._ego_anchor()
            x, y = self.map.lanes[lane].position(s)
            if np.hypot(x - ex, y - ey) < gap + 10.0:
                return False
        return True

    # ------------------------------------------------------------------ dynamics
    def _agents(self) -> tuple[IntArray, FloatArray, FloatArray, FloatArray]:
        """Lane, s, speed, length of all traffic plus the ego (last entry)."""
        lane = np.where(self.active, self.lane, -2)
        return (np.append(lane, self.ego.lane), np.append(self.s, self.ego.s),
                np.append(self.v, self.ego.speed), np.append(self.length, self.ego.length))

    def _leaders(self, lane: IntArray, s: FloatArray, q_lane: IntArray, q_s: FloatArray,
                 q_len: FloatArray, exclude: IntArray, q_next: IntArray | None = None,
                 ) -> tuple[FloatArray, FloatArray, IntArray]:
        """Gap [m], leader speed [m/s] and leader index for query points on ``q_lane``.

        Looks at the query lane and the next lane (``q_next``, default the first
        successor). Stop points in ``self.block_s`` (ends of merge lanes, red lights,
        pedestrians on crossings) act as stopped leaders.
        """
        a_lane, a_s, a_v, a_len = lane, s, self._all_v, self._all_len
        same = a_lane[None, :] == q_lane[:, None]
        ahead = same & (a_s[None, :] > q_s[:, None])
        gap = np.where(ahead, a_s[None, :] - q_s[:, None], np.inf)
        succ = self.successor[np.maximum(q_lane, 0)] if q_next is None else q_next
        rest = self.lane_length[np.maximum(q_lane, 0)] - q_s
        on_succ = (a_lane[None, :] == succ[:, None]) & (succ[:, None] >= 0)
        gap = np.where(on_succ, rest[:, None] + a_s[None, :], gap)
        # Zipper rule where connectors merge: whoever is closer to the merge point leads.
        q_merge = self.merge_into[np.maximum(q_lane, 0)]
        a_merge = self.merge_into[np.maximum(a_lane, 0)]
        a_rest = self.lane_length[np.maximum(a_lane, 0)] - a_s
        merging = ((q_merge[:, None] >= 0) & (a_merge[None, :] == q_merge[:, None])
                   & (a_lane[None, :] != q_lane[:, None]) & (a_lane[None, :] >= 0)
                   & (a_rest[None, :] < rest[:, None]))
        gap = np.where(merging, np.minimum(gap, rest[:, None] - a_rest[None, :]), gap)
        gap[np.arange(len(q_lane)), exclude] = np.inf
        idx = np.argmin(gap, axis=1)
        best = gap[np.arange(len(q_lane)), idx]
        found = np.isfinite(best)
        bumper = best - (q_len + a_len[idx]) / 2.0
        out_gap = np.where(found, bumper, FREE_ROAD_GAP_M)
        out_v = np.where(found, a_v[idx], 0.0)
        block = self.block_s[np.maximum(q_lane, 0)]
        stop = np.where(block > q_s - 0.5, block - q_s, np.inf)
        nxt_block = np.where(succ >= 0, self.block_s[np.maximum(succ, 0)], np.inf)
        stop = np.minimum(stop, rest + nxt_block)
        stop_gap = stop - q_len / 2.0
        use_stop = stop_gap < out_gap
        out_gap = np.where(use_stop, np.maximum(stop_gap, 0.1), out_gap)
        out_v = np.where(use_stop, 0.0, out_v)
        return out_gap, out_v, np.where(found & ~use_stop, idx, -1)

    def _followers(self, lane: IntArray, s: FloatArray, q_lane: IntArray, q_s: FloatArray,
                   exclude: IntArray) -> IntArray:
        """Index of the nearest agent behind each query point on ``q_lane`` (-1: none)."""
        behind = (lane[None, :] == q_lane[:, None]) & (s[None, :] < q_s[:, None])
        behind[np.arange(len(q_lane)), exclude] = False
        masked = np.where(behind, s[None, :], -np.inf)
        idx = np.argmax(masked, axis=1)
        return np.where(np.isfinite(masked[np.arange(len(q_lane)), idx]), idx, -1)

    def _idm(self, idx: IntArray, gap: FloatArray, lead_v: FloatArray, speed: FloatArray,
             lane: IntArray | None = None) -> FloatArray:
        """IDM for vehicles ``idx``; desired speed = factor x speed limit of ``lane``."""
        lanes = self.lane[idx] if lane is None else lane
        v_des = self.speed_factor[idx] * self.speed_limit[lanes]
        return idm_acceleration(speed, v_des, gap, lead_v, self.cfg.idm.max_accel_mps2,
                                self.comfort_decel[idx], self.headway[idx],
                                self.cfg.idm.min_gap_m, self.cfg.idm.delta)

    def step(self, ego: EgoSlot, stops: FloatArray | None = None) -> None:
        """Advance all vehicles by one control period.

        Args:
            ego: Where the ego is now (traffic treats it as an ordinary vehicle).
            stops: Per lane index, the arc length where vehicles must stop this step
                (red lights, pedestrians; inf where free).
        """
        self.ego = ego
        n = self.cfg.num_vehicles
        if n == 0:
            return
        base = np.where(self.lane_ends, self.lane_length, np.inf)
        self.block_s = base if stops is None else np.minimum(base, stops)
        lane, s, self._all_v, self._all_len = self._agents()
        idx = np.arange(n)
        gap, lead_v, _ = self._leaders(lane, s, self.lane, self.s, self.length, idx,
                                       self.next_lane)
        acc = self._idm(idx, gap, lead_v, self.v)
        self._lane_changes(lane, s, acc, gap, lead_v)
        acc = np.where(self.active, acc, 0.0)
        # Semi-implicit Euler, speeds never negative.
        dt = self.dt
        v_new = np.maximum(self.v + acc * dt, 0.0)
        self.s = self.s + 0.5 * (self.v + v_new) * dt
        self.v, self.accel = v_new, acc
        self._move_lateral()
        self._advance_lanes(ego)
        self._update_poses()

    def _lane_candidates(self) -> tuple[IntArray, IntArray, FloatArray, FloatArray]:
        """(vehicle, target lane, arc length on target, incentive bias) of due decisions."""
        cfg = self.cfg
        self.timer -= self.dt
        due = np.flatnonzero(self.active & self.can_change & (self.timer <= 0.0)
                             & (np.abs(self.d) < 0.5))
        self.timer[due] = cfg.decision_interval_s
        rows: list[tuple[int, int, float, float]] = []
        if len(due) == 0:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0)
        stations = self.map.lane_values("station", self.lane[due], self.s[due])
        for i, station in zip(due, stations, strict=True):
            cur = int(self.lane[i])
            mandatory = bool(self.lane_ends[cur])
            options = [(int(self.left[cur]), 3.0 if mandatory else 0.0)]
            if not mandatory:
                options.append((int(self.right[cur]), cfg.mobil.keep_right_bias_mps2))
            for target, bias in options:
                lo, hi = self.station_range[max(target, 0)]
                if target < 0 or not lo + 5.0 <= station <= hi - 30.0 or self.lane_ends[target]:
                    continue  # no lane there, or an ending acceleration lane
                t_s = float(self.map.lanes[target].s_at_station(station))
                rows.append((int(i), target, t_s, bias))
        if not rows:
            return np.zeros(0, int), np.zeros(0, int), np.zeros(0), np.zeros(0)
        arr = np.array(rows)
        return arr[:, 0].astype(int), arr[:, 1].astype(int), arr[:, 2], arr[:, 3]

    def _lane_changes(self, lane: IntArray, s: FloatArray, acc: FloatArray, gap: FloatArray,
                      lead_v: FloatArray) -> None:
        """MOBIL for every vehicle whose decision is due, evaluated in one batch."""
        qi, q_lane, q_s, bias = self._lane_candidates()
        if len(qi) == 0:
            return
        n = self.cfg.num_vehicles
        # The candidate in the target lane, behind its new leader.
        g_new, v_lead_new, _ = self._leaders(lane, s, q_lane, q_s, self.length[qi], qi)
        acc_new = self._idm(qi, g_new, v_lead_new, self.v[qi], q_lane)
        # The new follower, now and with the candidate in front of it.
        nf = self._followers(lane, s, q_lane, q_s, qi)
        is_traffic = (nf >= 0) & (nf < n)
        f = np.where(is_traffic, nf, 0)
        f_gap = q_s - s[np.maximum(nf, 0)] - (self._all_len[np.maximum(nf, 0)]
                                              + self.length[qi]) / 2.0
        nf_now = np.where(is_traffic, acc[f], 0.0)
        nf_new = np.where(is_traffic, self._idm(f, f_gap, self.v[qi], self.v[f]), 0.0)
        # Never cut in tightly in front of the ego: it is not an IDM driver.
        ego_behind = nf == n
        ego_ok = ~ego_behind | ((f_gap > 5.0) & (f_gap > (self.ego.speed - self.v[qi]) * 2.0))
        # The old follower, now and once the candidate has left.
        of = self._followers(lane, s, self.lane[qi], self.s[qi], qi)
        of_traffic = (of >= 0) & (of < n)
        o = np.where(of_traffic, of, 0)
        o_gap_now = self.s[qi] - s[np.maximum(of, 0)] - (self._all_len[np.maximum(of, 0)]
                                                          + self.length[qi]) / 2.0
        o_gap_new = np.where(gap[qi] < FREE_ROAD_GAP_M, o_gap_now + gap[qi] + self.length[qi],
                             FREE_ROAD_GAP_M)
        of_now = np.where(of_traffic, acc[o], 0.0)
        of_new = np.where(of_traffic, self._idm(o, o_gap_new, lead_v[qi], self.v[o]), 0.0)
        ok = ego_ok & mobil_decision(acc[qi], acc_new, nf_now, nf_new, of_now, of_new,
                                     self.politeness[qi], self.cfg.mobil, bias)
        moved: set[int] = set()
        for k in np.flatnonzero(ok):
            i = int(qi[k])
            if i not in moved:
                moved.add(i)
                self._start_change(i, int(q_lane[k]), float(q_s[k]))

    def _start_change(self, i: int, target: int, t_s: float) -> None:
        cur = int(self.lane[i])
        widths = self.map.lane_values("width", np.array([cur, target]), np.array([self.s[i], t_s]))
        # Keep the world position: relative to the new centre line the vehicle sits one
        # lane spacing to the right (moving left) or to the left (moving right).
        side = -1.0 if target == self.left[cur] else 1.0
        d = self.d[i] + side * 0.5 * float(widths[0] + widths[1])
        self.lane[i], self.s[i], self.d[i] = target, t_s, d
        self.next_lane[i] = self._choose_next(target)
        self.d_rate[i] = -np.sign(d) * float(widths[1]) / self.cfg.lane_change_duration_s

    def _move_lateral(self) -> None:
        step = self.d_rate * self.dt
        done = np.abs(self.d) <= np.abs(step)
        self.d = np.where(done, 0.0, self.d + step)
        self.d_rate = np.where(done, 0.0, self.d_rate)

    def _advance_lanes(self, ego: EgoSlot) -> None:
        over = self.active & (self.s > self.lane_length[self.lane])
        for i in np.flatnonzero(over):
            nxt = int(self.next_lane[i])
            if nxt >= 0:
                self.s[i] -= self.lane_length[self.lane[i]]
                self.lane[i] = nxt
                self.next_lane[i] = self._choose_next(nxt)
            else:
                self.active[i] = False
        if ego.lane < 0:
            return
        ego_station, ex, ey = self._ego_anchor()
        if self.layout == "corridor":
            rel = self.stations() - ego_station
            behind = rel < -self.cfg.window_behind_m - 10.0
            ahead = rel > self.cfg.window_ahead_m + 10.0
        else:
            far = np.hypot(self.x - ex, self.y - ey) > self.cfg.spawn_radius_m + 10.0
            behind, ahead = far & self.active, np.zeros_like(far)
        for k in range(self.cfg.num_vehicles):
            if not self.active[k]:
                self._draw_driver(k)
                self._spawn(k, "ahead" if self.rng.random() < 0.5 else "behind")
            elif ahead[k]:
                self._draw_driver(k)
                self._spawn(k, "behind")
            elif behind[k]:
                self._draw_driver(k)
                self._spawn(k, "ahead")

    def stations(self) -> FloatArray:
        """Road station of every vehicle (NaN when inactive) [m]."""
        st = self.map.lane_values("station", self.lane, self.s)
        return np.where(self.active, st, np.nan)

    def _update_poses(self) -> None:
        c = self.client
        x, y, heading = self.map.poses(self.lane, self.s, self.d)
        self.x, self.y = x, y
        self.yaw = heading + np.arctan2(self.d_rate, np.maximum(self.v, 1.0))
        half = 0.5 * self.yaw
        qz, qw = np.sin(half), np.cos(half)
        for i, body in enumerate(self.body_ids):
            if self.active[i]:
                p.resetBasePositionAndOrientation(body, (x[i], y[i], 0.0),
                                                  (0.0, 0.0, qz[i], qw[i]), physicsClientId=c)
            elif self._parked[i] is False:
                p.resetBasePositionAndOrientation(body, _PARKED, (0, 0, 0, 1), physicsClientId=c)
            self._parked[i] = not self.active[i]

    def boxes(self) -> FloatArray:
        """Active vehicles as rows ``[x, y, yaw, length, width, speed]`` (M, 6)."""
        a = self.active
        return np.column_stack([self.x[a], self.y[a], self.yaw[a], self.length[a],
                                self.width[a], self.v[a]])
