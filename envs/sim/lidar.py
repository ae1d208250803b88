"""A scanning lidar from batched pybullet ray casts."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from common.config import require
from envs.sim.vehicle import vehicle_to_world

#: Collision group of the ego's links; lidar rays skip it (they start inside its roof line).
EGO_COLLISION_GROUP = 0x10
#: Ray filter: every group except the ego's.
_RAY_MASK = 0xFFFF & ~EGO_COLLISION_GROUP


@dataclass(frozen=True)
class LidarConfig:
    """Lidar geometry.

    Attributes:
        beams: Beams per channel, spread evenly over ``fov_rad`` [count].
        fov_rad: Horizontal field of view, centred on the heading [rad].
        elevations_rad: Elevation of each channel (negative looks down) [rad].
        range_m: Maximum range; no hit reads as this value [m].
        mount_xyz_m: Sensor position in the vehicle frame (above the roof) [m].
    """

    beams: int = 64
    fov_rad: float = 2.0 * math.pi
    elevations_rad: tuple[float, ...] = (-0.12, -0.04, 0.0)
    range_m: float = 60.0
    mount_xyz_m: tuple[float, float, float] = (0.0, 0.0, 1.7)

    def __post_init__(self) -> None:
        require(1 <= self.beams <= 4096, "lidar.beams must be in [1, 4096]")
        require(0 < self.fov_rad <= 2.0 * math.pi, "lidar.fov_rad must be in (0, 2 pi]")
        require(len(self.elevations_rad) >= 1, "lidar.elevations_rad must not be empty")
        require(self.range_m > 0, "lidar.range_m must be > 0")

    @property
    def num_rays(self) -> int:
        """Rays per scan (channels x beams)."""
        return self.beams * len(self.elevations_rad)


class Lidar:
    """Casts all rays of a scan in one ``rayTestBatch`` call.

    Args:
        client: pybullet client id.
        cfg: Lidar geometry.
    """

    def __init__(self, client: int, cfg: LidarConfig) -> None:
        self.client = client
        self.cfg = cfg
        full = cfg.fov_rad >= 2.0 * math.pi - 1e-9
        az = np.linspace(-cfg.fov_rad / 2, cfg.fov_rad / 2, cfg.beams, endpoint=not full)
        el = np.asarray(cfg.elevations_rad)
        azg, elg = np.meshgrid(az, el)  # channel-major: all beams of channel 0 first
        self._dirs = np.stack([np.cos(elg) * np.cos(azg), np.cos(elg) * np.sin(azg),
                               np.sin(elg)], axis=-1).reshape(-1, 3)

    @property
    def directions(self) -> NDArray[np.float64]:
        """Unit ray directions ``(num_rays, 3)`` in the vehicle frame, in scan order."""
        return self._dirs

    def scan(self, x: float, y: float, z: float, yaw: float) -> NDArray[Any]:
        """Ranges (channels * beams,) float32 [m] from a car at (x, y, z) heading ``yaw``."""
        cfg = self.cfg
        c, s = math.cos(yaw), math.sin(yaw)
        origin = np.array(vehicle_to_world(x, y, z, yaw, cfg.mount_xyz_m))
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        ends = origin + (self._dirs @ rot.T) * cfg.range_m
        starts = np.broadcast_to(origin, ends.shape)
        hits = p.rayTestBatch(starts.tolist(), ends.tolist(), collisionFilterMask=_RAY_MASK,
                              physicsClientId=self.client)
        frac = np.array([h[2] if h[0] >= 0 else 1.0 for h in hits])
        return (frac * cfg.range_m).astype(np.float32)
