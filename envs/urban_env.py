"""``bulletdrive/Urban-v0``: a signalised urban grid with traffic, pedestrians, parked cars."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from envs.config import EnvConfig, UrbanEnvConfig
from envs.driving_env import DrivingEnv
from envs.maps.road_map import RoadMap
from envs.maps.route import Route, RouteSegment
from envs.maps.urban import UrbanLayout, generate_urban, sample_route


class UrbanEnv(DrivingEnv):
    """Follow a route through several signalised intersections of an urban grid.

    The ``measurements`` route command is CARLA's high-level command: follow lane, or
    left / right / straight at the next junction, with the distance to it.
    """

    default_config: ClassVar[str | None] = "urban"
    config_class: ClassVar[type[EnvConfig]] = UrbanEnvConfig
    traffic_layout: ClassVar[str] = "network"

    def generate_map(self, map_seed: int) -> tuple[RoadMap, UrbanLayout]:
        """Generate the urban grid for ``map_seed``."""
        return generate_urban(self.config.map, map_seed)

    def sample_start(self, rng: np.random.Generator, layout: UrbanLayout,
                     options: Mapping[str, Any]) -> tuple[str, float, Route]:
        """Draw a route through at least ``min_junctions`` junctions; start at its beginning.

        ``start_lane`` / ``start_s_m`` options move the start onto a given road lane; the
        route is then drawn from there.
        """
        rm = self.road_map
        assert rm is not None
        route = sample_route(rm, rng, min_junctions=self.config.min_junctions)
        if "start_lane" in options:
            lane_id = str(options["start_lane"])
            if lane_id not in rm.lane_index or rm.lane(lane_id).kind == "connector":
                valid = [ln.id for ln in rm.lanes if ln.kind != "connector"][:12]
                raise ValueError(f"start_lane {lane_id!r} is not a road lane of this map; "
                                 f"valid (first 12): {', '.join(valid)}, ...")
            s0 = float(options.get("start_s_m", 5.0))
            lane = rm.lane(lane_id)
            if not 0.0 <= s0 < lane.length - 5.0:
                raise ValueError(f"start_s_m must be in [0, {lane.length - 5.0:.0f}) m on "
                                 f"{lane_id}, got {s0}")
            tail = sample_route(rm, rng, min_junctions=self.config.min_junctions,
                                start_lane=lane_id)
            first = tail.segments[0]
            route = Route(rm, [RouteSegment(lane_id, s0, first.s_end, first.command),
                               *tail.segments[1:]])
            return lane_id, s0, route
        first = route.segments[0]
        return first.lane, first.s_start, route
