"""Camera-frame corruptions: shapes, purity, determinism, strength by severity, validation."""

from __future__ import annotations

from itertools import pairwise
from typing import Any

import cv2
import numpy as np
import pytest
from numpy.typing import NDArray

from common.config import ConfigError
from envs.sim.corruptions import (
    CORRUPTIONS,
    SEVERITIES,
    CorruptionConfig,
    Corruptor,
    apply_corruption,
)

NAMES = tuple(CORRUPTIONS)
SEEDS = range(4)


def _scene(h: int = 84, w: int = 84) -> NDArray[Any]:
    """A textured test frame: checkerboard, horizontal ramp and noise in the three channels."""
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.empty((h, w, 3), np.uint8)
    img[..., 0] = 40 + 120 * ((xx // 4 + yy // 4) % 2)
    img[..., 1] = 60 + (120 * xx) // max(1, w - 1)
    img[..., 2] = np.random.default_rng(123).integers(20, 160, (h, w))
    return img


def _mad(a: NDArray[Any], b: NDArray[Any]) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).mean())


def _mean_mad(name: str, severity: int, img: NDArray[Any]) -> float:
    """Mean absolute difference from ``img``, averaged over a few seeds."""
    outs = [apply_corruption(img, name, severity, np.random.default_rng(s)) for s in SEEDS]
    return float(np.mean([_mad(o, img) for o in outs]))


def _laplacian_var(img: NDArray[Any]) -> float:
    gray = cv2.cvtColor(img, cv2.COLOR_RGB2GRAY)
    return float(cv2.Laplacian(gray, cv2.CV_64F).var())


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("shape", [(84, 84), (48, 96), (7, 5)])
def test_shape_dtype_and_input_untouched(name: str, shape: tuple[int, int]) -> None:
    img = _scene(*shape)
    before = img.copy()
    for severity in SEVERITIES:
        out = apply_corruption(img, name, severity, np.random.default_rng(0))
        assert out.shape == img.shape and out.dtype == np.uint8
        assert out is not img and not np.shares_memory(out, img)
        np.testing.assert_array_equal(img, before)


@pytest.mark.parametrize("name", NAMES)
def test_deterministic_given_seed(name: str) -> None:
    img = _scene()
    for severity in (1, 5):
        a = apply_corruption(img, name, severity, np.random.default_rng(7))
        b = apply_corruption(img, name, severity, np.random.default_rng(7))
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("name", ["gaussian_noise", "motion_blur", "fog", "low_light", "rain"])
def test_random_corruptions_depend_on_rng(name: str) -> None:
    img = _scene()
    a = apply_corruption(img, name, 3, np.random.default_rng(1))
    b = apply_corruption(img, name, 3, np.random.default_rng(2))
    assert not np.array_equal(a, b)


@pytest.mark.parametrize("name", NAMES)
def test_strength_grows_with_severity(name: str) -> None:
    img = _scene()
    mads = [_mean_mad(name, s, img) for s in SEVERITIES]
    assert mads[0] > 0.0
    if name in ("gaussian_noise", "fog", "low_light"):
        assert all(b > a for a, b in pairwise(mads)), mads
    else:
        assert all(b >= a for a, b in pairwise(mads)), mads
        assert mads[-1] > mads[0], mads


def test_low_light_darkens() -> None:
    img = _scene()
    means = [float(apply_corruption(img, "low_light", s, np.random.default_rng(0)).mean())
             for s in SEVERITIES]
    assert means[0] < float(img.mean())
    assert all(b < a for a, b in pairwise(means)), means


def test_fog_brightens_towards_grey_and_lowers_contrast() -> None:
    img = _scene()
    outs = [apply_corruption(img, "fog", s, np.random.default_rng(0)) for s in SEVERITIES]
    means = [float(img.mean())] + [float(o.mean()) for o in outs]
    stds = [float(img.std())] + [float(o.std()) for o in outs]
    assert all(b > a for a, b in pairwise(means)), means
    assert all(b < a for a, b in pairwise(stds)), stds
    assert means[-1] < 255.0 * 0.9  # a grey haze, not a white-out
    # Denser at the top than at the bottom.
    diff = np.abs(outs[2].astype(np.float64) - img).mean(axis=(1, 2))
    assert diff[:20].mean() > diff[-20:].mean()


def test_motion_blur_removes_high_frequencies() -> None:
    img = _scene()
    clean = _laplacian_var(img)
    lap = [_laplacian_var(apply_corruption(img, "motion_blur", s, np.random.default_rng(0)))
           for s in SEVERITIES]
    assert lap[0] < clean
    assert lap[-1] < lap[0] and lap[-1] < 0.1 * clean


def test_gaussian_noise_is_zero_mean() -> None:
    img = np.full((84, 84, 3), 128, np.uint8)
    out = apply_corruption(img, "gaussian_noise", 3, np.random.default_rng(0))
    assert abs(float(out.mean()) - 128.0) < 1.0 and float(out.std()) > 10.0


def test_rain_adds_bright_streaks() -> None:
    img = np.full((84, 84, 3), 80, np.uint8)
    out = apply_corruption(img, "rain", 3, np.random.default_rng(0))
    assert int(out.max()) > 120  # streaks are brighter than the scene
    assert float(np.median(out)) < 80  # the background is darkened


def test_jpeg_severity_matters_and_ignores_rng() -> None:
    img = _scene()
    a = apply_corruption(img, "jpeg", 1, np.random.default_rng(0))
    e = apply_corruption(img, "jpeg", 5, np.random.default_rng(0))
    assert not np.array_equal(a, e)
    assert _mad(e, img) > _mad(a, img)
    np.testing.assert_array_equal(e, apply_corruption(img, "jpeg", 5, np.random.default_rng(9)))


def test_unknown_name_lists_valid() -> None:
    with pytest.raises(ValueError, match="unknown corruption 'snow'; valid: gaussian_noise"):
        apply_corruption(_scene(), "snow", 1, np.random.default_rng(0))


@pytest.mark.parametrize("severity", [0, 6, -1, 2.0, True, "3"])
@pytest.mark.parametrize("name", NAMES)
def test_bad_severity_lists_range(name: str, severity: Any) -> None:
    with pytest.raises(ValueError, match=r"severity must be an int in 1\.\.5"):
        apply_corruption(_scene(), name, severity, np.random.default_rng(0))


def test_numpy_integer_severity_accepted() -> None:
    severity: Any = np.int64(2)  # e.g. drawn with rng.integers
    out = apply_corruption(_scene(), "fog", severity, np.random.default_rng(0))
    assert out.shape == (84, 84, 3)


@pytest.mark.parametrize("bad", [np.zeros((84, 84), np.uint8), np.zeros((84, 84, 4), np.uint8),
                                 np.zeros((84, 84, 3), np.float32)])
def test_bad_image_rejected(bad: NDArray[Any]) -> None:
    with pytest.raises(ValueError, match=r"uint8 RGB image of shape \(H, W, 3\)"):
        apply_corruption(bad, "fog", 1, np.random.default_rng(0))


def test_config_validation() -> None:
    assert CorruptionConfig() == CorruptionConfig(name=None, severity=1)
    assert CorruptionConfig(name="rain", severity=5).severity == 5
    with pytest.raises(ConfigError, match="valid choices: null, 'gaussian_noise'"):
        CorruptionConfig(name="snow")
    with pytest.raises(ConfigError, match=r"1\.\.5 \(valid choices: 1, 2, 3, 4, 5\)"):
        CorruptionConfig(name="fog", severity=0)
    with pytest.raises(ConfigError, match="severity"):
        CorruptionConfig(severity=9)


def test_corruptor_noop_and_active() -> None:
    img = _scene()
    rng = np.random.default_rng(0)
    off = Corruptor(CorruptionConfig())
    assert not off.enabled
    assert off(img, rng) is img
    assert rng.bit_generator.state == np.random.default_rng(0).bit_generator.state  # untouched
    on = Corruptor(CorruptionConfig(name="gaussian_noise", severity=2))
    assert on.enabled
    out = on(img, np.random.default_rng(3))
    np.testing.assert_array_equal(
        out, apply_corruption(img, "gaussian_noise", 2, np.random.default_rng(3)))
