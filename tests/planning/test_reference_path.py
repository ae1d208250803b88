"""Reference paths: quintic transitions and path geometry against closed forms."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.maps.road_map import Lane, RoadMap
from planning.reference_path import (
    LaneSpan,
    ReferencePath,
    build_reference_path,
    lanes_ahead,
    quintic_offset,
)


def _straight(lane_id: str, road: str, x0: float, x1: float, y: float = 0.0,
              successors: list[str] | None = None) -> Lane:
    xs = np.linspace(x0, x1, 50)
    centre = np.stack([xs, np.full_like(xs, y)], axis=1)
    return Lane(lane_id, road, centre, np.full(50, 3.5), xs.copy(), 20.0,
                successors=successors or [])


def _arc(lane_id: str, centre_xy: tuple[float, float], radius: float, a0: float, a1: float
         ) -> Lane:
    a = np.linspace(a0, a1, 2000)
    centre = np.stack([centre_xy[0] + radius * np.cos(a), centre_xy[1] + radius * np.sin(a)],
                      axis=1)
    s = radius * (a - a0)
    return Lane(lane_id, lane_id, centre, np.full(2000, 3.5), s, 20.0)


def test_quintic_is_minimum_jerk_profile_with_flat_ends() -> None:
    s = np.linspace(0.0, 30.0, 301)
    d, d1, d2 = quintic_offset(s, 0.5, 4.0, 30.0)
    u = s / 30.0
    np.testing.assert_allclose(d, 0.5 + 3.5 * (10 * u**3 - 15 * u**4 + 6 * u**5), atol=1e-12)
    assert d[0] == pytest.approx(0.5) and d[-1] == pytest.approx(4.0)
    assert d1[0] == pytest.approx(0.0, abs=1e-12) and d2[0] == pytest.approx(0.0, abs=1e-12)
    # Peak slope 15/8 (d1 - d0) / L at mid-transition; peak curvature 10/sqrt(3) dd / L^2.
    assert d1.max() == pytest.approx(1.875 * 3.5 / 30.0, rel=1e-3)
    assert np.abs(d2).max() == pytest.approx(10 / math.sqrt(3) * 3.5 / 900.0, rel=1e-2)
    d_after, slope_after, _ = quintic_offset(45.0, 0.5, 4.0, 30.0)
    assert float(d_after) == pytest.approx(4.0) and float(slope_after) == 0.0


def test_quintic_with_initial_slope_meets_all_boundary_conditions() -> None:
    length = 20.0
    eps = 1e-4
    d, d1, d2 = quintic_offset(np.array([0.0, length - eps]), 1.0, -2.0, length, slope0=0.1)
    assert d[0] == pytest.approx(1.0) and d1[0] == pytest.approx(0.1)
    assert d2[0] == pytest.approx(0.0, abs=1e-12)
    assert d[1] == pytest.approx(-2.0, abs=1e-6) and d1[1] == pytest.approx(0.0, abs=1e-4)
    assert d2[1] == pytest.approx(0.0, abs=1e-3)
    with pytest.raises(ValueError, match="length_m"):
        quintic_offset(1.0, 0.0, 1.0, 0.0)


def test_lane_change_path_curvature_and_arc_length_match_closed_form() -> None:
    rm = RoadMap([_straight("a", "r", 0.0, 200.0)])
    path = build_reference_path(rm, [LaneSpan("a", 10.0, 150.0)], 0.0, 3.5, 40.0,
                                spacing_m=0.25)
    # On a straight base line the path is y = d(x): kappa = d'' / (1 + d'^2)^1.5.
    x = np.linspace(12.0, 48.0, 50)
    _, d1, d2 = quintic_offset(x - 10.0, 0.0, 3.5, 40.0)
    s_at_x = np.interp(x, path.xy[:, 0], path.s)
    np.testing.assert_allclose(path.curvature_at(s_at_x), d2 / (1 + d1**2) ** 1.5, atol=2e-4)
    t = np.linspace(0.0, 40.0, 20001)
    length = float(np.trapezoid(np.sqrt(1 + quintic_offset(t, 0.0, 3.5, 40.0)[1] ** 2), t))
    assert path.length == pytest.approx(length + 100.0, abs=1e-2)
    np.testing.assert_allclose(path.position(path.length)[1], 3.5, atol=1e-9)


def test_constant_offset_on_a_circle_is_a_circle_of_the_reduced_radius() -> None:
    radius, offset = 50.0, 2.0
    rm = RoadMap([_arc("c", (0.0, 0.0), radius, 0.0, 1.5)])
    path = build_reference_path(rm, [LaneSpan("c", 0.0, radius * 1.5)], offset, offset, 1.0,
                                spacing_m=0.5)
    inner = path.curvature[5:-5]
    np.testing.assert_allclose(inner, 1.0 / (radius - offset), rtol=2e-3)
    assert path.length == pytest.approx((radius - offset) * 1.5, rel=1e-3)
    r_in = radius - offset - 0.5  # inside the turn: to the left of the path
    s, d = path.project(np.array([r_in * math.cos(1.0), r_in * math.sin(1.0)]))
    assert d == pytest.approx(0.5, abs=1e-2)
    assert s == pytest.approx(radius - offset, rel=1e-3)


def test_from_points_rejects_degenerate_paths() -> None:
    with pytest.raises(ValueError, match="3 distinct"):
        ReferencePath.from_points(np.array([[0.0, 0.0], [0.0, 0.0], [1.0, 0.0]]))


def test_lanes_ahead_prefers_the_route_then_the_straightest_successor() -> None:
    from envs.maps.route import Route, RouteSegment

    main = _straight("a", "r", 0.0, 100.0, successors=["left", "straight"])
    straight = _straight("straight", "r2", 100.0, 200.0)
    bend = np.array([[100.0, 0.0], [120.0, 5.0], [130.0, 20.0], [132.0, 60.0]])
    left = Lane("left", "r3", bend, np.full(4, 3.5), np.linspace(0, 70, 4), 10.0)
    rm = RoadMap([main, straight, left])
    spans = lanes_ahead(rm, "a", 60.0, 80.0)
    assert [sp.lane for sp in spans] == ["a", "straight"]
    assert spans[0].s_from == 60.0 and spans[-1].s_to == pytest.approx(40.0)
    route = Route(rm, [RouteSegment("a", 0.0, 100.0), RouteSegment("left", 0.0, left.length)])
    assert [sp.lane for sp in lanes_ahead(rm, "a", 60.0, 80.0, route)] == ["a", "left"]
