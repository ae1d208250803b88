"""Visual conditions of an episode: light, sky and texture variant, drawn from a seed."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Colour presets per time of day: light colour, ambient scale, sky top, horizon, ground.
_TIME_OF_DAY = {
    "day": ((1.0, 1.0, 1.0), 1.0, (110, 160, 220), (200, 215, 230), (96, 110, 92)),
    "dusk": ((1.0, 0.75, 0.55), 0.75, (70, 80, 140), (230, 150, 110), (70, 70, 65)),
    "night": ((0.55, 0.6, 0.8), 0.35, (8, 10, 25), (25, 30, 50), (15, 17, 20)),
}


@dataclass(frozen=True)
class Conditions:
    """Light direction (towards the light), colour, renderer coefficients, background
    colours and the index of the texture atlas variant."""

    light_direction: tuple[float, float, float]
    light_color: tuple[float, float, float]
    ambient: float
    diffuse: float
    sky_top: tuple[int, int, int]
    sky_horizon: tuple[int, int, int]
    ground: tuple[int, int, int]
    texture_variant: int


def draw_conditions(randomize: bool, time_of_day: str, texture_variants: int,
                    elevation: tuple[float, float], azimuth: tuple[float, float],
                    ambient: tuple[float, float], diffuse: tuple[float, float],
                    rng: np.random.Generator) -> Conditions:
    """Draw an episode's conditions (fixed mid-range values when not ``randomize``).

    Args:
        randomize: Draw from ``rng``; otherwise use the middle of each range.
        time_of_day: ``day``, ``dusk`` or ``night``.
        texture_variants: Number of atlas variants to choose from.
        elevation / azimuth: Ranges of the light direction [rad].
        ambient / diffuse: Ranges of the lighting coefficients.
        rng: The episode's visual generator.
    """
    colour, scale, top, horizon, ground = _TIME_OF_DAY[time_of_day]

    def pick(lo_hi: tuple[float, float]) -> float:
        return float(rng.uniform(*lo_hi)) if randomize else 0.5 * (lo_hi[0] + lo_hi[1])

    el, az = pick(elevation), pick(azimuth)
    direction = (math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el))
    if randomize:
        r, g, b = np.clip(np.asarray(top) + rng.uniform(-12, 12, 3), 0, 255).astype(int)
        top = (int(r), int(g), int(b))
    variant = int(rng.integers(texture_variants)) if randomize else 0
    return Conditions(direction, colour, pick(ambient) * scale, pick(diffuse) * scale,
                      top, horizon, ground, variant)
