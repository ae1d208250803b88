"""Reference paths: smooth paths along lanes with lateral-offset transitions.

A lane change (or any change of lateral offset) is a quintic transition of the offset
``d(s)`` from ``d0`` to ``d1`` over a length ``L``: it starts and ends with zero lateral
slope and zero lateral curvature, so the path's heading and curvature are continuous.
The path is sampled as a polyline with its arc length, heading and curvature.

Conventions: world frame [m], ``d`` positive to the left of the lane direction [m],
headings [rad], curvature [1/m] positive for left turns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from envs.maps.road_map import Lane, RoadMap
from envs.maps.route import Route

FloatArray = NDArray[np.float64]


# Rows: d(1), d'(1), d''(1) of the coefficients of u^3, u^4, u^5 (u in [0, 1]).
_END_CONDITIONS = np.array([[1.0, 1.0, 1.0], [3.0, 4.0, 5.0], [6.0, 12.0, 20.0]])


def quintic_offset(s: FloatArray | float, d0: float, d1: float, length_m: float,
                   slope0: float = 0.0) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Lateral offset of a quintic transition and its first two derivatives in ``s``.

    ``d(u) = d0 + a1 u + a3 u^3 + a4 u^4 + a5 u^5`` with ``u = s / L`` clipped to [0, 1],
    ``a1 = slope0 L`` and ``a3..a5`` chosen so that the path ends at ``d1`` with zero
    slope and zero curvature; it starts with slope ``slope0`` and zero curvature. With
    ``slope0 = 0`` this is the minimum-jerk profile
    ``d0 + (d1 - d0) (10 u^3 - 15 u^4 + 6 u^5)``. Beyond ``L`` the offset stays ``d1``.

    Args:
        s: Distance along the base line from the start of the transition [m].
        d0: Offset at the start [m].
        d1: Offset at the end and beyond [m].
        length_m: Transition length ``L`` [m] (> 0).
        slope0: Lateral slope ``dd/ds`` at the start (tangent of the heading error) [-].

    Returns:
        ``(d, dd/ds, d^2d/ds^2)`` at ``s`` [m, -, 1/m].
    """
    if length_m <= 0:
        raise ValueError(f"length_m must be positive, got {length_m}")
    s_arr = np.asarray(s, dtype=np.float64)
    u = np.clip(s_arr / length_m, 0.0, 1.0)
    inside = (s_arr >= 0.0) & (s_arr < length_m)
    a1 = slope0 * length_m
    a3, a4, a5 = np.linalg.solve(_END_CONDITIONS, [d1 - d0 - a1, -a1, 0.0])
    d = d0 + a1 * u + a3 * u**3 + a4 * u**4 + a5 * u**5
    d_u = a1 + 3 * a3 * u**2 + 4 * a4 * u**3 + 5 * a5 * u**4
    d_uu = 6 * a3 * u + 12 * a4 * u**2 + 20 * a5 * u**3
    return d, np.where(inside, d_u / length_m, 0.0), np.where(inside, d_uu / length_m**2, 0.0)


@dataclass(frozen=True)
class ReferencePath:
    """A sampled path.

    Attributes:
        xy: Points (N, 2) [m].
        s: Arc length at each point (N,) [m], starting at 0.
        heading: Tangent direction (N,) [rad], unwrapped.
        curvature: Signed curvature (N,) [1/m].
    """

    xy: FloatArray
    s: FloatArray
    heading: FloatArray
    curvature: FloatArray

    @classmethod
    def from_points(cls, xy: FloatArray) -> ReferencePath:
        """Arc length, heading and curvature of a polyline (at least 3 distinct points)."""
        pts = np.asarray(xy, dtype=np.float64)
        seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
        keep = np.concatenate([[True], seg > 1e-9])  # drop repeated points
        pts = pts[keep]
        if len(pts) < 3:
            raise ValueError("a reference path needs at least 3 distinct points")
        s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        # Derivatives in arc length (non-uniform spacing handled by np.gradient).
        dx, dy = np.gradient(pts[:, 0], s), np.gradient(pts[:, 1], s)
        ddx, ddy = np.gradient(dx, s), np.gradient(dy, s)
        curvature = (dx * ddy - dy * ddx) / np.maximum(dx * dx + dy * dy, 1e-12) ** 1.5
        heading = np.unwrap(np.arctan2(dy, dx))
        return cls(pts, s, heading, curvature)

    @property
    def length(self) -> float:
        """Path length [m]."""
        return float(self.s[-1])

    def position(self, s: FloatArray | float) -> FloatArray:
        """Points at arc length ``s`` (clamped to the path) [m]."""
        s_arr = np.clip(np.asarray(s, dtype=np.float64), 0.0, self.length)
        return np.stack([np.interp(s_arr, self.s, self.xy[:, 0]),
                         np.interp(s_arr, self.s, self.xy[:, 1])], axis=-1)

    def curvature_at(self, s: FloatArray | float) -> FloatArray:
        """Curvature at arc length ``s`` [1/m]."""
        return np.interp(np.asarray(s, dtype=np.float64), self.s, self.curvature)

    def project(self, point: FloatArray) -> tuple[float, float]:
        """Arc length of the closest path point and the signed offset of ``point`` [m]."""
        p = np.asarray(point, dtype=np.float64)
        a, b = self.xy[:-1], self.xy[1:]
        ab = b - a
        t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(
            np.einsum("ij,ij->i", ab, ab), 1e-12), 0.0, 1.0)
        q = a + t[:, None] * ab
        dist = np.linalg.norm(q - p, axis=1)
        i = int(np.argmin(dist))
        cross = ab[i, 0] * (p[1] - q[i, 1]) - ab[i, 1] * (p[0] - q[i, 0])
        return float(self.s[i] + t[i] * (self.s[i + 1] - self.s[i])), float(
            np.copysign(dist[i], cross))


@dataclass(frozen=True)
class LaneSpan:
    """A stretch of one lane: ``lane`` id from arc length ``s_from`` to ``s_to`` [m]."""

    lane: str
    s_from: float
    s_to: float


def lanes_ahead(road_map: RoadMap, lane_id: str, s_m: float, distance_m: float,
                route: Route | None = None) -> list[LaneSpan]:
    """The lane stretches covering ``distance_m`` ahead of (``lane_id``, ``s_m``).

    At the end of a lane the successor on the route is taken; off the route (or without
    one), the successor that turns least.

    Args:
        road_map: The map.
        lane_id: Starting lane.
        s_m: Starting arc length on it [m].
        distance_m: Distance to cover [m].
        route: Preferred lanes at forks.
    """
    on_route = set(route.lanes) if route is not None else set()
    spans: list[LaneSpan] = []
    lane = road_map.lane(lane_id)
    s = min(max(s_m, 0.0), lane.length)
    remaining = distance_m
    while True:
        end = min(lane.length, s + remaining)
        spans.append(LaneSpan(lane.id, s, end))
        remaining -= end - s
        if remaining <= 1e-6 or not lane.successors or len(spans) > 32:
            return spans
        lane = road_map.lane(next_lane(road_map, lane, route, on_route))
        s = 0.0


def next_lane(road_map: RoadMap, lane: Lane, route: Route | None = None,
              on_route: set[str] | None = None) -> str:
    """The successor of ``lane`` to drive onto: the one on the route, else the one that
    turns least. ``lane`` must have successors."""
    if on_route is None:
        on_route = set(route.lanes) if route is not None else set()
    nexts = [road_map.lane(x) for x in lane.successors]
    preferred = [ln for ln in nexts if ln.id in on_route]
    if preferred:
        return preferred[0].id
    end_heading = float(lane.heading_at(lane.length))
    return min(nexts, key=lambda ln: _turn_rad(ln, end_heading)).id


def _turn_rad(lane: Lane, from_heading: float) -> float:
    """Absolute heading change from ``from_heading`` to the end of ``lane`` [rad]."""
    return abs(float(np.angle(np.exp(1j * (float(lane.heading_at(lane.length))
                                             - from_heading)))))


def build_reference_path(road_map: RoadMap, spans: Sequence[LaneSpan], d0: float, d1: float,
                         transition_m: float, slope0: float = 0.0,
                         spacing_m: float = 1.0, extend_m: float = 0.0) -> ReferencePath:
    """A path along ``spans`` whose lateral offset moves from ``d0`` to ``d1``.

    The offset follows :func:`quintic_offset` over the first ``transition_m`` metres
    and stays at ``d1`` after.

    Args:
        road_map: The map.
        spans: Consecutive lane stretches (the base line), e.g. from :func:`lanes_ahead`.
        d0: Lateral offset at the start [m], left positive.
        d1: Lateral offset after the transition [m].
        transition_m: Transition length along the base line [m].
        slope0: Lateral slope at the start (see :func:`quintic_offset`).
        spacing_m: Sampling step [m].
        extend_m: Straight continuation past the last span's end [m] (for lanes that end,
            so that a path always has a look-ahead point).
    """
    pieces: list[FloatArray] = []
    base = 0.0
    for k, span in enumerate(spans):
        ln = road_map.lane(span.lane)
        n = max(int(np.ceil((span.s_to - span.s_from) / spacing_m)), 1)
        s = np.linspace(span.s_from, span.s_to, n + 1)
        if k > 0:
            s = s[1:]  # the previous span's end is this one's start
        d, _, _ = quintic_offset(base + s - span.s_from, d0, d1, max(transition_m, 1e-3),
                                 slope0)
        pieces.append(ln.position(s, d))
        base += span.s_to - span.s_from
    if extend_m > 0.0:
        last = road_map.lane(spans[-1].lane)
        heading = float(last.heading_at(spans[-1].s_to))
        d_end = float(quintic_offset(base, d0, d1, max(transition_m, 1e-3), slope0)[0])
        end = last.position(spans[-1].s_to, d_end)
        t = np.arange(spacing_m, extend_m + spacing_m, spacing_m)
        pieces.append(end + t[:, None] * np.array([np.cos(heading), np.sin(heading)]))
    return ReferencePath.from_points(np.concatenate(pieces))
