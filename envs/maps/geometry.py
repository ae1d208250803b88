"""Plane-curve geometry for procedural maps: curvature integration and polyline queries.

Conventions: x east, y north [m]; headings [rad] counter-clockwise from +x; curvature
[1/m] positive for left turns. Lateral offsets ``d`` are positive to the left of the
direction of travel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: A float64 array; the dtype is documented, not enforced by the type checker.
FloatArray = NDArray[Any]


def wrap_angle(a: FloatArray | float) -> FloatArray | float:
    """Wrap angles to [-pi, pi)."""
    return (np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi


def integrate_curvature(
    kappa: FloatArray, ds: float, x0: float = 0.0, y0: float = 0.0, heading0: float = 0.0
) -> tuple[FloatArray, FloatArray]:
    """Integrate a curvature profile sampled every ``ds`` metres into points and headings.

    Uses the exact chord of a circular arc between samples (the mean curvature of the
    interval), so a constant-curvature profile gives points exactly on a circle.

    Args:
        kappa: Curvature at each sample [1/m], shape (N,).
        ds: Arc length between samples [m].
        x0, y0: Start point [m].
        heading0: Start heading [rad].

    Returns:
        ``(xy, heading)`` with shapes (N, 2) and (N,).
    """
    k_mid = 0.5 * (kappa[1:] + kappa[:-1])
    dtheta = k_mid * ds
    heading = heading0 + np.concatenate([[0.0], np.cumsum(dtheta)])
    # Chord of an arc with turning angle dtheta: length ds*sinc(dtheta/2), at mid heading.
    chord = ds * np.sinc(dtheta / (2.0 * np.pi))
    mid = heading[:-1] + 0.5 * dtheta
    steps = np.stack([chord * np.cos(mid), chord * np.sin(mid)], axis=1)
    xy = np.concatenate([[[x0, y0]], np.cumsum(steps, axis=0) + [x0, y0]], axis=0)
    return xy, heading


def offset_polyline(xy: FloatArray, heading: FloatArray, d: FloatArray | float) -> FloatArray:
    """Shift points ``d`` metres to the left of their heading (shape (N, 2))."""
    normal = np.stack([-np.sin(heading), np.cos(heading)], axis=1)
    return xy + normal * np.asarray(d, dtype=np.float64).reshape(-1, 1)


def arc_length(xy: FloatArray) -> FloatArray:
    """Cumulative arc length along a polyline, starting at 0 (shape (N,))."""
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    return np.concatenate([[0.0], np.cumsum(seg)])


def polyline_headings(xy: FloatArray) -> FloatArray:
    """Heading at each vertex from the neighbouring segments (shape (N,))."""
    d = np.gradient(xy, axis=0)
    return np.arctan2(d[:, 1], d[:, 0])


def smoothstep5(t: FloatArray) -> FloatArray:
    """Quintic blend 0 -> 1 on [0, 1] with zero first and second derivatives at the ends."""
    t = np.clip(t, 0.0, 1.0)
    return t * t * t * (10.0 + t * (-15.0 + 6.0 * t))


@dataclass(frozen=True)
class Projection:
    """Closest point of a polyline to a query point.

    Attributes:
        s: Arc length of the closest point [m].
        d: Signed lateral offset, positive to the left [m].
        segment: Index of the closest segment.
    """

    s: float
    d: float
    segment: int


def project_to_polyline(xy: FloatArray, s: FloatArray, point: FloatArray,
                        lo: int = 0, hi: int | None = None) -> Projection:
    """Project ``point`` onto the polyline segments ``lo .. hi-1``.

    Args:
        xy: Polyline vertices (N, 2).
        s: Cumulative arc length at the vertices (N,).
        point: Query point (2,).
        lo, hi: Segment index range to search (default: all segments).

    Returns:
        The closest point's arc length, signed offset and segment index.
    """
    if hi is None:
        hi = len(xy) - 1
    a = xy[lo:hi]
    b = xy[lo + 1 : hi + 1]
    ab = b - a
    ap = point - a
    denom = np.einsum("ij,ij->i", ab, ab)
    t = np.clip(np.einsum("ij,ij->i", ap, ab) / np.maximum(denom, 1e-12), 0.0, 1.0)
    closest = a + ab * t[:, None]
    dist2 = np.sum((point - closest) ** 2, axis=1)
    k = int(np.argmin(dist2))
    seg = lo + k
    cross = ab[k, 0] * ap[k, 1] - ab[k, 1] * ap[k, 0]
    d = float(np.sqrt(dist2[k])) * (1.0 if cross >= 0.0 else -1.0)
    return Projection(s=float(s[seg] + t[k] * (s[seg + 1] - s[seg])), d=d, segment=seg)
