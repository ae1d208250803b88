"""Traffic-signal states over time, and their heads drawn in the scene.

Signal timing is plain data on the map (:class:`envs.maps.road_map.Signal`); this module
evaluates all states at a time in one call and keeps one box-shaped signal head per
approach in pybullet, coloured by its state, so the camera sees it. Heads exist only
near the ego (every body in the world costs physics time).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from envs.maps.road_map import RoadMap
from envs.sim.scene import SemanticClass

GREEN, AMBER, RED = 0, 1, 2
_COLOURS = {GREEN: [0.1, 0.9, 0.2, 1.0], AMBER: [1.0, 0.7, 0.0, 1.0], RED: [0.95, 0.1, 0.1, 1.0]}
#: Signal head size (depth, width, height) [m] and the height of its centre [m].
_HEAD_SIZE = (0.4, 0.8, 1.2)
_HEAD_Z = 4.0


class SignalStates:
    """Vectorised signal timing for a map.

    Attributes:
        lane_signal: For every lane index, the index of the signal at its end (-1: none).
    """

    def __init__(self, road_map: RoadMap) -> None:
        sig = road_map.signals
        self.green = np.array([s.green_s for s in sig])
        self.amber = np.array([s.amber_s for s in sig])
        self.cycle = np.array([s.cycle_s for s in sig])
        self.offset = np.array([s.offset_s for s in sig])
        self.lane_signal = np.full(len(road_map.lanes), -1, dtype=np.int64)
        for k, s in enumerate(sig):
            self.lane_signal[road_map.lane_index[s.lane]] = k

    def states(self, t: float) -> NDArray[Any]:
        """State of every signal at time ``t`` [s]: 0 green, 1 amber, 2 red."""
        if len(self.cycle) == 0:
            return np.zeros(0, dtype=np.int64)
        phase = np.mod(t - self.offset, self.cycle)
        return np.where(phase < self.green, GREEN, np.where(phase < self.green + self.amber,
                                                            AMBER, RED))


class SignalHeads:
    """One coloured box per signal, created when within ``radius_m`` of the ego.

    Args:
        client: pybullet client id.
        road_map: The map with its signals.
        radius_m: Heads farther than this from the ego are removed [m].
        tint: Maps each head colour (RGBA) to the one to draw; ``None`` draws them as they
            are (see :mod:`envs.sim.egl_shading`).
    """

    def __init__(self, client: int, road_map: RoadMap, radius_m: float,
                 tint: Callable[[Sequence[float]], list[float]] | None = None) -> None:
        self.client = client
        self._colours = (_COLOURS if tint is None
                         else {state: tint(rgba) for state, rgba in _COLOURS.items()})
        self.map = road_map
        self.radius_m = radius_m
        self.xy = np.array([s.head_xy for s in road_map.signals]).reshape(-1, 2)
        self.bodies: list[int | None] = [None] * len(road_map.signals)
        self.shown_state = np.full(len(road_map.signals), -1)
        self.body_class: dict[int, SemanticClass] = {}

    def update(self, x: float, y: float, states: NDArray[Any]) -> None:
        """Create/remove heads around (x, y) and recolour those whose state changed."""
        if len(self.xy) == 0:
            return
        near = np.hypot(self.xy[:, 0] - x, self.xy[:, 1] - y) < self.radius_m
        c = self.client
        for k in range(len(self.bodies)):
            body = self.bodies[k]
            if near[k] and body is None:
                sig = self.map.signals[k]
                vis = p.createVisualShape(p.GEOM_BOX, halfExtents=[h / 2 for h in _HEAD_SIZE],
                                          rgbaColor=self._colours[int(states[k])],
                                          physicsClientId=c)
                half = 0.5 * sig.head_yaw
                body = int(p.createMultiBody(0, -1, vis, basePosition=[*sig.head_xy, _HEAD_Z],
                                             baseOrientation=[0, 0, np.sin(half), np.cos(half)],
                                             useMaximalCoordinates=True, physicsClientId=c))
                self.bodies[k] = body
                self.body_class[body] = SemanticClass.SIGNAL
                self.shown_state[k] = states[k]
            elif not near[k] and body is not None:
                p.removeBody(body, physicsClientId=c)
                self.body_class.pop(body, None)
                self.bodies[k] = None
                self.shown_state[k] = -1
            elif body is not None and self.shown_state[k] != states[k]:
                p.changeVisualShape(body, -1, rgbaColor=self._colours[int(states[k])],
                                    physicsClientId=c)
                self.shown_state[k] = states[k]
