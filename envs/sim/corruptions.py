"""Image corruptions of rendered camera frames, for robustness under held-out visual conditions.

Each corruption is a pure function ``(img, severity, rng) -> img`` on a uint8 RGB image of
shape ``(H, W, 3)`` (any size; the camera renders 84x84 by default) at a severity in
``1..5``, in the spirit of the ImageNet-C benchmark but with parameters chosen for small,
synthetic driving frames. All randomness comes from the ``np.random.Generator`` passed by
the caller, so the same generator state gives the same output. The input array is never
modified in place.

The per-severity parameters live in the module-level ``*_`` tables below (index
``severity - 1``). Sizes in pixels are given for an 84 px reference frame and scaled with
the image size, so that a corruption looks alike at any resolution.

>>> rng = np.random.default_rng(0)
>>> foggy = apply_corruption(frame, "fog", 3, rng)
>>> corrupt = Corruptor(CorruptionConfig(name="rain", severity=2))
>>> wet = corrupt(frame, rng)
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from common.config import require

#: An RGB image (H, W, 3) uint8 (dtype left open for numpy's typing of cv2 results).
Image = NDArray[Any]

#: Signature shared by all corruptions: ``(img, severity, rng) -> corrupted img``.
CorruptionFn = Callable[[Image, int, np.random.Generator], Image]

#: Valid severities, mildest first.
SEVERITIES: tuple[int, ...] = (1, 2, 3, 4, 5)

#: Side of the reference frame [px] in which pixel sizes and counts below are given.
REFERENCE_SIZE_PX = 84

# --- gaussian_noise -------------------------------------------------------------------
#: Standard deviation of additive i.i.d. Gaussian noise per pixel and channel [8-bit levels].
NOISE_SIGMA = (8.0, 14.0, 21.0, 29.0, 38.0)

# --- motion_blur ----------------------------------------------------------------------
#: Length of the linear blur kernel [px in an 84 px wide frame; scaled with the width].
MOTION_BLUR_LENGTH_PX = (3.0, 5.0, 7.0, 10.0, 14.0)
#: The blur direction is drawn uniformly within +- this angle of the horizontal [deg].
MOTION_BLUR_MAX_ANGLE_DEG = 15.0

# --- fog ------------------------------------------------------------------------------
#: Haze opacity at the top row of the image [0..1]; it falls towards the bottom.
FOG_ALPHA_TOP = (0.22, 0.36, 0.50, 0.63, 0.75)
#: Fraction of the top opacity lost at the bottom row (linear in the row) [0..1].
FOG_BOTTOM_FALLOFF = 0.5
#: Relative amplitude of the smooth random density field, multiplying the opacity [-].
FOG_DENSITY_VARIATION = 0.25
#: Cells per side of the random grid that is bicubically upsampled to the density field.
FOG_GRID_CELLS = 4
#: Upper bound of the haze opacity anywhere [0..1].
FOG_MAX_ALPHA = 0.95
#: Haze colour, a slightly bluish grey-white [RGB 8-bit levels].
FOG_COLOR_RGB = (205.0, 209.0, 214.0)

# --- low_light ------------------------------------------------------------------------
#: Gamma exponent applied to intensities in [0, 1] (> 1 darkens the mid-tones) [-].
LOW_LIGHT_GAMMA = (1.2, 1.5, 1.9, 2.4, 3.0)
#: Overall exposure factor after the gamma curve [-].
LOW_LIGHT_GAIN = (0.90, 0.75, 0.60, 0.47, 0.36)
#: Fraction of colour removed (blend towards luminance), as in scotopic vision [0..1].
LOW_LIGHT_DESATURATION = (0.10, 0.20, 0.30, 0.40, 0.50)
#: Standard deviation of the additive sensor noise [8-bit levels].
LOW_LIGHT_NOISE_SIGMA = (2.0, 3.5, 5.0, 6.5, 8.0)

# --- rain -----------------------------------------------------------------------------
#: Number of rain streaks per 84x84 px of image area (scaled with the area) [-].
RAIN_STREAKS = (15, 30, 50, 80, 120)
#: Streak length [fraction of the image height].
RAIN_LENGTH = (0.08, 0.10, 0.12, 0.14, 0.16)
#: Opacity of a streak at its centre line [0..1].
RAIN_OPACITY = (0.35, 0.40, 0.45, 0.50, 0.55)
#: Brightness factor of the background (overcast sky) [-].
RAIN_DARKEN = (0.95, 0.90, 0.85, 0.80, 0.75)
#: Gaussian blur of the background (water on the lens) [px sigma in an 84 px frame].
RAIN_BLUR_SIGMA_PX = (0.0, 0.3, 0.5, 0.7, 0.9)
#: The common slant of the streaks is drawn within +- this angle of the vertical [deg].
RAIN_MAX_SLANT_DEG = 20.0
#: Per-streak jitter of the slant around the common one [deg, uniform +-].
RAIN_SLANT_JITTER_DEG = 3.0
#: Streak colour [RGB 8-bit levels].
RAIN_COLOR_RGB = (225.0, 228.0, 235.0)

# --- jpeg -----------------------------------------------------------------------------
#: JPEG quality passed to ``cv2.imencode`` [0..100, higher is better].
JPEG_QUALITY = (70, 40, 25, 15, 8)


def check_severity(severity: int) -> int:
    """Validate a severity.

    Args:
        severity: The requested severity.

    Returns:
        The severity as a plain ``int``.

    Raises:
        ValueError: If ``severity`` is not an integer in ``1..5``.
    """
    if isinstance(severity, bool) or not isinstance(severity, int | np.integer) or not (
            SEVERITIES[0] <= int(severity) <= SEVERITIES[-1]):
        raise ValueError(f"corruption severity must be an int in "
                         f"{SEVERITIES[0]}..{SEVERITIES[-1]}, got {severity!r}")
    return int(severity)


def _check_image(img: Image) -> None:
    """Raise ``ValueError`` unless ``img`` is a non-empty uint8 array of shape (H, W, 3)."""
    if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 \
            or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
        desc = (f"{img.dtype} array of shape {img.shape}" if isinstance(img, np.ndarray)
                else type(img).__name__)
        raise ValueError(f"corruptions need a uint8 RGB image of shape (H, W, 3), got {desc}")


def _to_uint8(x: NDArray[Any]) -> Image:
    """Round a float image to the nearest 8-bit level, clipping to ``[0, 255]``."""
    return np.clip(np.rint(x), 0.0, 255.0).astype(np.uint8)


def _scale(img: Image) -> float:
    """Size of ``img`` relative to the 84 px reference frame (geometric mean of H and W)."""
    return math.sqrt(img.shape[0] * img.shape[1]) / REFERENCE_SIZE_PX


def gaussian_noise(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """Add i.i.d. Gaussian noise (sensor read noise at low exposure).

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``NOISE_SIGMA``).
        rng: Source of the noise.

    Returns:
        A new uint8 image of the same shape.
    """
    s = check_severity(severity)
    _check_image(img)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _to_uint8(img.astype(np.float32) + np.float32(NOISE_SIGMA[s - 1]) * noise)


def _motion_kernel(length_px: float, angle_deg: float) -> NDArray[np.float32]:
    """A normalised line kernel of ``length_px`` pixels at ``angle_deg`` from the horizontal."""
    half = max(1, round((length_px - 1.0) / 2.0))
    size = 2 * half + 1
    canvas = np.zeros((size, size), np.uint8)
    dx = half * math.cos(math.radians(angle_deg))
    dy = half * math.sin(math.radians(angle_deg))
    shift = 4  # sub-pixel end points (1/16 px)
    f = float(1 << shift)
    p0 = (round((half - dx) * f), round((half - dy) * f))
    p1 = (round((half + dx) * f), round((half + dy) * f))
    cv2.line(canvas, p0, p1, 255, 1, cv2.LINE_AA, shift)
    kernel = canvas.astype(np.float32)
    return kernel / kernel.sum()


def motion_blur(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """Blur along a near-horizontal line (camera shake or fast yaw).

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``MOTION_BLUR_LENGTH_PX``).
        rng: Source of the blur direction.

    Returns:
        A new uint8 image of the same shape.
    """
    s = check_severity(severity)
    _check_image(img)
    angle = float(rng.uniform(-MOTION_BLUR_MAX_ANGLE_DEG, MOTION_BLUR_MAX_ANGLE_DEG))
    length = MOTION_BLUR_LENGTH_PX[s - 1] * img.shape[1] / REFERENCE_SIZE_PX
    kernel = _motion_kernel(length, angle)
    out: Image = cv2.filter2D(img, -1, kernel, borderType=cv2.BORDER_REFLECT_101)
    return out


def fog(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """Blend towards a grey-white haze, denser towards the top and patchy.

    The opacity is ``FOG_ALPHA_TOP`` at the top row, falling linearly by
    ``FOG_BOTTOM_FALLOFF`` to the bottom row, times a smooth random density field
    ``1 +- FOG_DENSITY_VARIATION`` (a bicubically upsampled random grid).

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``FOG_ALPHA_TOP``).
        rng: Source of the density field.

    Returns:
        A new uint8 image of the same shape.
    """
    s = check_severity(severity)
    _check_image(img)
    h, w = img.shape[:2]
    grid = rng.uniform(-1.0, 1.0, (FOG_GRID_CELLS, FOG_GRID_CELLS)).astype(np.float32)
    field = cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC).reshape(h, w)
    rows = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None] if h > 1 \
        else np.zeros((1, 1), np.float32)
    profile = 1.0 - FOG_BOTTOM_FALLOFF * rows
    alpha = FOG_ALPHA_TOP[s - 1] * profile * (1.0 + FOG_DENSITY_VARIATION * field)
    alpha = np.clip(alpha, 0.0, FOG_MAX_ALPHA).astype(np.float32)[:, :, None]
    haze = np.asarray(FOG_COLOR_RGB, np.float32)
    x = img.astype(np.float32)
    return _to_uint8(x + alpha * (haze - x))


@functools.lru_cache(maxsize=len(SEVERITIES))
def _low_light_lut(severity: int) -> NDArray[np.uint8]:
    """Lookup table of the gamma-and-gain tone curve of ``low_light`` at ``severity``."""
    levels = np.arange(256, dtype=np.float64) / 255.0
    curve = LOW_LIGHT_GAIN[severity - 1] * levels ** LOW_LIGHT_GAMMA[severity - 1]
    lut: NDArray[np.uint8] = _to_uint8(255.0 * curve)
    lut.setflags(write=False)
    return lut


def low_light(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """Night-like exposure: gamma darkening, loss of colour and sensor noise.

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``LOW_LIGHT_GAMMA`` and the tables after it).
        rng: Source of the sensor noise.

    Returns:
        A new uint8 image of the same shape.
    """
    s = check_severity(severity)
    _check_image(img)
    dark = cv2.LUT(img, _low_light_lut(s)).astype(np.float32)
    luma = cv2.cvtColor(dark, cv2.COLOR_RGB2GRAY)[:, :, None]
    desat = np.float32(LOW_LIGHT_DESATURATION[s - 1])
    dark += desat * (luma - dark)
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    return _to_uint8(dark + np.float32(LOW_LIGHT_NOISE_SIGMA[s - 1]) * noise)


def rain(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """Rain: thin slanted bright streaks over a slightly darkened, blurred scene.

    The streaks share one slant drawn within ``+-RAIN_MAX_SLANT_DEG`` of the vertical
    (wind), each jittered by ``+-RAIN_SLANT_JITTER_DEG``; their positions are uniform over
    the image (including streaks entering from outside it).

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``RAIN_STREAKS`` and the tables after it).
        rng: Source of the slant and the streak positions.

    Returns:
        A new uint8 image of the same shape.
    """
    s = check_severity(severity)
    _check_image(img)
    h, w = img.shape[:2]
    scale = _scale(img)

    # Background: overcast darkening and a slight blur from water on the lens.
    background = img
    sigma = RAIN_BLUR_SIGMA_PX[s - 1] * scale
    if sigma > 0.0:
        background = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101)
    x = background.astype(np.float32) * np.float32(RAIN_DARKEN[s - 1])

    # Streaks, drawn as anti-aliased lines into a single-channel opacity mask.
    count = max(1, round(RAIN_STREAKS[s - 1] * h * w / REFERENCE_SIZE_PX**2))
    length = max(2.0, RAIN_LENGTH[s - 1] * h)
    slant = rng.uniform(-RAIN_MAX_SLANT_DEG, RAIN_MAX_SLANT_DEG)
    angles = np.radians(slant + rng.uniform(-RAIN_SLANT_JITTER_DEG, RAIN_SLANT_JITTER_DEG,
                                            count))
    dx = length * np.sin(angles)
    dy = length * np.cos(angles)
    margin = abs(length * math.sin(math.radians(RAIN_MAX_SLANT_DEG + RAIN_SLANT_JITTER_DEG)))
    x0 = rng.uniform(-margin, w + margin, count)
    y0 = rng.uniform(-length, h, count)
    x1, y1 = x0 + dx, y0 + dy
    mask = np.zeros((h, w), np.uint8)
    for xa, ya, xb, yb in zip(np.rint(x0).astype(int).tolist(), np.rint(y0).astype(int).tolist(),
                              np.rint(x1).astype(int).tolist(), np.rint(y1).astype(int).tolist(),
                              strict=True):
        cv2.line(mask, (xa, ya), (xb, yb), 255, 1, cv2.LINE_AA)
    alpha = mask.astype(np.float32)[:, :, None] * np.float32(RAIN_OPACITY[s - 1] / 255.0)
    streak = np.asarray(RAIN_COLOR_RGB, np.float32)
    return _to_uint8(x + alpha * (streak - x))


def jpeg(img: Image, severity: int, rng: np.random.Generator) -> Image:
    """JPEG compression artefacts (blocking, ringing, colour bleeding).

    Deterministic; ``rng`` is accepted for the common signature and not used.

    Args:
        img: uint8 RGB image (H, W, 3).
        severity: Strength in ``1..5`` (see ``JPEG_QUALITY``).
        rng: Unused.

    Returns:
        A new uint8 image of the same shape.

    Raises:
        RuntimeError: If OpenCV fails to encode or decode the image.
    """
    s = check_severity(severity)
    _check_image(img)
    bgr = cv2.cvtColor(img, cv2.COLOR_RGB2BGR)  # OpenCV's codecs expect BGR order
    ok, buf = cv2.imencode(".jpg", bgr, [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY[s - 1]])
    if not ok:
        raise RuntimeError("cv2.imencode failed to JPEG-encode the image")
    decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
    if decoded is None:
        raise RuntimeError("cv2.imdecode failed to decode the JPEG buffer")
    out: Image = cv2.cvtColor(decoded, cv2.COLOR_BGR2RGB)
    return out


#: All corruptions by name.
CORRUPTIONS: dict[str, CorruptionFn] = {
    "gaussian_noise": gaussian_noise,
    "motion_blur": motion_blur,
    "fog": fog,
    "low_light": low_light,
    "rain": rain,
    "jpeg": jpeg,
}


def apply_corruption(img: Image, name: str, severity: int, rng: np.random.Generator) -> Image:
    """Apply the corruption ``name`` at ``severity``.

    Args:
        img: uint8 RGB image (H, W, 3); left unchanged.
        name: A key of :data:`CORRUPTIONS`.
        severity: Strength in ``1..5``.
        rng: Source of any randomness.

    Returns:
        A new corrupted uint8 image of the same shape.

    Raises:
        ValueError: For an unknown name, a bad severity or a bad image.
    """
    fn = CORRUPTIONS.get(name)
    if fn is None:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    return fn(img, severity, rng)


@dataclass(frozen=True)
class CorruptionConfig:
    """Which corruption to apply to camera frames.

    Attributes:
        name: A key of :data:`CORRUPTIONS`, or ``None`` for clean frames.
        severity: Strength in ``1..5`` (ignored when ``name`` is ``None``, but still
            validated).
    """

    name: str | None = None
    severity: int = 1

    def __post_init__(self) -> None:
        require(self.name is None or self.name in CORRUPTIONS,
                f"corruption.name has invalid value {self.name!r}; valid choices: null, "
                + ", ".join(repr(n) for n in CORRUPTIONS))
        require(not isinstance(self.severity, bool) and isinstance(self.severity, int)
                and SEVERITIES[0] <= self.severity <= SEVERITIES[-1],
                f"corruption.severity must be an int in {SEVERITIES[0]}..{SEVERITIES[-1]} "
                f"(valid choices: {', '.join(map(str, SEVERITIES))}), got {self.severity!r}")


class Corruptor:
    """Applies the corruption of a :class:`CorruptionConfig` to frames.

    Args:
        cfg: The corruption to apply; ``cfg.name is None`` makes this a no-op.
    """

    def __init__(self, cfg: CorruptionConfig) -> None:
        self.cfg = cfg
        self._fn: CorruptionFn | None = None if cfg.name is None else CORRUPTIONS[cfg.name]

    @property
    def enabled(self) -> bool:
        """Whether frames are corrupted at all."""
        return self._fn is not None

    def __call__(self, img: Image, rng: np.random.Generator) -> Image:
        """Corrupt one frame.

        Args:
            img: uint8 RGB image (H, W, 3); left unchanged.
            rng: Source of any randomness (not drawn from when disabled).

        Returns:
            The corrupted frame, or ``img`` itself (no copy) when disabled.
        """
        if self._fn is None:
            return img
        return self._fn(img, self.cfg.severity, rng)


__all__ = [
    "CORRUPTIONS",
    "REFERENCE_SIZE_PX",
    "SEVERITIES",
    "CorruptionConfig",
    "CorruptionFn",
    "Corruptor",
    "Image",
    "apply_corruption",
    "check_severity",
    "fog",
    "gaussian_noise",
    "jpeg",
    "low_light",
    "motion_blur",
    "rain",
]
