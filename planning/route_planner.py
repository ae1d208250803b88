"""Route planning: A* over the lane graph.

Nodes are lanes; an edge leads from a lane to each successor (cost: the lane's length)
and to its left/right neighbours (cost: a lane-change penalty plus the distance to the
neighbour's end from the same station, so changes are taken only where useful). The
heuristic is the straight-line distance to the goal, which never overestimates the
remaining driving distance, so the route found is the shortest one.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass

import numpy as np

from envs.maps.road_map import RoadMap, RouteCommand
from envs.maps.route import Route, RouteSegment

_TURN_COMMAND = {"left": RouteCommand.LEFT, "right": RouteCommand.RIGHT,
                 "straight": RouteCommand.STRAIGHT}


@dataclass(frozen=True)
class PlannerConfig:
    """A* costs.

    Attributes:
        lane_change_cost_m: Extra cost of one lane change, in metres of driving [m].
        lane_change_length_m: Road length a lane change takes [m].
    """

    lane_change_cost_m: float = 30.0
    lane_change_length_m: float = 40.0


class NoRouteError(ValueError):
    """No path exists between the two lanes."""


def plan_route(road_map: RoadMap, start_lane: str, start_s: float, goal_lane: str,
               goal_s: float | None = None, cfg: PlannerConfig | None = None) -> Route:
    """Shortest route from (``start_lane``, ``start_s``) to (``goal_lane``, ``goal_s``).

    Args:
        road_map: The map.
        start_lane / start_s: Where the route starts [m].
        goal_lane / goal_s: Where it ends (default: the goal lane's end) [m].
        cfg: Costs.

    Returns:
        A :class:`Route` whose segments carry the junction commands and
        ``CHANGE_LANE_LEFT/RIGHT`` on segments that end in a lane change.

    Raises:
        NoRouteError: When the goal cannot be reached; ValueError for unknown lanes.
    """
    cfg = cfg or PlannerConfig()
    for lane_id in (start_lane, goal_lane):
        if lane_id not in road_map.lane_index:
            raise ValueError(f"unknown lane {lane_id!r}")
    goal = road_map.lane(goal_lane)
    goal_s = goal.length if goal_s is None else goal_s
    goal_xy = goal.position(goal_s)

    def h(lane_id: str) -> float:
        ln = road_map.lane(lane_id)
        return float(min(np.hypot(*(ln.centre[0] - goal_xy)), np.hypot(*(ln.centre[-1] - goal_xy))))

    # Each state: (lane, entry arc length); the start is entered at start_s.
    frontier: list[tuple[float, float, int, str, float]] = [(h(start_lane), 0.0, 0, start_lane,
                                                               start_s)]
    came: dict[str, tuple[str | None, float, str]] = {start_lane: (None, start_s, "start")}
    best: dict[str, float] = {start_lane: 0.0}
    counter = 0
    while frontier:
        _, cost, _, lane_id, entry = heapq.heappop(frontier)
        if cost > best.get(lane_id, math.inf) + 1e-9:
            continue
        lane = road_map.lane(lane_id)
        if lane_id == goal_lane and entry <= goal_s + 1e-6:
            return _build(road_map, came, lane_id, goal_s)
        edges: list[tuple[str, float, float, str]] = []
        for nxt in lane.successors:
            edges.append((nxt, lane.length - entry, 0.0, "next"))
        for side, nb in (("left", lane.left), ("right", lane.right)):
            if nb is None:
                continue
            neighbour = road_map.lane(nb)
            s_here = min(entry + cfg.lane_change_length_m, lane.length)
            s_there = float(neighbour.s_at_station(lane.station_at(s_here)))
            lo, hi = sorted((float(neighbour.station[0]), float(neighbour.station[-1])))
            if not lo <= float(lane.station_at(s_here)) <= hi or s_there >= neighbour.length:
                continue
            edges.append((nb, s_here - entry + cfg.lane_change_cost_m, s_there, side))
        for nxt, step, nxt_entry, how in edges:
            new = cost + step
            if new < best.get(nxt, math.inf) - 1e-9:
                best[nxt] = new
                came[nxt] = (lane_id, nxt_entry, how)
                counter += 1
                heapq.heappush(frontier, (new + h(nxt), new, counter, nxt, nxt_entry))
    raise NoRouteError(f"no route from {start_lane!r} to {goal_lane!r}")


def _build(road_map: RoadMap, came: dict[str, tuple[str | None, float, str]], last: str,
           goal_s: float) -> Route:
    chain: list[tuple[str, float, str]] = []
    lane_id: str | None = last
    while lane_id is not None:
        prev, entry, how = came[lane_id]
        chain.append((lane_id, entry, how))
        lane_id = prev
    chain.reverse()
    segments = []
    for k, (lane_id, entry, _) in enumerate(chain):
        lane = road_map.lane(lane_id)
        command = _TURN_COMMAND.get(lane.turn or "", RouteCommand.LANE_FOLLOW)
        if k + 1 < len(chain):
            _, next_entry, how = chain[k + 1]
            if how in ("left", "right"):
                # The change happens where the neighbour is entered (same station).
                station = float(road_map.lane(chain[k + 1][0]).station_at(next_entry))
                end = float(lane.s_at_station(station))
                command = (RouteCommand.CHANGE_LANE_LEFT if how == "left"
                           else RouteCommand.CHANGE_LANE_RIGHT)
            else:
                end = lane.length
        else:
            end = goal_s
        if end > entry + 1e-6:
            segments.append(RouteSegment(lane_id, entry, end, command))
    return Route(road_map, segments)
