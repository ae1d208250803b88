"""The ego camera: an RGB image rendered by pybullet's CPU renderer from the car's pose."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from common.config import require
from envs.sim import textures
from envs.sim.vehicle import vehicle_to_world

#: An RGB image (H, W, 3) uint8 (dtype left open for numpy's typing of cv2 results).
Image = NDArray[Any]


@dataclass(frozen=True)
class CameraConfig:
    """Ego camera parameters.

    Attributes:
        width / height: Image size [px].
        fov_rad: Vertical field of view [rad].
        mount_xyz_m: Camera position in the vehicle frame (x forward, y left, z up) [m].
        pitch_rad: Downward tilt of the optical axis [rad].
        near_m / far_m: Clipping distances [m].
        rate_hz: Frame rate [Hz]; ``0`` renders every control step. A slower camera
            repeats its last frame between renders.
        light_direction: Direction towards the light (world frame).
        light_color: RGB light colour in [0, 1].
        ambient / diffuse / specular: Lighting coefficients of the renderer.
    """

    width: int = 84
    height: int = 84
    fov_rad: float = 1.0472
    mount_xyz_m: tuple[float, float, float] = (0.6, 0.0, 1.45)
    pitch_rad: float = 0.06
    near_m: float = 0.3
    far_m: float = 180.0
    rate_hz: float = 0.0
    light_direction: tuple[float, float, float] = (0.4, -0.3, 1.0)
    light_color: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ambient: float = 0.65
    diffuse: float = 0.45
    specular: float = 0.02

    def __post_init__(self) -> None:
        require(8 <= self.width <= 1024 and 8 <= self.height <= 1024,
                f"camera size must be within 8..1024 px, got {self.width}x{self.height}")
        require(0.1 < self.fov_rad < 3.0, f"camera.fov_rad must be in (0.1, 3.0), got "
                f"{self.fov_rad}")
        require(0 < self.near_m < self.far_m, "camera needs 0 < near_m < far_m")
        require(self.rate_hz >= 0, "camera.rate_hz must be >= 0")


class EgoCamera:
    """Renders the view from a camera rigidly mounted on the ego car.

    Args:
        client: pybullet client id.
        cfg: Camera parameters.
    """

    def __init__(self, client: int, cfg: CameraConfig) -> None:
        self.client = client
        self.cfg = cfg
        self.projection = p.computeProjectionMatrixFOV(
            math.degrees(cfg.fov_rad), cfg.width / cfg.height, cfg.near_m, cfg.far_m)
        self.background = self._background()
        self._kwargs: dict[str, Any] = dict(
            renderer=p.ER_TINY_RENDERER, flags=p.ER_NO_SEGMENTATION_MASK,
            lightDirection=list(cfg.light_direction), lightColor=list(cfg.light_color),
            lightAmbientCoeff=cfg.ambient, lightDiffuseCoeff=cfg.diffuse,
            lightSpecularCoeff=cfg.specular, shadow=0, physicsClientId=client)

    def _background(self, top: tuple[int, int, int] = (110, 160, 220),
                    horizon: tuple[int, int, int] = (200, 215, 230),
                    ground: tuple[int, int, int] = (96, 110, 92)) -> Image:
        """Sky above the horizon, distant haze below it (for pixels nothing covers)."""
        cfg = self.cfg
        h = cfg.height
        sky = textures.sky_gradient(h, cfg.width, top, horizon)
        rows = (np.arange(h) + 0.5) / h
        elevation = np.arctan(np.tan(cfg.fov_rad / 2.0) * (1.0 - 2.0 * rows)) - cfg.pitch_rad
        sky[elevation < 0.0] = ground
        return sky

    def set_conditions(self, light_direction: tuple[float, float, float],
                       light_color: tuple[float, float, float], ambient: float, diffuse: float,
                       sky_top: tuple[int, int, int], sky_horizon: tuple[int, int, int],
                       ground: tuple[int, int, int]) -> None:
        """Change lighting and background colours (per episode)."""
        self._kwargs.update(lightDirection=list(light_direction), lightColor=list(light_color),
                            lightAmbientCoeff=ambient, lightDiffuseCoeff=diffuse)
        self.background = self._background(sky_top, sky_horizon, ground)

    def pose(self, x: float, y: float, z: float, yaw: float) -> tuple[list[float], list[float]]:
        """Eye and target points of the camera on a car at (x, y, z) with heading ``yaw``."""
        eye = list(vehicle_to_world(x, y, z, yaw, self.cfg.mount_xyz_m))
        c, s = math.cos(yaw), math.sin(yaw)
        cp = math.cos(self.cfg.pitch_rad)
        target = [eye[0] + c * cp, eye[1] + s * cp, eye[2] - math.sin(self.cfg.pitch_rad)]
        return eye, target

    def render(self, x: float, y: float, z: float, yaw: float, depth: bool = False,
               segmentation: bool = False) -> CameraFrame:
        """Render a frame from the car pose (base at height ``z``).

        Args:
            x, y, z, yaw: Car pose [m, rad].
            depth: Also return metric depth.
            segmentation: Also return the pybullet body id of every pixel (-1: nothing).

        Returns:
            The RGB image (H, W, 3) uint8, and depth (H, W) float32 [m] (``far_m`` where
            nothing was hit) and body ids (H, W) int32 when asked for.
        """
        eye, target = self.pose(x, y, z, yaw)
        view = p.computeViewMatrix(eye, target, [0.0, 0.0, 1.0])
        cfg = self.cfg
        kwargs = self._kwargs if not segmentation else {**self._kwargs, "flags": 0}
        _, _, rgba, zbuf, seg = p.getCameraImage(cfg.width, cfg.height, view, self.projection,
                                                 **kwargs)
        rgb = np.asarray(rgba, dtype=np.uint8).reshape(cfg.height, cfg.width, 4)[:, :, :3]
        zbuf = np.asarray(zbuf, dtype=np.float32).reshape(cfg.height, cfg.width)
        empty = zbuf >= 1.0
        rgb = np.where(empty[:, :, None], self.background, rgb)
        frame = CameraFrame(rgb)
        if depth:
            near, far = cfg.near_m, cfg.far_m
            # Undo the perspective depth-buffer encoding: z_ndc in [0, 1] -> metres.
            metres = far * near / (far - (far - near) * zbuf)
            frame.depth_m = np.where(empty, far, metres).astype(np.float32)
        if segmentation:
            frame.body_ids = np.asarray(seg, dtype=np.int32).reshape(cfg.height, cfg.width)
        return frame


@dataclass
class CameraFrame:
    """One rendered frame: RGB, and optionally depth [m] and per-pixel body ids."""

    rgb: Image
    depth_m: NDArray[Any] | None = None
    body_ids: NDArray[Any] | None = None
