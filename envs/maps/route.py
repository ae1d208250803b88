"""Routes: a sequence of lane segments through the lane graph, with distance queries."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from envs.maps.geometry import FloatArray
from envs.maps.road_map import RoadMap, RouteCommand


@dataclass(frozen=True)
class RouteSegment:
    """Part of a route on one lane, from arc length ``s_start`` to ``s_end`` [m].

    ``command`` is the high-level command while driving on this segment (for example
    ``CHANGE_LANE_LEFT`` on an acceleration lane).
    """

    lane: str
    s_start: float
    s_end: float
    command: RouteCommand = RouteCommand.LANE_FOLLOW

    @property
    def length(self) -> float:
        """Segment length [m]."""
        return self.s_end - self.s_start


class Route:
    """A route on a map.

    Args:
        road_map: The map.
        segments: Consecutive lane segments; each starts where the previous one ends
            (on its successor or, for a lane change, on a neighbouring lane).
    """

    def __init__(self, road_map: RoadMap, segments: Sequence[RouteSegment]) -> None:
        if not segments:
            raise ValueError("a route needs at least one segment")
        self.map = road_map
        self.segments = list(segments)
        self.offsets = np.concatenate([[0.0], np.cumsum([g.length for g in self.segments])])

    @property
    def length(self) -> float:
        """Route length [m]."""
        return float(self.offsets[-1])

    @property
    def lanes(self) -> list[str]:
        """Lane ids along the route."""
        return [g.lane for g in self.segments]

    def distance(self, lane_id: str, s: float) -> float | None:
        """Distance along the route of a point at (``lane_id``, ``s``) [m].

        A point on a lane beside a route segment (same road, overlapping stations, same
        direction) is measured by its station, so lane changes keep their progress.
        Returns ``None`` when the point is neither on nor beside the route.
        """
        last = len(self.segments) - 1
        for k, seg in enumerate(self.segments):
            # Past the end of the last segment counts as the end (the route is done).
            end = np.inf if k == last else seg.s_end + 1e-6
            if seg.lane == lane_id and seg.s_start - 1e-6 <= s <= end:
                return float(min(self.offsets[k] + s - seg.s_start, self.length))
        here = self.map.lane(lane_id)
        station = float(here.station_at(s))
        here_dir = np.sign(here.station[-1] - here.station[0])
        for k, seg in enumerate(self.segments):
            ln = self.map.lane(seg.lane)
            if ln.road != here.road or np.sign(ln.station[-1] - ln.station[0]) != here_dir:
                continue
            s_on = float(ln.s_at_station(station))
            end = np.inf if k == last else seg.s_end + 1e-6
            if seg.s_start - 1e-6 <= s_on <= end:
                lo, hi = sorted((float(ln.station[0]), float(ln.station[-1])))
                if lo - 1e-6 <= station <= hi + 1e-6:
                    return float(min(self.offsets[k] + s_on - seg.s_start, self.length))
        return None

    def segment_at(self, distance: float) -> int:
        """Index of the segment containing route distance ``distance``."""
        k = int(np.searchsorted(self.offsets, distance, side="right")) - 1
        return min(max(k, 0), len(self.segments) - 1)

    def point(self, distance: float) -> tuple[str, float]:
        """The (lane id, arc length) at route distance ``distance``."""
        k = self.segment_at(distance)
        seg = self.segments[k]
        return seg.lane, seg.s_start + min(max(distance - self.offsets[k], 0.0), seg.length)

    def next_command(self, distance: float) -> tuple[RouteCommand, float]:
        """The command in force at ``distance`` and the distance to the next manoeuvre [m].

        On a segment with a manoeuvre command, the distance runs to that segment's end;
        on a lane-follow segment, to the start of the next manoeuvre (or the route end).
        """
        k = self.segment_at(distance)
        seg = self.segments[k]
        if seg.command != RouteCommand.LANE_FOLLOW:
            return seg.command, float(self.offsets[k + 1] - distance)
        for j in range(k + 1, len(self.segments)):
            if self.segments[j].command != RouteCommand.LANE_FOLLOW:
                return RouteCommand.LANE_FOLLOW, float(self.offsets[j] - distance)
        return RouteCommand.LANE_FOLLOW, float(self.length - distance)

    def polyline(self, step_m: float = 2.0) -> FloatArray:
        """Centre line of the route (M, 2) [m], for drawing."""
        parts = []
        for seg in self.segments:
            ln = self.map.lane(seg.lane)
            s = np.arange(seg.s_start, seg.s_end, step_m)
            parts.append(ln.position(np.append(s, seg.s_end)))
        return np.concatenate(parts)
