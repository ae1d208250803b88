"""Pedestrians that cross roads at crosswalks, as kinematic bodies.

Each pedestrian belongs to one crosswalk and walks between its two kerb ends, waits,
and walks back. It starts across when the approach it crosses has a red light, or, with
probability ``jaywalk_prob`` per crossing, regardless of the signal. While a pedestrian
is on a crosswalk, the lanes it stands in are blocked for traffic just before the
crossing (vehicles yield); the ego is not told anything: it must see them.

Shapes: per-pedestrian arrays have shape (N,) with N = ``num_pedestrians``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from common.config import require
from envs.maps.road_map import Crosswalk, RoadMap
from envs.sim.scene import SemanticClass

FloatArray = NDArray[Any]
_PARKED = (0.0, 0.0, -120.0)
#: Pedestrian body (depth, width, height) [m].
_SIZE = (0.35, 0.5, 1.75)
_CLOTHES = np.array([[0.2, 0.25, 0.6], [0.6, 0.15, 0.15], [0.15, 0.15, 0.15], [0.85, 0.8, 0.3],
                     [0.3, 0.5, 0.3], [0.9, 0.9, 0.9]])


@dataclass(frozen=True)
class PedestrianConfig:
    """Pedestrian behaviour.

    Attributes:
        num_pedestrians: Pedestrians placed on crosswalks nearest the ego's start.
        speed_mps: Range of walking speeds [m/s].
        wait_s: Range of waiting times at the kerb before crossing [s].
        jaywalk_prob: Probability that a crossing starts against the signal (and without
            looking for vehicles).
        step_out_clearance_m: Others wait while a vehicle is this close to the crossing [m].
    """

    num_pedestrians: int = 10
    speed_mps: tuple[float, float] = (1.0, 1.6)
    wait_s: tuple[float, float] = (1.0, 8.0)
    jaywalk_prob: float = 0.0
    step_out_clearance_m: float = 12.0

    def __post_init__(self) -> None:
        require(0 <= self.num_pedestrians <= 200, "pedestrians.num_pedestrians must be in "
                "[0, 200]")
        require(0 < self.speed_mps[0] <= self.speed_mps[1], "pedestrians.speed_mps must be an "
                "increasing range of positive speeds")
        require(0.0 <= self.jaywalk_prob <= 1.0, "pedestrians.jaywalk_prob must be in [0, 1]")


def crossing_lanes(road_map: RoadMap, crosswalk: Crosswalk) -> list[tuple[int, float, float]]:
    """Lanes crossing a crosswalk: (lane index, arc length on the lane, position 0-1 along
    the crosswalk from ``start`` to ``end``) where the lane centre meets the crossing."""
    a, b = np.asarray(crosswalk.start), np.asarray(crosswalk.end)
    best: dict[int, tuple[float, float, float]] = {}
    for t in np.linspace(0.0, 1.0, 41):
        lp = road_map.locate(a + t * (b - a))
        if lp is None or road_map.lane(lp.lane).kind == "connector":
            continue
        k = road_map.lane_index[lp.lane]
        if k not in best or abs(lp.d) < best[k][0]:
            best[k] = (abs(lp.d), lp.s, float(t))
    return [(k, s, t) for k, (_, s, t) in sorted(best.items())]


class Pedestrians:
    """Pedestrians on the crosswalks near the ego.

    Args:
        client: pybullet client id.
        road_map: Map with crosswalks.
        cfg: Behaviour.
        dt: Control period [s].
        tint: Maps each body colour (RGBA) to the one to draw; ``None`` draws them as they
            are (see :mod:`envs.sim.egl_shading`).
    """

    def __init__(self, client: int, road_map: RoadMap, cfg: PedestrianConfig,
                 dt: float, tint: Callable[[Sequence[float]], list[float]] | None = None,
                 ) -> None:
        self.client = client
        self.tint = tint
        self.map = road_map
        self.cfg = cfg
        self.dt = dt
        cache = road_map.__dict__.setdefault("_crossing_cache", {})
        self.crossings = []
        for cw in road_map.crosswalks:
            if cw.id not in cache:
                cache[cw.id] = crossing_lanes(road_map, cw)
            self.crossings.append(cache[cw.id])
        # The approach lanes whose signals hold traffic back from each crossing: same
        # junction, same road as the lanes the crossing spans.
        self.guarding: list[list[int]] = []
        for cw, lanes in zip(road_map.crosswalks, self.crossings, strict=True):
            roads = {road_map.lanes[k].road for k, _, _ in lanes}
            self.guarding.append([road_map.lane_index[sig.lane] for sig in road_map.signals
                                  if sig.junction == cw.junction
                                  and road_map.lane(sig.lane).road in roads])
        self.cw_start = np.array([cw.start for cw in road_map.crosswalks]).reshape(-1, 2)
        self.cw_end = np.array([cw.end for cw in road_map.crosswalks]).reshape(-1, 2)
        self.cw_len = np.linalg.norm(self.cw_end - self.cw_start, axis=1)
        n = cfg.num_pedestrians if len(road_map.crosswalks) else 0
        self.n = n
        self.crosswalk = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n)  # position along the crosswalk, 0 at start, 1 at end
        self.direction = np.ones(n)
        self.speed = np.zeros(n)
        self.walking = np.zeros(n, dtype=bool)
        self.wait = np.zeros(n)
        self.lateral = np.zeros(n)
        self.x = np.zeros(n)
        self.y = np.zeros(n)
        self.body_ids: list[int] = []

    @property
    def body_class(self) -> dict[int, SemanticClass]:
        """Semantic class of every pedestrian body."""
        return dict.fromkeys(self.body_ids, SemanticClass.PEDESTRIAN)

    def reset(self, rng: np.random.Generator, x: float, y: float) -> None:
        """Create bodies and place pedestrians at the crosswalks nearest (x, y)."""
        self.rng = rng
        if self.n == 0:
            return
        centre = (self.cw_start + self.cw_end) / 2.0
        order = np.argsort(np.hypot(centre[:, 0] - x, centre[:, 1] - y), kind="stable")
        near = order[: max(4, min(len(order), self.n))]
        c = self.client
        for i in range(self.n):
            self.crosswalk[i] = int(rng.choice(near))
            self.t[i] = float(rng.choice([0.0, 1.0]))
            self.direction[i] = 1.0 if self.t[i] == 0.0 else -1.0
            self.speed[i] = rng.uniform(*self.cfg.speed_mps)
            self.wait[i] = rng.uniform(*self.cfg.wait_s)
            self.lateral[i] = rng.uniform(-1.0, 1.0)
            colour = [*_CLOTHES[rng.integers(len(_CLOTHES))].tolist(), 1.0]
            if self.tint is not None:
                colour = self.tint(colour)
            vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[h / 2 for h in _SIZE],
                                      rgbaColor=colour, physicsClientId=c)
            col = p.createCollisionShape(p.GEOM_BOX, halfExtents=[h / 2 for h in _SIZE],
                                         physicsClientId=c)
            self.body_ids.append(int(p.createMultiBody(0, col, vis, basePosition=_PARKED,
                                                       useMaximalCoordinates=True,
                                                       physicsClientId=c)))
        self._update_poses()

    def step(self, red_lanes: NDArray[Any], vehicles_xy: NDArray[Any] | None = None) -> None:
        """Advance one control period.

        Args:
            red_lanes: Boolean per lane index: the lane's signal is red (vehicles held).
            vehicles_xy: Positions (M, 2) of vehicles (ego included) [m]; a pedestrian does
                not step out while one is within ``step_out_clearance_m`` of the crossing.
        """
        if self.n == 0:
            return
        waiting = ~self.walking
        self.wait = np.where(waiting, self.wait - self.dt, self.wait)
        for i in np.flatnonzero(waiting & (self.wait <= 0.0)):
            held = all(red_lanes[k] for k in self.guarding[self.crosswalk[i]])
            clear = vehicles_xy is None or self._clear(int(self.crosswalk[i]), vehicles_xy)
            if (held and clear) or self.rng.random() < self.cfg.jaywalk_prob:
                self.walking[i] = True
            else:
                self.wait[i] = 1.0  # look again in a second
        length = np.maximum(self.cw_len[self.crosswalk], 1e-3)
        self.t = np.where(self.walking, self.t + self.direction * self.speed * self.dt / length,
                          self.t)
        arrived = self.walking & ((self.t >= 1.0) | (self.t <= 0.0))
        self.t = np.clip(self.t, 0.0, 1.0)
        for i in np.flatnonzero(arrived):
            self.walking[i] = False
            self.direction[i] = -self.direction[i]
            self.wait[i] = self.rng.uniform(*self.cfg.wait_s)
        self._update_poses()

    def _clear(self, k: int, vehicles_xy: NDArray[Any]) -> bool:
        """No vehicle within the clearance of crosswalk ``k``'s centre line."""
        a, b = self.cw_start[k], self.cw_end[k]
        ab = b - a
        t = np.clip(((vehicles_xy - a) @ ab) / max(float(ab @ ab), 1e-9), 0.0, 1.0)
        dist = np.linalg.norm(vehicles_xy - (a + t[:, None] * ab), axis=1)
        return bool(np.all(dist > self.cfg.step_out_clearance_m))

    def blocked(self, num_lanes: int, margin_m: float = 1.0) -> NDArray[Any]:
        """For every lane index, the arc length where traffic must stop (inf: free) [m]."""
        block = np.full(num_lanes, np.inf)
        for i in np.flatnonzero(self.walking):
            k = int(self.crosswalk[i])
            for lane, s, t_lane in self.crossings[k]:
                half = float(self.map.lanes[lane].width_at(s)) / 2.0
                if abs(self.t[i] - t_lane) * self.cw_len[k] < half + margin_m:
                    block[lane] = min(block[lane], s - 2.5)
        return block

    def _update_poses(self) -> None:
        c = self.client
        k = self.crosswalk
        along = self.cw_end[k] - self.cw_start[k]
        unit = along / np.maximum(np.linalg.norm(along, axis=1, keepdims=True), 1e-9)
        normal = np.stack([-unit[:, 1], unit[:, 0]], axis=1)
        pos = self.cw_start[k] + along * self.t[:, None] + normal * self.lateral[:, None]
        self.x, self.y = pos[:, 0], pos[:, 1]
        yaw = np.arctan2(unit[:, 1] * self.direction, unit[:, 0] * self.direction)
        for i, body in enumerate(self.body_ids):
            half = 0.5 * yaw[i]
            p.resetBasePositionAndOrientation(body, (self.x[i], self.y[i], _SIZE[2] / 2),
                                              (0.0, 0.0, np.sin(half), np.cos(half)),
                                              physicsClientId=c)
