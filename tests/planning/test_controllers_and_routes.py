"""Closed-form checks of the controllers, and A* routes on the generated maps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from envs.maps.highway import HighwayMapConfig, generate_highway
from envs.maps.road_map import RouteCommand
from envs.maps.urban import UrbanMapConfig, generate_urban
from planning.controllers import (
    PIDGains,
    PIDState,
    pid_step,
    pure_pursuit_curvature,
    pure_pursuit_steer,
    stanley_steer,
)
from planning.route_planner import NoRouteError, plan_route


@pytest.mark.parametrize("radius", [5.0, 20.0, 300.0])
@pytest.mark.parametrize("angle", [0.1, 0.5, 1.2])
def test_pure_pursuit_point_on_circle_gives_its_curvature(radius: float, angle: float) -> None:
    # A circle of radius R tangent to the heading at the origin, centre (0, R).
    x, y = radius * math.sin(angle), radius * (1 - math.cos(angle))
    assert abs(pure_pursuit_curvature(x, y) - 1.0 / radius) < 1e-9
    assert abs(pure_pursuit_steer(x, y, 2.7) - math.atan(2.7 / radius)) < 1e-9
    assert abs(pure_pursuit_curvature(x, -y) + 1.0 / radius) < 1e-9


def test_stanley() -> None:
    assert stanley_steer(0.0, 0.0, 10.0) == 0.0
    assert abs(stanley_steer(0.2, 0.0, 10.0) + 0.2) < 1e-12  # heading error cancelled
    assert stanley_steer(0.0, 1.0, 10.0) < 0 < stanley_steer(0.0, -1.0, 10.0)
    assert abs(stanley_steer(0.0, 1e6, 1.0)) < math.pi / 2  # bounded


def test_pid_proportional_integral_and_windup() -> None:
    gains = PIDGains(kp=2.0, ki=1.0, kd=0.0, out_min=-1.0, out_max=1.0)
    out, st = pid_step(gains, PIDState(), 0.1, 0.1)
    assert abs(out - (0.2 + 0.01)) < 1e-12 and abs(st.integral - 0.01) < 1e-12
    # Saturated: the integral stops growing.
    st = PIDState()
    for _ in range(50):
        out, st = pid_step(gains, st, 5.0, 0.1)
    assert out == 1.0 and st.integral == 0.0


def test_astar_highway_lane_change_and_ramp() -> None:
    road, layout = generate_highway(HighwayMapConfig(), 2)
    n = layout.num_lanes
    route = plan_route(road, "main/f0", 10.0, f"main/f{n - 1}", 1500.0)
    lanes = route.lanes
    assert lanes[0] == "main/f0" and lanes[-1] == f"main/f{n - 1}"
    changes = [g.command for g in route.segments[:-1]]
    assert changes.count(RouteCommand.CHANGE_LANE_RIGHT) == n - 1
    # Lane changes cost little road length: total close to the straight distance.
    assert route.length < 1500.0 + 5.0
    ramp = plan_route(road, "ramp/r0", 0.0, f"main/f{n - 1}", 1800.0)
    assert ramp.lanes[:2] == ["ramp/r0", "main/acc"]
    assert ramp.segments[1].command == RouteCommand.CHANGE_LANE_LEFT
    with pytest.raises(NoRouteError):
        plan_route(road, "main/f0", 10.0, "main/b0", 100.0)  # the other carriageway


def test_astar_urban_is_shortest_and_carries_turn_commands() -> None:
    road, _ = generate_urban(UrbanMapConfig(), 1)
    rng = np.random.default_rng(0)
    roads = [ln.id for ln in road.lanes if ln.kind != "connector"]
    for _ in range(5):
        a, b = rng.choice(roads, 2, replace=False)
        route = plan_route(road, str(a), 0.0, str(b))
        assert route.lanes[0] == a and route.lanes[-1] == b
        for seg, nxt in zip(route.segments, route.segments[1:], strict=False):
            lane = road.lane(seg.lane)
            assert nxt.lane in lane.successors or nxt.lane in (lane.left, lane.right)
        for seg in route.segments:
            turn = road.lane(seg.lane).turn
            if turn is not None:
                assert seg.command.name.lower() == turn
        # The straight-line distance bounds the route length from below.
        start = road.lane(str(a)).position(0.0)
        end = road.lane(str(b)).position(road.lane(str(b)).length)
        assert route.length >= float(np.hypot(*(end - start))) - 1e-6
