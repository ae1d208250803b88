"""Batched image augmentations that run on the frames' device.

All functions take float frames ``(B, C, H, W)`` in [0, 1] (C = 3, or a multiple of 3
for frame stacks where noted), draw one set of parameters per sample, and take their
randomness from an explicit ``torch.Generator`` only, so a seeded generator reproduces
a batch exactly and nothing touches the global RNG.

Devices: random parameters (a few numbers per sample) are drawn on the generator's
device and then moved to the frames' device. A CPU generator therefore works for CUDA
frames too and gives the same parameters whatever the frames' device; a CUDA generator
avoids the small host-to-device copy but yields a different random stream.

:func:`horizontal_flip` mirrors frames and keeps labels consistent: steering-dependent
values (lane offset, heading error, steer, ...) change sign, categorical labels swap
left and right classes (e.g. route commands), and dense labels (depth, semantics) are
mirrored with the frames.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.nn import functional as nnf

from common.config import require
from perception.encoders import to_float_nchw

#: Names of the operations an :class:`AugmentConfig` may list, in no particular order.
AUGMENT_OPS: tuple[str, ...] = ("random_shift", "random_resized_crop", "color_jitter", "cutout",
                                "horizontal_flip")

# Rec. 601 luma weights, as used by torchvision's grayscale conversion.
_LUMA = (0.299, 0.587, 0.114)


def _check_frames(x: Tensor, op: str) -> None:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        dtype = x.dtype if isinstance(x, Tensor) else None
        raise ValueError(f"{op} expects float frames (B, C, H, W) in [0, 1], got {shape} "
                         f"of dtype {dtype} (convert uint8 with to_float_nchw)")


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    """``n`` uniform numbers in [0, 1) drawn on the generator's device, moved to ``device``."""
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _uniform(n: int, low: float, high: float, generator: torch.Generator,
             device: torch.device) -> Tensor:
    return low + (high - low) * _rand(n, generator, device)


def random_shift(x: Tensor, pad: int = 4, *, generator: torch.Generator) -> Tensor:
    """Shift each frame by a random whole number of pixels (DrQ): replicate-pad, then crop.

    Args:
        x: Float frames ``(B, C, H, W)``.
        pad: Padding on each side in pixels; shifts are in ``[-pad, pad]`` per axis.
        generator: Source of randomness.

    Returns:
        Shifted frames of the same shape.
    """
    _check_frames(x, "random_shift")
    require(pad >= 0, f"random_shift pad must be >= 0 pixels, got {pad}")
    if pad == 0:
        return x.clone()
    B, _, H, W = x.shape
    padded = nnf.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (B, 2), generator=generator,
                            device=generator.device).to(x.device)
    rows = offsets[:, 0:1] + torch.arange(H, device=x.device)  # (B, H)
    cols = offsets[:, 1:2] + torch.arange(W, device=x.device)  # (B, W)
    batch = torch.arange(B, device=x.device)[:, None, None]
    # Advanced indices on dims 0, 2, 3 around a slice put the indexed dims first:
    # the result is (B, H, W, C).
    out = padded[batch, :, rows[:, :, None], cols[:, None, :]]
    return out.permute(0, 3, 1, 2).contiguous()


def random_resized_crop(x: Tensor, scale: tuple[float, float] = (0.7, 1.0),
                        ratio: tuple[float, float] = (0.9, 1.1), *,
                        generator: torch.Generator,
                        out_size: tuple[int, int] | None = None) -> Tensor:
    """Crop a random box per frame and resize it back, in one ``grid_sample`` call.

    Args:
        x: Float frames ``(B, C, H, W)``.
        scale: Range of the crop's area as a fraction of the frame's area.
        ratio: Range of the crop's aspect ratio relative to the frame's (drawn
            log-uniformly); 1 keeps the frame's aspect.
        generator: Source of randomness.
        out_size: Output ``(H, W)`` in pixels; None keeps the input size.

    Returns:
        Frames ``(B, C, *out_size)``, bilinearly resampled.
    """
    _check_frames(x, "random_resized_crop")
    require(0.0 < scale[0] <= scale[1] <= 1.0,
            f"random_resized_crop scale must satisfy 0 < low <= high <= 1, got {scale}")
    require(0.0 < ratio[0] <= ratio[1], f"random_resized_crop ratio must satisfy "
                                        f"0 < low <= high, got {ratio}")
    B, C, H, W = x.shape
    area = _uniform(B, scale[0], scale[1], generator, x.device)
    log_r = _uniform(B, math.log(ratio[0]), math.log(ratio[1]), generator, x.device)
    r = torch.exp(log_r)
    # Width and height of the crop as fractions of the frame's.
    w_frac = torch.sqrt(area * r).clamp(max=1.0)
    h_frac = torch.sqrt(area / r).clamp(max=1.0)
    # Centre in normalised coordinates [-1, 1], keeping the crop inside the frame.
    cx = (2.0 * _rand(B, generator, x.device) - 1.0) * (1.0 - w_frac)
    cy = (2.0 * _rand(B, generator, x.device) - 1.0) * (1.0 - h_frac)
    theta = torch.zeros(B, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = w_frac
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h_frac
    theta[:, 1, 2] = cy
    out_h, out_w = out_size if out_size is not None else (H, W)
    grid = nnf.affine_grid(theta, [B, C, out_h, out_w], align_corners=False)
    return nnf.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    """Luma of ``(..., 3, H, W)`` frames, keeping a size-1 channel dimension."""
    w = torch.tensor(_LUMA, device=x.device, dtype=x.dtype).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True)


def color_jitter(x: Tensor, brightness: float = 0.4, contrast: float = 0.4,
                 saturation: float = 0.4, *, generator: torch.Generator) -> Tensor:
    """Scale brightness, contrast and saturation by random per-sample factors (no hue).

    Each factor is drawn uniformly from ``[1 - v, 1 + v]``; the adjustments are applied
    in that order and clipped to [0, 1] after each. For frame stacks (C a multiple of 3)
    all frames of one sample get the same factors, so the stack stays consistent in time.

    Args:
        x: Float frames ``(B, C, H, W)`` with C a multiple of 3 (RGB, RGB, ...).
        brightness: Strength ``v`` of the brightness change, in [0, 1].
        contrast: Strength of the contrast change, in [0, 1].
        saturation: Strength of the saturation change, in [0, 1].
        generator: Source of randomness.

    Returns:
        Jittered frames of the same shape.
    """
    _check_frames(x, "color_jitter")
    B, C, H, W = x.shape
    require(C % 3 == 0, f"color_jitter needs RGB channels (a multiple of 3), got C={C}")
    for label, v in (("brightness", brightness), ("contrast", contrast),
                     ("saturation", saturation)):
        require(0.0 <= v <= 1.0, f"color_jitter {label} must be in [0, 1], got {v}")
    # Draw all factors even when a strength is 0, so the stream does not depend on them.
    factors = _uniform(3 * B, -1.0, 1.0, generator, x.device).to(x.dtype).view(3, B, 1, 1, 1, 1)
    b = 1.0 + brightness * factors[0]
    c = 1.0 + contrast * factors[1]
    s = 1.0 + saturation * factors[2]
    y = x.reshape(B, C // 3, 3, H, W)
    y = (y * b).clamp(0.0, 1.0)
    mean_gray = _gray(y).mean(dim=(-3, -2, -1), keepdim=True)
    y = ((y - mean_gray) * c + mean_gray).clamp(0.0, 1.0)
    gray = _gray(y)
    y = ((y - gray) * s + gray).clamp(0.0, 1.0)
    return y.reshape(B, C, H, W)


def cutout(x: Tensor, size_frac: float = 0.25, fill: float = 0.0, *,
           generator: torch.Generator) -> Tensor:
    """Fill one random box per frame with a constant.

    Args:
        x: Float frames ``(B, C, H, W)``.
        size_frac: Box height and width as fractions of the frame's, in [0, 1].
        fill: Value written into the box.
        generator: Source of randomness.

    Returns:
        Frames of the same shape with the boxes filled.
    """
    _check_frames(x, "cutout")
    require(0.0 <= size_frac <= 1.0, f"cutout size_frac must be in [0, 1], got {size_frac}")
    B, _, H, W = x.shape
    box_h, box_w = round(size_frac * H), round(size_frac * W)
    top = torch.floor(_rand(B, generator, x.device) * (H - box_h + 1)).long()
    left = torch.floor(_rand(B, generator, x.device) * (W - box_w + 1)).long()
    rows = torch.arange(H, device=x.device)[None, :]
    cols = torch.arange(W, device=x.device)[None, :]
    in_rows = (rows >= top[:, None]) & (rows < top[:, None] + box_h)  # (B, H)
    in_cols = (cols >= left[:, None]) & (cols < left[:, None] + box_w)  # (B, W)
    mask = (in_rows[:, :, None] & in_cols[:, None, :])[:, None]  # (B, 1, H, W)
    return torch.where(mask, torch.as_tensor(fill, dtype=x.dtype, device=x.device), x)


SwapPairs = tuple[int, int] | Sequence[tuple[int, int]]


def _pairs(spec: SwapPairs) -> list[tuple[int, int]]:
    if len(spec) == 2 and all(isinstance(v, int) for v in spec):
        a, b = spec
        return [(int(a), int(b))]  # type: ignore[arg-type]
    return [(int(p[0]), int(p[1])) for p in spec]  # type: ignore[index]


def _batch_mask(mask: Tensor, like: Tensor) -> Tensor:
    """``mask`` (B,) reshaped to broadcast over ``like`` (B, ...) on its device."""
    return mask.to(like.device).view(-1, *([1] * (like.ndim - 1)))


def horizontal_flip(
    x: Tensor,
    labels: Mapping[str, Tensor],
    flip_keys: Mapping[str, float],
    p: float = 0.5,
    *,
    generator: torch.Generator,
    swap_keys: Mapping[str, SwapPairs] | None = None,
    spatial_keys: Collection[str] = (),
) -> tuple[Tensor, dict[str, Tensor]]:
    """Mirror a random subset of frames left-right and fix their labels to match.

    For the flipped samples only: labels in ``flip_keys`` are multiplied by their
    factor (-1 for signed lateral quantities: lane offset, heading error, steer, yaw
    rate); labels in ``swap_keys`` exchange the given class pairs (integer labels swap
    values, float labels of shape ``(B, ..., K)`` such as one-hot commands swap columns);
    labels in ``spatial_keys`` (dense maps ``(B, ..., W)``: depth, semantics) are
    mirrored along their last axis. Other labels pass through unchanged.

    Args:
        x: Float frames ``(B, C, H, W)``.
        labels: Per-sample labels, each with leading dimension B.
        flip_keys: Label name -> factor applied to flipped samples.
        p: Probability that a sample is flipped.
        generator: Source of randomness.
        swap_keys: Label name -> a class pair ``(a, b)`` or a sequence of pairs, e.g.
            ``{"command": [(1, 2), (4, 5)]}`` for left/right and lane-change left/right.
        spatial_keys: Names of dense labels mirrored with the frames.

    Returns:
        The frames and a new label dict (all input keys present).

    Raises:
        ValueError: If a listed key is missing from ``labels`` (a typo would otherwise
            silently leave a label unflipped) or a label's batch size differs.
    """
    _check_frames(x, "horizontal_flip")
    require(0.0 <= p <= 1.0, f"horizontal_flip p must be in [0, 1], got {p}")
    swap_keys = dict(swap_keys or {})
    listed = [*flip_keys, *swap_keys, *spatial_keys]
    missing = sorted(k for k in set(listed) if k not in labels)
    if missing:
        raise ValueError(f"horizontal_flip: labels {missing} are listed but not given; "
                         f"given labels: {sorted(labels)}")
    B = x.shape[0]
    for key in listed:
        if labels[key].ndim == 0 or labels[key].shape[0] != B:
            raise ValueError(f"horizontal_flip: label '{key}' must have leading batch "
                             f"dimension {B}, got shape {tuple(labels[key].shape)}")
    flip = _rand(B, generator, x.device) < p
    out_x = torch.where(_batch_mask(flip, x), x.flip(-1), x)
    out: dict[str, Tensor] = dict(labels)
    for key, factor in flip_keys.items():
        y = out[key]
        out[key] = torch.where(_batch_mask(flip, y), (y * factor).to(y.dtype), y)
    for key, spec in swap_keys.items():
        y = out[key]
        pairs = _pairs(spec)
        m = _batch_mask(flip, y)
        if y.is_floating_point():
            if y.ndim < 2:
                raise ValueError(f"horizontal_flip: float label '{key}' swaps columns and "
                                 f"needs shape (B, ..., K), got {tuple(y.shape)}")
            perm = torch.arange(y.shape[-1], device=y.device)
            for a, b in pairs:
                perm[a], perm[b] = b, a
            out[key] = torch.where(m, y[..., perm], y)
        else:
            swapped = y.clone()
            for a, b in pairs:
                # Compare with the original values so that a <-> b swaps both ways.
                swapped = torch.where(y == a, torch.full_like(y, b), swapped)
                swapped = torch.where(y == b, torch.full_like(y, a), swapped)
            out[key] = torch.where(m, swapped, y)
    for key in spatial_keys:
        y = out[key]
        out[key] = torch.where(_batch_mask(flip, y), y.flip(-1), y)
    return out_x, out


@dataclass(frozen=True)
class AugmentConfig:
    """A sequence of augmentations and their parameters.

    Attributes:
        ops: Operation names applied in this order; see :data:`AUGMENT_OPS`.
        shift_pad_px: ``random_shift`` padding in pixels.
        crop_scale: ``random_resized_crop`` area fraction range.
        crop_ratio: ``random_resized_crop`` relative aspect ratio range.
        brightness: ``color_jitter`` brightness strength.
        contrast: ``color_jitter`` contrast strength.
        saturation: ``color_jitter`` saturation strength.
        cutout_size_frac: ``cutout`` box size as a fraction of the frame.
        cutout_fill: ``cutout`` fill value.
        flip_p: ``horizontal_flip`` probability.
        flip_negate_keys: Labels negated on flipped samples (e.g. lane_offset, steer).
        flip_swap: ``(label, a, b)`` class pairs swapped on flipped samples, e.g.
            ``("command", 1, 2)``.
        flip_spatial_keys: Dense labels mirrored with the frames (e.g. depth).
    """

    ops: tuple[str, ...] = ("random_shift", "color_jitter")
    shift_pad_px: int = 4
    crop_scale: tuple[float, float] = (0.7, 1.0)
    crop_ratio: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    cutout_size_frac: float = 0.25
    cutout_fill: float = 0.0
    flip_p: float = 0.5
    flip_negate_keys: tuple[str, ...] = ()
    flip_swap: tuple[tuple[str, int, int], ...] = ()
    flip_spatial_keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = [op for op in self.ops if op not in AUGMENT_OPS]
        require(not unknown, f"unknown augmentation(s) {', '.join(map(repr, unknown))}; "
                             f"valid choices: {', '.join(AUGMENT_OPS)}")
        require(self.shift_pad_px >= 0, f"shift_pad_px must be >= 0, got {self.shift_pad_px}")
        require(0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0,
                f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        require(0.0 < self.crop_ratio[0] <= self.crop_ratio[1],
                f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for name in ("brightness", "contrast", "saturation", "cutout_size_frac", "flip_p"):
            value = getattr(self, name)
            require(0.0 <= value <= 1.0, f"{name} must be in [0, 1], got {value}")


class Augmenter:
    """Applies the operations of an :class:`AugmentConfig` in order.

    Args:
        config: The operations and their parameters.
    """

    def __init__(self, config: AugmentConfig | None = None) -> None:
        self.config = config or AugmentConfig()
        c = self.config
        self._image_ops: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
            "random_shift": lambda x, g: random_shift(x, c.shift_pad_px, generator=g),
            "random_resized_crop": lambda x, g: random_resized_crop(
                x, c.crop_scale, c.crop_ratio, generator=g),
            "color_jitter": lambda x, g: color_jitter(
                x, c.brightness, c.contrast, c.saturation, generator=g),
            "cutout": lambda x, g: cutout(x, c.cutout_size_frac, c.cutout_fill, generator=g),
        }
        swaps: dict[str, list[tuple[int, int]]] = {}
        for key, a, b in c.flip_swap:
            swaps.setdefault(key, []).append((a, b))
        self._swap_keys = swaps

    def __call__(self, x: Tensor, generator: torch.Generator) -> Tensor:
        """Augment frames without labels (a flip then only mirrors the frames).

        Args:
            x: uint8 or float frames, as accepted by :func:`to_float_nchw`.
            generator: Source of randomness.

        Returns:
            Float frames ``(B, 3, H, W)``.
        """
        out, _ = self._apply(x, None, generator)
        return out

    def apply_with_labels(self, x: Tensor, labels: Mapping[str, Tensor],
                          generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        """Augment frames and keep the labels consistent with any horizontal flip.

        Args:
            x: uint8 or float frames, as accepted by :func:`to_float_nchw`.
            labels: Per-sample labels; those named in the config's ``flip_*`` fields
                must be present.
            generator: Source of randomness.

        Returns:
            Float frames and the (possibly flipped) labels.
        """
        return self._apply(x, labels, generator)

    def _apply(self, x: Tensor, labels: Mapping[str, Tensor] | None,
               generator: torch.Generator) -> tuple[Tensor, dict[str, Tensor]]:
        c = self.config
        out = to_float_nchw(x)
        out_labels = dict(labels or {})
        for op in c.ops:
            if op == "horizontal_flip":
                if labels is None:
                    out, _ = horizontal_flip(out, {}, {}, c.flip_p, generator=generator)
                else:
                    out, out_labels = horizontal_flip(
                        out, out_labels, dict.fromkeys(c.flip_negate_keys, -1.0), c.flip_p,
                        generator=generator, swap_keys=self._swap_keys,
                        spatial_keys=c.flip_spatial_keys)
            else:
                out = self._image_ops[op](out, generator)
        return out, out_labels


__all__ = [
    "AUGMENT_OPS",
    "AugmentConfig",
    "Augmenter",
    "color_jitter",
    "cutout",
    "horizontal_flip",
    "random_resized_crop",
    "random_shift",
]
