"""Closed-form checks of map geometry: arcs, offsets, projection."""

from __future__ import annotations

import numpy as np

from envs.maps.geometry import (
    arc_length,
    integrate_curvature,
    offset_polyline,
    project_to_polyline,
    smoothstep5,
    wrap_angle,
)


def test_constant_curvature_gives_exact_circle() -> None:
    radius = 200.0
    ds = 2.0
    kappa = np.full(158, 1.0 / radius)  # about 90 degrees
    xy, heading = integrate_curvature(kappa, ds)
    # Centre of the circle is (0, R) for a left turn starting east at the origin.
    r = np.hypot(xy[:, 0], xy[:, 1] - radius)
    np.testing.assert_allclose(r, radius, atol=1e-9)
    np.testing.assert_allclose(heading[-1], (len(kappa) - 1) * ds / radius, atol=1e-12)
    # Each sample step is the chord 2 R sin(ds / 2R) of its arc.
    chord = 2 * radius * np.sin(ds / (2 * radius))
    assert abs(arc_length(xy)[-1] - (len(kappa) - 1) * chord) < 1e-9


def test_offset_of_circle_is_concentric_circle() -> None:
    radius = 300.0
    xy, heading = integrate_curvature(np.full(100, 1.0 / radius), 1.0)
    inner = offset_polyline(xy, heading, 5.0)  # to the left = towards the centre
    r = np.hypot(inner[:, 0], inner[:, 1] - radius)
    np.testing.assert_allclose(r, radius - 5.0, atol=1e-9)


def test_projection_onto_straight_line() -> None:
    xy = np.array([[0.0, 0.0], [10.0, 0.0], [20.0, 0.0]])
    s = arc_length(xy)
    proj = project_to_polyline(xy, s, np.array([12.5, 3.0]))
    assert proj.s == 12.5 and proj.d == 3.0 and proj.segment == 1
    proj = project_to_polyline(xy, s, np.array([5.0, -2.0]))
    assert proj.s == 5.0 and proj.d == -2.0


def test_smoothstep_and_wrap() -> None:
    t = np.linspace(0, 1, 11)
    y = smoothstep5(t)
    assert y[0] == 0 and y[-1] == 1 and np.all(np.diff(y) >= 0)
    assert abs(smoothstep5(np.array([0.5]))[0] - 0.5) < 1e-12
    assert abs(float(wrap_angle(3 * np.pi)) + np.pi) < 1e-12
