"""The ego camera: an RGB image rendered by pybullet from the car's pose.

Frames come from pybullet's CPU TinyRenderer, or from its EGL plugin (hardware OpenGL
without a display) on a GPU machine: :func:`select_renderer` resolves the configured
``camera.renderer`` for one pybullet client. Under EGL the projection is shifted half a
pixel (:func:`tiny_pixel_grid`) so that both renderers sample the same points.
"""

from __future__ import annotations

import logging
import math
import os
import pkgutil
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pybullet as p
from numpy.typing import NDArray

from common.config import require
from envs.sim import textures
from envs.sim.vehicle import vehicle_to_world

#: An RGB image (H, W, 3) uint8 (dtype left open for numpy's typing of cv2 results).
Image = NDArray[Any]

#: Renderer choices of ``camera.renderer``.
RendererName = Literal["auto", "tiny", "egl"]
#: Environment variable that makes ``auto`` try EGL without an NVIDIA device node.
TRY_EGL_ENV = "BULLETDRIVE_TRY_EGL"

render_log = logging.getLogger("bulletdrive.render")
#: Fallback reasons already logged (each is logged once per process, not per env).
_logged_fallbacks: set[str] = set()


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
        renderer: ``tiny`` (pybullet's CPU TinyRenderer), ``egl`` (pybullet's EGL plugin,
            hardware OpenGL; an error when it does not load) or ``auto`` (EGL when a GPU
            seems present and the plugin loads, else tiny).
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
    renderer: RendererName = "auto"

    def __post_init__(self) -> None:
        require(8 <= self.width <= 1024 and 8 <= self.height <= 1024,
                f"camera size must be within 8..1024 px, got {self.width}x{self.height}")
        require(0.1 < self.fov_rad < 3.0, f"camera.fov_rad must be in (0.1, 3.0), got "
                f"{self.fov_rad}")
        require(0 < self.near_m < self.far_m, "camera needs 0 < near_m < far_m")
        require(self.rate_hz >= 0, "camera.rate_hz must be >= 0")


def gpu_seems_present() -> bool:
    """Whether EGL is worth trying: an NVIDIA device node, or ``BULLETDRIVE_TRY_EGL=1``.

    Trying the plugin on a machine without a GPU is not free (Mesa may fall back to a
    slow software rasteriser, or print driver noise), so ``auto`` only tries it here.
    """
    return os.path.exists("/dev/nvidia0") or os.environ.get(TRY_EGL_ENV, "") == "1"


def load_egl_plugin(client: int) -> None:
    """Load pybullet's EGL renderer plugin into a client.

    Raises:
        RuntimeError: The plugin is missing or fails to load (the message names EGL).
    """
    egl = pkgutil.get_loader("eglRenderer")
    filename = getattr(egl, "get_filename", None) if egl is not None else None
    if filename is None:
        raise RuntimeError("EGL renderer plugin not found: pybullet's eglRenderer module "
                           "is not installed")
    plugin = p.loadPlugin(filename(), "_eglRendererPlugin", physicsClientId=client)
    if plugin < 0:
        raise RuntimeError("EGL renderer plugin failed to load (no usable EGL device; a GPU "
                           "with EGL drivers is needed); use camera.renderer=tiny or auto")


def _log_fallback_once(reason: str) -> None:
    if reason not in _logged_fallbacks:
        _logged_fallbacks.add(reason)
        render_log.info("camera.renderer=auto uses the tiny renderer: %s", reason)


def select_renderer(client: int, name: str) -> Literal["tiny", "egl"]:
    """Resolve ``camera.renderer`` for a client, loading the EGL plugin when chosen.

    Args:
        client: pybullet client id.
        name: ``auto``, ``tiny`` or ``egl``.

    Returns:
        The renderer in use: ``egl`` (plugin loaded) or ``tiny``.

    Raises:
        RuntimeError: ``egl`` requested but the plugin does not load.
    """
    if name == "tiny":
        return "tiny"
    if name == "egl":
        load_egl_plugin(client)
        return "egl"
    if not gpu_seems_present():
        _log_fallback_once(f"no GPU found (/dev/nvidia0 missing; set {TRY_EGL_ENV}=1 to "
                           "try EGL anyway)")
        return "tiny"
    try:
        load_egl_plugin(client)
    except RuntimeError as exc:
        _log_fallback_once(str(exc))
        return "tiny"
    return "egl"


def tiny_pixel_grid(projection: Sequence[float], width: int, height: int) -> tuple[float, ...]:
    """Shift an OpenGL projection so that its pixels sample where TinyRenderer's do.

    OpenGL samples pixel (column i, row j from the top) at its centre (i + 0.5, j + 0.5);
    pybullet's TinyRenderer at (i, j + 1), half a pixel left of and below the centre.
    Moving the image half a pixel right and up makes EGL frames line up with tiny ones
    (without it every edge differs by half a pixel, which at 84 x 84 px is most of the
    difference between the renderers' frames).

    Args:
        projection: Column-major 4 x 4 perspective matrix (``computeProjectionMatrixFOV``).
        width / height: Image size [px].

    Returns:
        The shifted matrix, column-major.
    """
    m = list(projection)
    # Perspective: w_clip = -z_eye (m[11] = -1), so adding s * w_clip to x_clip shifts
    # x_ndc by s; a pixel is 2 / width in NDC, half a pixel 1 / width.
    m[8] += (1.0 / width) * m[11]
    m[9] += (1.0 / height) * m[11]
    return tuple(m)


class EgoCamera:
    """Renders the view from a camera rigidly mounted on the ego car.

    Args:
        client: pybullet client id.
        cfg: Camera parameters.
        renderer: ``tiny`` or ``egl`` (the EGL plugin must already be loaded into
            ``client``, see :func:`select_renderer`); ``cfg.renderer`` is not consulted.
    """

    def __init__(self, client: int, cfg: CameraConfig,
                 renderer: Literal["tiny", "egl"] = "tiny") -> None:
        self.client = client
        self.cfg = cfg
        self.projection = p.computeProjectionMatrixFOV(
            math.degrees(cfg.fov_rad), cfg.width / cfg.height, cfg.near_m, cfg.far_m)
        if renderer == "egl":
            self.projection = tiny_pixel_grid(self.projection, cfg.width, cfg.height)
        self.background = self._background()
        self.renderer = renderer
        self._kwargs: dict[str, Any] = dict(
            renderer=p.ER_BULLET_HARDWARE_OPENGL if renderer == "egl" else p.ER_TINY_RENDERER,
            flags=p.ER_NO_SEGMENTATION_MASK,
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
