"""Step events reported in ``info["events"]`` and the rules that assign collision fault.

Every event is a plain dict with a ``type`` key so that it serialises to JSON and
Parquet unchanged. Types: ``collision`` (with ``class``: vehicle / pedestrian / static,
``at_fault`` and ``other``), ``off_road``, ``lane_invasion`` (``marking``),
``wrong_way`` (``distance_m``), ``route_deviation``, ``red_light`` (``signal``),
``stop_line`` (``signal``, ``overrun_m``), ``timeout``, ``route_completed``.
"""

from __future__ import annotations

import math
from typing import Any

Event = dict[str, Any]

COLLISION = "collision"
OFF_ROAD = "off_road"
LANE_INVASION = "lane_invasion"
WRONG_WAY = "wrong_way"
ROUTE_DEVIATION = "route_deviation"
TIMEOUT = "timeout"
ROUTE_COMPLETED = "route_completed"
RED_LIGHT = "red_light"
STOP_LINE = "stop_line"


def vehicle_collision_fault(
    ego_x: float, ego_y: float, ego_yaw: float, ego_lat_speed: float, ego_wrong_way: bool,
    other_x: float, other_y: float, other_yaw: float, other_lat_speed: float,
    half_widths: float,
) -> bool:
    """Whether the ego is at fault in a collision with another vehicle.

    Rules, in order:
      * head-on (headings differ by more than 90 degrees): the one driving the wrong
        way is at fault; traffic never does, so the ego is at fault iff it is;
      * rear-end (the other is mostly ahead of or behind the ego in the ego's frame,
        with lateral overlap): the follower is at fault;
      * side-swipe: the vehicle moving faster towards the other laterally is at fault.

    Args:
        ego_x, ego_y, ego_yaw: Ego pose [m, m, rad].
        ego_lat_speed: Ego lateral speed relative to its lane, left positive [m/s].
        ego_wrong_way: Whether the ego is driving against its lane's direction.
        other_x, other_y, other_yaw: Other vehicle's pose.
        other_lat_speed: Other vehicle's lateral speed relative to its lane [m/s].
        half_widths: Sum of both vehicles' half widths [m].

    Returns:
        True if the ego is at fault.
    """
    dyaw = math.atan2(math.sin(other_yaw - ego_yaw), math.cos(other_yaw - ego_yaw))
    if abs(dyaw) > math.pi / 2:
        return ego_wrong_way
    c, s = math.cos(ego_yaw), math.sin(ego_yaw)
    dx = c * (other_x - ego_x) + s * (other_y - ego_y)
    dy = -s * (other_x - ego_x) + c * (other_y - ego_y)
    if abs(dy) < 0.8 * half_widths:
        return dx > 0.0  # the ego ran into a vehicle ahead of it
    towards_other = math.copysign(1.0, dy)
    ego_closing = ego_lat_speed * towards_other
    other_closing = -other_lat_speed * towards_other
    return ego_closing >= other_closing
