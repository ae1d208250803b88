"""Procedural textures drawn with OpenCV, and their on-disk cache for pybullet.

Textures are RGB uint8 images drawn from an explicit random generator, so the same
seed always gives the same pixels. pybullet loads textures from files, so
:func:`texture_file` writes each image once, under a name derived from its content, to
a per-user cache folder.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

#: An RGB image (H, W, 3) uint8 (dtype left open for numpy's typing of cv2 results).
Image = NDArray[Any]

#: Length of one road-surface quad along the lane [m]: one dash plus one gap.
DASH_PERIOD_M = 12.0
#: Length of a painted dash [m].
DASH_LENGTH_M = 4.0
#: Width of a painted line [m] (wide enough to stay visible at 84 x 84 px).
LINE_WIDTH_M = 0.25


def _noise(rng: np.random.Generator, h: int, w: int, blur: int) -> NDArray[Any]:
    n: NDArray[Any] = rng.standard_normal((h, w)).astype(np.float32)
    if blur > 1:
        blurred: NDArray[Any] = cv2.GaussianBlur(n, (0, 0), blur, borderType=cv2.BORDER_REFLECT)
        n = blurred / max(float(blurred.std()), 1e-6)
    return n


def asphalt(rng: np.random.Generator, h: int, w: int, base: tuple[int, int, int] = (98, 98, 102),
            ) -> Image:
    """Asphalt: grey base, coarse blotches and fine grain."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    coarse = _noise(rng, h, w, 6) * 4.0
    fine = rng.standard_normal((h, w)).astype(np.float32) * 3.0
    img += (coarse + fine)[:, :, None]
    return np.clip(img, 0, 255).astype(np.uint8)


def grass(rng: np.random.Generator, size: int = 64,
          base: tuple[int, int, int] = (70, 110, 52)) -> Image:
    """Grass verge: green with darker patches."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = base
    img += (_noise(rng, size, size, 4) * 10.0)[:, :, None] * np.array([0.6, 1.0, 0.5])
    img += rng.standard_normal((size, size, 1)).astype(np.float32) * 6.0
    return np.clip(img, 0, 255).astype(np.uint8)


def concrete(rng: np.random.Generator, size: int = 32) -> Image:
    """Concrete barrier: light grey with joints every tile."""
    img = np.empty((size, size, 3), np.float32)
    img[:] = (170, 168, 160)
    img += (_noise(rng, size, size, 2) * 8.0)[:, :, None]
    img[:, :1] -= 40
    return np.clip(img, 0, 255).astype(np.uint8)


def facade(rng: np.random.Generator, base: tuple[int, int, int], h: int = 96, w: int = 64,
           ) -> Image:
    """Building facade: a wall colour with rows of dark windows."""
    img = np.empty((h, w, 3), np.float32)
    img[:] = base
    img += (_noise(rng, h, w, 3) * 6.0)[:, :, None]
    glass = np.array([60, 70, 85], np.float32) + rng.uniform(-10, 10)
    for top in range(6, h - 8, 16):
        for left in range(5, w - 8, 14):
            img[top : top + 9, left : left + 8] = glass + rng.uniform(-8, 8)
    return np.clip(img, 0, 255).astype(np.uint8)


def sky_gradient(h: int, w: int, top: tuple[int, int, int] = (110, 160, 220),
                 horizon: tuple[int, int, int] = (200, 215, 230)) -> Image:
    """A vertical sky gradient used where the camera sees nothing."""
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]
    img = np.asarray(top, np.float32) * (1 - t) + np.asarray(horizon, np.float32) * t
    return np.broadcast_to(img, (h, w, 3)).astype(np.uint8).copy()


def cache_dir() -> Path:
    """Folder for texture files (``$BULLETDRIVE_CACHE`` or the system temp folder)."""
    root = os.environ.get("BULLETDRIVE_CACHE") or os.path.join(
        tempfile.gettempdir(), f"bulletdrive-{os.getuid() if hasattr(os, 'getuid') else 0}")
    path = Path(root) / "textures"
    path.mkdir(parents=True, exist_ok=True)
    return path


def texture_file(img: Image) -> str:
    """Write ``img`` (RGB) as PNG under a content-derived name; return the path.

    Written to a temporary name and renamed, so concurrent workers never read a
    half-written file.
    """
    digest = hashlib.sha1(img.tobytes() + str(img.shape).encode()).hexdigest()[:20]
    path = cache_dir() / f"{digest}.png"
    if not path.exists():
        fd, tmp = tempfile.mkstemp(suffix=".png", dir=path.parent)
        os.close(fd)
        cv2.imwrite(tmp, cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
        os.replace(tmp, path)
    return str(path)
