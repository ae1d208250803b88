"""Bird's-eye-view renderer (OpenCV) of the map, vehicles and route.

Used for debugging, videos and reports, not by the policy. World geometry is cached
once per map; each frame only transforms it into pixels around the ego.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from envs.maps.geometry import FloatArray
from envs.maps.road_map import Marking, RoadMap

#: An RGB image (H, W, 3) uint8 (dtype left open for numpy's typing of cv2 results).
Image = NDArray[Any]

_GRASS = (58, 92, 50)
_ROAD = (92, 92, 96)
_PAINT = (230, 230, 220)
_BARRIER = (185, 185, 175)
_TREE = (30, 120, 40)
_ROUTE = (70, 140, 255)
_EGO = (230, 40, 40)
_OTHER = (250, 250, 250)


@dataclass(frozen=True)
class BoxAgent:
    """An agent drawn as an oriented rectangle: centre [m], yaw [rad], size [m], RGB colour."""

    x: float
    y: float
    yaw: float
    length: float
    width: float
    color: tuple[int, int, int] = _OTHER


def box_corners(x: float, y: float, yaw: float, length: float, width: float) -> FloatArray:
    """Corners (4, 2) of an oriented rectangle, counter-clockwise from front-left."""
    c, s = np.cos(yaw), np.sin(yaw)
    hl, hw = length / 2.0, width / 2.0
    local = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


class BirdEyeView:
    """Renders top-down frames of a :class:`RoadMap` centred on a pose.

    Args:
        road_map: The map to draw.
        size_px: Output image side [px].
        metres_per_px: Scale [m/px].
        heading_up: Rotate so that the ego's heading points up (else north up).
    """

    def __init__(self, road_map: RoadMap, size_px: int = 256, metres_per_px: float = 0.4,
                 heading_up: bool = True) -> None:
        self.map = road_map
        self.size_px = size_px
        self.metres_per_px = metres_per_px
        self.heading_up = heading_up
        self._polys = [
            np.concatenate([ln.position(ln.s, ln.width / 2.0),
                            ln.position(ln.s[::-1], -ln.width[::-1] / 2.0)])
            for ln in road_map.lanes
        ]
        self._lines: list[tuple[FloatArray, Marking, FloatArray]] = []
        for ln in road_map.lanes:
            self._lines.append((ln.position(ln.s, ln.width / 2.0), ln.left_marking, ln.s))
            if ln.right is None:
                self._lines.append((ln.position(ln.s, -ln.width / 2.0), ln.right_marking, ln.s))

    def _to_px(self, pts: FloatArray, cx: float, cy: float, yaw: float) -> NDArray[np.int32]:
        rel = np.asarray(pts, dtype=np.float64) - np.array([cx, cy])
        rot = (np.pi / 2.0 - yaw) if self.heading_up else 0.0
        c, s = np.cos(rot), np.sin(rot)
        x = rel[..., 0] * c - rel[..., 1] * s
        y = rel[..., 0] * s + rel[..., 1] * c
        half = self.size_px / 2.0
        px = np.stack([half + x / self.metres_per_px, half - y / self.metres_per_px], axis=-1)
        return np.round(px * 4.0).astype(np.int32)  # 2 fractional bits for cv2 shift=2

    def render(self, x: float, y: float, yaw: float, agents: Sequence[BoxAgent] = (),
               route_path: FloatArray | None = None,
               planned_path: FloatArray | None = None,
               stop_lines: Sequence[tuple[FloatArray, tuple[int, int, int]]] = ()) -> Image:
        """Draw a frame centred on (``x``, ``y``) with heading ``yaw``.

        Args:
            x, y: View centre (usually the ego) [m].
            yaw: Ego heading [rad] (used when ``heading_up``).
            agents: Vehicles to draw; the first one is drawn as the ego if its colour is red.
            route_path: Route centre line (M, 2) to highlight [m].
            planned_path: A planned path (K, 2) drawn on top [m].
            stop_lines: Signal stop lines (2, 2) [m] with the colour of their state.

        Returns:
            RGB image (size_px, size_px, 3).
        """
        img: Image = np.empty((self.size_px, self.size_px, 3), np.uint8)
        img[:] = _GRASS
        radius = self.size_px * self.metres_per_px
        for poly in self._polys:
            near = np.hypot(poly[:, 0] - x, poly[:, 1] - y) < radius
            if near.any():
                cv2.fillPoly(img, [self._to_px(poly, x, y, yaw)], _ROAD, cv2.LINE_AA, shift=2)
        for line, marking, s in self._lines:
            if marking == Marking.NONE:
                continue
            near = np.hypot(line[:, 0] - x, line[:, 1] - y) < radius
            if not near.any():
                continue
            px = self._to_px(line[near], x, y, yaw)
            if marking == Marking.SOLID:
                cv2.polylines(img, [px], False, _PAINT, 1, cv2.LINE_AA, shift=2)
            else:
                on = (s[near] % 12.0) < 4.0
                for k in range(len(px) - 1):
                    if on[k]:
                        cv2.line(img, tuple(px[k]), tuple(px[k + 1]), _PAINT, 1, cv2.LINE_AA, 2)
        for barrier in self.map.barriers:
            near = np.hypot(barrier[:, 0] - x, barrier[:, 1] - y) < radius
            if near.any():
                cv2.polylines(img, [self._to_px(barrier[near], x, y, yaw)], False, _BARRIER, 2,
                              cv2.LINE_AA, shift=2)
        for obj in self.map.objects:
            if abs(obj.x - x) < radius and abs(obj.y - y) < radius:
                poly = box_corners(obj.x, obj.y, obj.yaw, obj.size[0], obj.size[1])
                color = _TREE if obj.kind == "tree" else _BARRIER
                cv2.fillPoly(img, [self._to_px(poly, x, y, yaw)], color, cv2.LINE_AA, shift=2)
        if route_path is not None and len(route_path) > 1:
            overlay = img.copy()
            cv2.polylines(overlay, [self._to_px(route_path, x, y, yaw)], False, _ROUTE,
                          max(int(2.0 / self.metres_per_px), 1), cv2.LINE_AA, shift=2)
            img = cv2.addWeighted(overlay, 0.45, img, 0.55, 0.0)
        if planned_path is not None and len(planned_path) > 1:
            cv2.polylines(img, [self._to_px(planned_path, x, y, yaw)], False, (255, 220, 0), 1,
                          cv2.LINE_AA, shift=2)
        for line, color in stop_lines:
            if np.hypot(line[:, 0] - x, line[:, 1] - y).min() < radius:
                cv2.polylines(img, [self._to_px(line, x, y, yaw)], False, color,
                              max(int(0.8 / self.metres_per_px), 2), cv2.LINE_AA, shift=2)
        for agent in agents:
            poly = box_corners(agent.x, agent.y, agent.yaw, agent.length, agent.width)
            px = self._to_px(poly, x, y, yaw)
            cv2.fillPoly(img, [px], agent.color, cv2.LINE_AA, shift=2)
            cv2.polylines(img, [px], True, (20, 20, 20), 1, cv2.LINE_AA, shift=2)
        return img

    def overview(self, size_px: int = 768,
                 agents: Sequence[BoxAgent] = (), route_path: FloatArray | None = None) -> Image:
        """Draw the whole map north-up, scaled to fit ``size_px``."""
        lo, hi = self.map.bounds
        extent = float(max(hi - lo)) + 40.0
        view = BirdEyeView(self.map, size_px, extent / size_px, heading_up=False)
        centre = (lo + hi) / 2.0
        return view.render(float(centre[0]), float(centre[1]), 0.0, agents, route_path)
