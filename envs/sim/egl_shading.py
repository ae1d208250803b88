"""TinyRenderer's lighting, reproduced under pybullet's EGL renderer.

The two renderers light a surface of colour ``T`` and unit normal ``n`` differently:

- TinyRenderer: ``T * (ambient + diffuse * light_color * max(n . l, 0))`` with the
  episode's light direction ``l``, ambient and diffuse coefficients and light colour.
- EGL plugin (pybullet 3.2's OpenGL shader, measured): ``T * rgba * f(n . l)`` with
  ``f(c) = 0.75 + 0.25 c`` for ``c >= 0`` and ``0.675 + 0.175 c`` below (the back side
  counts as shadowed). It ignores the ambient and diffuse coefficients and the light
  colour, so without help an EGL frame at night is as bright as at noon.

:class:`EglShading` closes the gap with the two inputs EGL does use. For the scene
meshes, which bulletdrive writes itself, each face gets a normal chosen so that ``f``
gives TinyRenderer's brightness of its real normal, and each shape a colour ``rgba`` that
scales by the episode's brightness and tint (:meth:`EglShading.scene_rgb` and
:meth:`EglShading.remap_normals`). Primitive bodies (vehicles, pedestrians, signal heads)
keep their normals; their colour is scaled by the factor that best fits TinyRenderer's
lighting over a box's top and sides (:meth:`EglShading.tint`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

#: EGL's shading factor on the lit side is ``_LIT0 + _LIT1 * c`` (c = n . l >= 0) ...
_LIT0, _LIT1 = 0.75, 0.25
#: ... and ``_DARK0 + _DARK1 * c`` on the side facing away from the light (c < 0).
_DARK0, _DARK1 = 0.675, 0.175
#: Normal-light cosine that selects the dark branch's top (0.675) robustly: exactly 0
#: would select the lit branch, and the normal is rounded on its way to the GPU.
_JUST_BELOW_ZERO = -1.0e-3


def egl_factor(c: NDArray[Any]) -> NDArray[Any]:
    """EGL's shading factor for normal-light cosines ``c`` (see the module docstring)."""
    c = np.asarray(c, dtype=np.float64)
    return np.where(c >= 0.0, _LIT0 + _LIT1 * c, _DARK0 + _DARK1 * c)


def egl_cosine(ratio: NDArray[Any]) -> NDArray[Any]:
    """The normal-light cosine whose EGL factor is closest to ``ratio``.

    EGL's factor covers [0.5, 0.675] and [0.75, 1]; a ratio between the two goes to the
    nearer end, one outside [0.5, 1] is clipped.
    """
    r = np.clip(np.asarray(ratio, dtype=np.float64), _DARK0 - _DARK1, _LIT0 + _LIT1)
    lit = (r - _LIT0) / _LIT1
    dark = (r - _DARK0) / _DARK1
    gap_high = r > 0.5 * (_DARK0 + _LIT0)
    return np.where(r >= _LIT0, lit, np.where(r <= _DARK0, np.minimum(dark, _JUST_BELOW_ZERO),
                                              np.where(gap_high, 0.0, _JUST_BELOW_ZERO)))


@dataclass(frozen=True)
class EglShading:
    """One episode's lighting, with what EGL needs to reproduce it.

    Attributes:
        light_direction: Unit vector towards the light (world frame); also the direction
            EGL is given.
        light_color: RGB light colour in [0, 1].
        ambient / diffuse: TinyRenderer's lighting coefficients.
    """

    light_direction: tuple[float, float, float]
    light_color: tuple[float, float, float]
    ambient: float
    diffuse: float

    @classmethod
    def create(cls, light_direction: Sequence[float], light_color: Sequence[float],
               ambient: float, diffuse: float) -> EglShading:
        """Build from the camera's lighting parameters (the direction need not be unit)."""
        d = np.asarray(light_direction, dtype=np.float64)
        d = d / max(float(np.linalg.norm(d)), 1e-12)
        lx, ly, lz = (float(v) for v in d)
        r, g, b = (float(v) for v in light_color)
        return cls((lx, ly, lz), (r, g, b), float(ambient), float(diffuse))

    def tiny_factor(self, normals: NDArray[Any]) -> NDArray[Any]:
        """TinyRenderer's per-channel brightness factor (N, 3) for unit ``normals`` (N, 3)."""
        c = np.maximum(np.asarray(normals, dtype=np.float64) @ np.asarray(self.light_direction),
                       0.0)
        return self.ambient + self.diffuse * c[:, None] * np.asarray(self.light_color)[None, :]

    def scene_rgb(self) -> tuple[float, float, float]:
        """Colour (may exceed 1) that scales every scene mesh shape under EGL.

        It is TinyRenderer's brightest factor (a face facing the light), so that every
        face's ratio to it lies within EGL's range; when ground faces would then fall in
        the gap of EGL's factor (see :func:`egl_cosine`), it is raised so that they land
        exactly on the gap's lower end: the ground fills most of a frame.
        """
        light = np.asarray(self.light_color)
        k = self.ambient + self.diffuse * light
        up = self.tiny_factor(np.array([[0.0, 0.0, 1.0]]))[0]
        ratio = float(np.mean(up / k))
        if _DARK0 < ratio < _LIT0:
            k = k * ratio / _DARK0
        r, g, b = (float(v) for v in k)
        return r, g, b

    def remap_normals(self, normals: NDArray[Any]) -> NDArray[Any]:
        """Normals (N, 3) that make EGL shade each face as TinyRenderer shades ``normals``.

        A remapped normal keeps the part of the real one that is perpendicular to the light
        (its direction does not matter to EGL's shading) and takes the cosine with the light
        that gives the right brightness relative to :meth:`scene_rgb`.
        """
        n = np.asarray(normals, dtype=np.float64)
        if len(n) == 0:
            return n.reshape(0, 3)
        light = np.asarray(self.light_direction)
        ratio = (self.tiny_factor(n) / np.asarray(self.scene_rgb())[None, :]).mean(axis=1)
        cos = egl_cosine(ratio)
        side = n - (n @ light)[:, None] * light[None, :]
        norm = np.linalg.norm(side, axis=1)
        # A normal along the light has no perpendicular part: use any perpendicular.
        helper = np.array([1.0, 0.0, 0.0]) if abs(light[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        fallback = np.cross(light, helper)
        fallback /= np.linalg.norm(fallback)
        side = np.where((norm > 1e-6)[:, None], side / np.maximum(norm, 1e-12)[:, None],
                        fallback[None, :])
        out: NDArray[Any] = (cos[:, None] * light[None, :]
                             + np.sqrt(1.0 - cos * cos)[:, None] * side)
        return out

    def primitive_rgb(self) -> NDArray[Any]:
        """Per-channel colour factor for primitive bodies (see :meth:`tint`)."""
        # A box's visible faces: its top (a third) and its sides (two thirds, all headings).
        heading = np.linspace(0.0, 2.0 * np.pi, 8, endpoint=False)
        normals = np.vstack([[0.0, 0.0, 1.0],
                             np.column_stack([np.cos(heading), np.sin(heading),
                                              np.zeros_like(heading)])])
        weight = np.concatenate([[1.0 / 3.0], np.full(len(heading), 2.0 / 3.0 / len(heading))])
        target = self.tiny_factor(normals)
        egl = egl_factor(normals @ np.asarray(self.light_direction))
        # Least squares for one factor per channel: target ~ factor * egl.
        factor: NDArray[Any] = ((weight * egl) @ target) / float((weight * egl) @ egl)
        return factor

    def tint(self, rgba: Sequence[float]) -> list[float]:
        """The colour to give a primitive body under EGL for TinyRenderer's look of ``rgba``."""
        factor = self.primitive_rgb()
        return [float(rgba[0] * factor[0]), float(rgba[1] * factor[1]),
                float(rgba[2] * factor[2]), float(rgba[3])]
