"""Map data: lanes as centre-line polylines with widths, the lane graph, and queries.

A map is plain data built without pybullet. Each :class:`Lane` is a polyline sampled
in its direction of travel; lanes of one road share that road's reference-line
*stations* (``Lane.station``) so that a position can be carried across to a
neighbouring lane. :class:`RoadMap` holds the lanes, the graph (successors,
predecessors, left/right neighbours in the direction of travel) and spatial queries
backed by a uniform grid over all lane segments.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import NDArray

from envs.maps.geometry import FloatArray, arc_length, polyline_headings, project_to_polyline

IntArray = NDArray[Any]


class Marking(enum.IntEnum):
    """Lane-boundary marking type."""

    NONE = 0
    DASHED = 1
    SOLID = 2


class RouteCommand(enum.IntEnum):
    """CARLA-style high-level route command (one-hot in ``measurements``)."""

    LANE_FOLLOW = 0
    LEFT = 1
    RIGHT = 2
    STRAIGHT = 3
    CHANGE_LANE_LEFT = 4
    CHANGE_LANE_RIGHT = 5


@dataclass(eq=False)
class Lane:
    """One lane, sampled in its direction of travel.

    Attributes:
        id: Unique name, e.g. ``"main/f0"``.
        road: Name of the road the lane belongs to.
        centre: Centre-line points (N, 2) [m].
        width: Lane width at each point (N,) [m].
        station: Reference-line station of each point on the lane's road (N,) [m].
        speed_limit_mps: Legal speed [m/s].
        left_marking / right_marking: Boundary markings (left/right in the direction of travel).
        kind: ``"driving"``, ``"ramp"``, ``"merge"`` (an acceleration lane that ends) or
            ``"connector"`` (a path through a junction).
        turn: For connectors: ``"left"``, ``"right"`` or ``"straight"``.
        junction: For connectors: the id of their junction.
        successors / predecessors / left / right: Lane-graph links by lane id.
    """

    id: str
    road: str
    centre: FloatArray
    width: FloatArray
    station: FloatArray
    speed_limit_mps: float
    left_marking: Marking = Marking.DASHED
    right_marking: Marking = Marking.DASHED
    kind: str = "driving"
    turn: str | None = None
    junction: str | None = None
    successors: list[str] = field(default_factory=list)
    predecessors: list[str] = field(default_factory=list)
    left: str | None = None
    right: str | None = None
    s: FloatArray = field(init=False)
    heading: FloatArray = field(init=False)

    def __post_init__(self) -> None:
        self.centre = np.ascontiguousarray(self.centre, dtype=np.float64)
        self.width = np.asarray(self.width, dtype=np.float64)
        self.station = np.asarray(self.station, dtype=np.float64)
        self.s = arc_length(self.centre)
        self.heading = np.unwrap(polyline_headings(self.centre))

    @property
    def length(self) -> float:
        """Lane length along its centre line [m]."""
        return float(self.s[-1])

    def position(self, s: FloatArray | float, d: FloatArray | float = 0.0) -> FloatArray:
        """World points at arc length ``s`` and lateral offset ``d`` (left positive) [m]."""
        s_arr = np.asarray(s, dtype=np.float64)
        x = np.interp(s_arr, self.s, self.centre[:, 0])
        y = np.interp(s_arr, self.s, self.centre[:, 1])
        h = np.interp(s_arr, self.s, self.heading)
        d_arr = np.asarray(d, dtype=np.float64)
        return np.stack([x - np.sin(h) * d_arr, y + np.cos(h) * d_arr], axis=-1)

    def heading_at(self, s: FloatArray | float) -> FloatArray:
        """Heading of the centre line at ``s`` [rad] (unwrapped along the lane)."""
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self.heading)

    def width_at(self, s: FloatArray | float) -> FloatArray:
        """Lane width at ``s`` [m]."""
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self.width)

    def station_at(self, s: FloatArray | float) -> FloatArray:
        """Road station of the lane point at ``s`` [m]."""
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self.station)

    def s_at_station(self, station: FloatArray | float) -> FloatArray:
        """Arc length on this lane of the given road station [m] (stations may decrease)."""
        st = self.station
        if st[-1] < st[0]:
            return np.interp(-np.asarray(station, dtype=np.float64), -st, self.s)
        return np.interp(np.asarray(station, dtype=np.float64), st, self.s)

    def project(self, point: FloatArray) -> tuple[float, float]:
        """Arc length and signed lateral offset of ``point`` relative to this lane [m]."""
        p = project_to_polyline(self.centre, self.s, np.asarray(point, dtype=np.float64))
        return p.s, p.d


@dataclass(frozen=True)
class StaticObject:
    """A static roadside object: a box-shaped collider with a visual kind.

    Attributes:
        kind: ``"tree"``, ``"pole"``, ``"sign"``, ``"building"`` or ``"parked_car"``.
        x, y: Centre of the footprint [m].
        yaw: Orientation [rad].
        size: Length, width, height [m].
    """

    kind: str
    x: float
    y: float
    yaw: float
    size: tuple[float, float, float]


@dataclass(frozen=True)
class Signal:
    """A traffic signal controlling one approach lane at its stop line.

    The phase cycle is ``green_s`` + ``amber_s`` + ``red_s`` long; the light is green
    from ``offset_s`` (mod cycle) for ``green_s``, then amber, then red.

    Attributes:
        id: Unique name.
        junction: Junction id.
        lane: The approach lane it controls (its stop line is at the lane's end).
        stop_line: Stop-line end points (2, 2) [m].
        head_xy: Where the signal head stands [m].
        head_yaw: Direction the signal faces (towards approaching traffic) [rad].
        green_s / amber_s / red_s: Phase durations [s].
        offset_s: Start of green within the cycle [s].
    """

    id: str
    junction: str
    lane: str
    stop_line: FloatArray
    head_xy: tuple[float, float]
    head_yaw: float
    green_s: float
    amber_s: float
    red_s: float
    offset_s: float

    @property
    def cycle_s(self) -> float:
        """Length of the phase cycle [s]."""
        return self.green_s + self.amber_s + self.red_s

    def state(self, t: float) -> int:
        """Signal state at time ``t`` [s]: 0 green, 1 amber, 2 red."""
        phase = (t - self.offset_s) % self.cycle_s
        if phase < self.green_s:
            return 0
        return 1 if phase < self.green_s + self.amber_s else 2


@dataclass(frozen=True)
class Crosswalk:
    """A pedestrian crossing: a quadrilateral (4, 2) across a road, near a junction [m].

    ``start`` and ``end`` are the kerb-side centre points pedestrians walk between.
    """

    id: str
    junction: str
    polygon: FloatArray
    start: tuple[float, float]
    end: tuple[float, float]


@dataclass(frozen=True)
class Junction:
    """An intersection: its area (polygon (K, 2)) [m] and the connector lanes inside."""

    id: str
    polygon: FloatArray
    connectors: tuple[str, ...]


@dataclass(frozen=True)
class LanePoint:
    """A point located on the map: lane, arc length, lateral offset and lane heading."""

    lane: str
    s: float
    d: float
    heading: float


class RoadMap:
    """Lanes, the lane graph and spatial queries.

    Args:
        lanes: All lanes; their graph links must name lanes in this list.
        name: Human-readable map name (generator and seed).
        barriers: Polylines (M, 2) of crash barriers / kerbs along the road [m].
        objects: Static roadside objects.
        shoulders: Paved shoulder width on the (left, right) of outermost lanes [m].
        junctions: Intersections (urban maps).
        signals: Traffic signals, one per controlled approach lane.
        crosswalks: Pedestrian crossings.
        cell_m: Grid cell size of the spatial index [m].
    """

    def __init__(self, lanes: Sequence[Lane], name: str = "map",
                 barriers: Sequence[FloatArray] = (), objects: Sequence[StaticObject] = (),
                 shoulders: tuple[float, float] = (0.0, 0.0),
                 junctions: Sequence[Junction] = (), signals: Sequence[Signal] = (),
                 crosswalks: Sequence[Crosswalk] = (), cell_m: float = 20.0) -> None:
        self.name = name
        self.barriers = [np.asarray(b, dtype=np.float64) for b in barriers]
        self.objects = list(objects)
        self.shoulders = shoulders
        self.junctions = list(junctions)
        self.signals = list(signals)
        self.crosswalks = list(crosswalks)
        self.lanes: list[Lane] = list(lanes)
        self.lane_index: dict[str, int] = {ln.id: i for i, ln in enumerate(self.lanes)}
        if len(self.lane_index) != len(self.lanes):
            raise ValueError("lane ids must be unique")
        for ln in self.lanes:
            for other in [*ln.successors, *ln.predecessors, ln.left, ln.right]:
                if other is not None and other not in self.lane_index:
                    raise ValueError(f"lane {ln.id} links to unknown lane {other}")
        self.cell_m = cell_m
        self._build_grid()
        self._build_table()

    def lane(self, lane_id: str) -> Lane:
        """The lane with this id."""
        return self.lanes[self.lane_index[lane_id]]

    def _build_grid(self) -> None:
        # All lane segments in flat arrays; every segment is registered in each grid cell
        # its bounding box (plus half a lane width) touches, so a query examines only
        # nearby segments, in one vectorised pass.
        a = np.concatenate([ln.centre[:-1] for ln in self.lanes])
        b = np.concatenate([ln.centre[1:] for ln in self.lanes])
        self._seg_a, self._seg_ab = a, b - a
        self._seg_lane = np.concatenate(
            [np.full(len(ln.centre) - 1, i) for i, ln in enumerate(self.lanes)])
        self._seg_s0 = np.concatenate([ln.s[:-1] for ln in self.lanes])
        self._seg_len = np.linalg.norm(self._seg_ab, axis=1)
        self._seg_half = np.concatenate([ln.width[:-1] / 2.0 for ln in self.lanes])
        self._seg_heading = np.arctan2(self._seg_ab[:, 1], self._seg_ab[:, 0])
        pts = np.concatenate([ln.centre for ln in self.lanes])
        self.bounds = (pts.min(axis=0), pts.max(axis=0))
        pad = self._seg_half[:, None] + 1.0
        lo = np.floor((np.minimum(a, b) - pad) / self.cell_m).astype(int)
        hi = np.floor((np.maximum(a, b) + pad) / self.cell_m).astype(int)
        # Every (segment, cell) pair of each segment's cell rectangle, in segment order;
        # a stable sort by cell then keeps each cell's segments in ascending order.
        nx, ny = hi[:, 0] - lo[:, 0] + 1, hi[:, 1] - lo[:, 1] + 1
        per_seg = nx * ny
        seg = np.repeat(np.arange(len(a), dtype=np.int64), per_seg)
        k = np.arange(per_seg.sum()) - np.repeat(np.cumsum(per_seg) - per_seg, per_seg)
        cx = lo[seg, 0] + k // ny[seg]
        cy = lo[seg, 1] + k % ny[seg]
        order = np.lexsort((cy, cx))
        seg, cx, cy = seg[order], cx[order], cy[order]
        starts = np.flatnonzero(np.r_[True, (cx[1:] != cx[:-1]) | (cy[1:] != cy[:-1])])
        ends = np.r_[starts[1:], len(seg)]
        self._grid = {(int(cx[i]), int(cy[i])): seg[i:j]
                      for i, j in zip(starts.tolist(), ends.tolist(), strict=True)}

    def _build_table(self) -> None:
        # All lanes laid end to end on one axis (with a gap between lanes), so that one
        # np.interp call evaluates any number of (lane, s) queries on different lanes.
        gap = 1.0e3
        starts = np.cumsum([0.0] + [ln.length + gap for ln in self.lanes[:-1]])
        self.lane_start = starts
        self.lane_length = np.array([ln.length for ln in self.lanes])
        self._tab_s = np.concatenate([st + ln.s for st, ln in zip(starts, self.lanes, strict=True)])
        self._tab = {
            "x": np.concatenate([ln.centre[:, 0] for ln in self.lanes]),
            "y": np.concatenate([ln.centre[:, 1] for ln in self.lanes]),
            "heading": np.concatenate([ln.heading for ln in self.lanes]),
            "station": np.concatenate([ln.station for ln in self.lanes]),
            "width": np.concatenate([ln.width for ln in self.lanes]),
        }

    def lane_values(self, name: str, lane: IntArray, s: FloatArray) -> FloatArray:
        """Interpolate a lane attribute for many (lane index, arc length) pairs at once.

        Args:
            name: ``"x"``, ``"y"``, ``"heading"``, ``"station"`` or ``"width"``.
            lane: Lane indices (N,).
            s: Arc lengths (N,) [m]; clamped to each lane's extent.
        """
        g = self.lane_start[lane] + np.clip(s, 0.0, self.lane_length[lane])
        return np.interp(g, self._tab_s, self._tab[name])

    def poses(self, lane: IntArray, s: FloatArray, d: FloatArray) -> tuple[FloatArray, ...]:
        """World x, y [m] and lane heading [rad] of many (lane, s, lateral offset d) points."""
        g = self.lane_start[lane] + np.clip(s, 0.0, self.lane_length[lane])
        h = np.interp(g, self._tab_s, self._tab["heading"])
        x = np.interp(g, self._tab_s, self._tab["x"]) - np.sin(h) * d
        y = np.interp(g, self._tab_s, self._tab["y"]) + np.cos(h) * d
        return x, y, h

    def near_lane(self, points: FloatArray) -> np.ndarray:
        """Whether :meth:`locate` finds a lane for each point, for many points at once.

        Args:
            points: World points (N, 2) [m].

        Returns:
            Boolean array (N,): True where some lane segment lies within twice its half
            width plus 0.5 m (the test :meth:`locate` applies).
        """
        pts = np.asarray(points, dtype=np.float64).reshape(-1, 2)
        cells = np.floor(pts / self.cell_m).astype(int)
        uniq, which = np.unique(cells, axis=0, return_inverse=True)
        which = which.reshape(-1)
        empty = np.zeros(0, dtype=np.int64)
        per_cell = [self._grid.get((cx, cy), empty) for cx, cy in uniq.tolist()]
        counts = np.array([len(c) for c in per_cell], dtype=np.int64)
        if counts.sum() == 0:
            return np.zeros(len(pts), dtype=bool)
        flat = np.concatenate(per_cell)
        offsets = np.r_[0, np.cumsum(counts)[:-1]]
        # Every (point, candidate segment) pair of the points' grid cells, in one pass.
        rep = counts[which]
        point = np.repeat(np.arange(len(pts)), rep)
        first = np.r_[0, np.cumsum(rep)[:-1]]
        seg = flat[np.arange(rep.sum()) - np.repeat(first, rep) + np.repeat(offsets[which], rep)]
        a, ab, length = self._seg_a[seg], self._seg_ab[seg], self._seg_len[seg]
        apx, apy = pts[point, 0] - a[:, 0], pts[point, 1] - a[:, 1]
        t = np.clip((apx * ab[:, 0] + apy * ab[:, 1]) / np.maximum(length**2, 1e-12), 0.0, 1.0)
        dist = np.hypot(apx - ab[:, 0] * t, apy - ab[:, 1] * t)
        ok = dist <= 2.0 * self._seg_half[seg] + 0.5
        return np.bincount(point, weights=ok, minlength=len(pts)) > 0

    def locate(self, point: FloatArray, heading: float | None = None) -> LanePoint | None:
        """Find the lane containing ``point`` (or the nearest one within 1 lane width).

        Where lanes overlap (merges), the lane whose direction best matches ``heading``
        wins, then the smaller lateral offset relative to the lane width.

        Args:
            point: World point (2,) [m].
            heading: Optional travel heading [rad] used to break ties.

        Returns:
            The located point, or ``None`` when no lane is near.
        """
        px, py = float(point[0]), float(point[1])
        cands = self._grid.get((int(np.floor(px / self.cell_m)), int(np.floor(py / self.cell_m))))
        if cands is None:
            return None
        a = self._seg_a[cands]
        ab = self._seg_ab[cands]
        length = self._seg_len[cands]
        apx, apy = px - a[:, 0], py - a[:, 1]
        t = np.clip((apx * ab[:, 0] + apy * ab[:, 1]) / np.maximum(length**2, 1e-12), 0.0, 1.0)
        cx, cy = apx - ab[:, 0] * t, apy - ab[:, 1] * t
        dist = np.hypot(cx, cy)
        half = self._seg_half[cands]
        ok = dist <= 2.0 * half + 0.5
        if not ok.any():
            return None
        cost = dist / half + np.where(dist <= half, 0.0, 10.0)
        if heading is not None:
            cost = cost + 5.0 * (1.0 - np.cos(heading - self._seg_heading[cands]))
        cost = np.where(ok, cost, np.inf)
        k = int(np.argmin(cost))
        seg = int(cands[k])
        cross = ab[k, 0] * apy[k] - ab[k, 1] * apx[k]
        lane = self.lanes[int(self._seg_lane[seg])]
        s = float(self._seg_s0[seg] + t[k] * length[k])
        return LanePoint(lane.id, s, float(dist[k]) if cross >= 0 else -float(dist[k]),
                         float(lane.heading_at(s)))
