"""``bulletdrive/Highway-v0``: a divided highway with curves, an on-ramp merge and traffic."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np

from envs.config import EnvConfig, HighwayEnvConfig
from envs.driving_env import DrivingEnv
from envs.maps.highway import HighwayLayout, generate_highway
from envs.maps.road_map import RoadMap, RouteCommand
from envs.maps.route import Route, RouteSegment


class HighwayEnv(DrivingEnv):
    """Drive the forward carriageway to the end of the map, from a lane or the on-ramp.

    Starting on the ramp, the route runs through the acceleration lane (command
    ``CHANGE_LANE_LEFT`` until its end) and on along the rightmost lane.
    """

    default_config: ClassVar[str | None] = "highway"
    config_class: ClassVar[type[EnvConfig]] = HighwayEnvConfig

    def generate_map(self, map_seed: int) -> tuple[RoadMap, HighwayLayout]:
        """Generate the highway for ``map_seed``."""
        return generate_highway(self.config.map, map_seed)

    def sample_start(self, rng: np.random.Generator, layout: HighwayLayout,
                     options: Mapping[str, Any]) -> tuple[str, float, Route]:
        """Draw the start lane and position and build the route to the end of the road."""
        rm = self.road_map
        assert rm is not None
        n = layout.num_lanes
        end_station = float(layout.ref_station[-1]) - self.config.route_end_margin_m
        on_ramp = "ramp/r0" in rm.lane_index and rng.random() < self.config.ramp_start_prob
        lane_id = str(options.get("start_lane", "ramp/r0" if on_ramp else
                                  f"main/f{int(rng.integers(n))}"))
        if lane_id not in rm.lane_index or not (lane_id.startswith("main/f")
                                                or lane_id == "ramp/r0"):
            valid = [ln.id for ln in rm.lanes if ln.id.startswith("main/f") or ln.kind == "ramp"]
            raise ValueError(f"start_lane {lane_id!r} is not a start lane of this map; valid: "
                             f"{', '.join(valid)}")
        lane = rm.lane(lane_id)
        default_s = 10.0 if lane_id == "ramp/r0" else float(rng.uniform(40.0, 80.0))
        s0 = float(options.get("start_s_m", default_s))
        if not 0.0 <= s0 < lane.length - 50.0:
            raise ValueError(f"start_s_m must be in [0, {lane.length - 50.0:.0f}) m on "
                             f"{lane_id}, got {s0}")
        if lane_id == "ramp/r0":
            acc = rm.lane("main/acc")
            last = rm.lane(f"main/f{n - 1}")
            segments = [
                RouteSegment("ramp/r0", 0.0, lane.length, RouteCommand.LANE_FOLLOW),
                RouteSegment("main/acc", 0.0, acc.length, RouteCommand.CHANGE_LANE_LEFT),
                RouteSegment(last.id, float(last.s_at_station(layout.merge_end_station)),
                             float(last.s_at_station(end_station))),
            ]
        else:
            segments = [RouteSegment(lane_id, 0.0, float(lane.s_at_station(end_station)))]
        return lane_id, s0, Route(rm, segments)
