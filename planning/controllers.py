"""Path-tracking controllers: pure pursuit and Stanley (steering), PID (speed).

Conventions: vehicle frame x forward, y left [m]; angles [rad], positive to the left.
All functions are pure; the PID keeps its memory in an explicit state value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from common.config import require


def pure_pursuit_curvature(target_x: float, target_y: float) -> float:
    """Curvature [1/m] of the circle through the rear axle (origin, heading +x) and the
    look-ahead point (``target_x``, ``target_y``) in the vehicle frame: ``2 y / d^2``."""
    d2 = target_x * target_x + target_y * target_y
    if d2 < 1e-9:
        return 0.0
    return 2.0 * target_y / d2


def pure_pursuit_steer(target_x: float, target_y: float, wheelbase_m: float) -> float:
    """Front-wheel angle [rad] that drives the rear axle through the look-ahead point."""
    return math.atan(wheelbase_m * pure_pursuit_curvature(target_x, target_y))


def stanley_steer(heading_error_rad: float, cross_track_m: float, speed_mps: float,
                  gain: float = 1.5, softening_mps: float = 2.0) -> float:
    """Stanley steering [rad]: cancel the heading error and steer back to the path.

    Args:
        heading_error_rad: Vehicle heading minus path heading (positive: pointing left).
        cross_track_m: Lateral offset of the front axle from the path (positive: left).
        speed_mps: Forward speed [m/s].
        gain: Cross-track gain [1/s].
        softening_mps: Keeps the law bounded at low speed [m/s].
    """
    return -heading_error_rad - math.atan2(gain * cross_track_m,
                                           max(speed_mps, 0.0) + softening_mps)


@dataclass(frozen=True)
class PIDGains:
    """PID gains and output limits.

    Attributes:
        kp / ki / kd: Proportional [1/s... per unit error], integral and derivative gains.
        out_min / out_max: Output clamp; the integral stops growing while clamped.
    """

    kp: float = 0.5
    ki: float = 0.05
    kd: float = 0.0
    out_min: float = -1.0
    out_max: float = 1.0

    def __post_init__(self) -> None:
        require(self.out_min < self.out_max, "pid: out_min must be below out_max")


@dataclass(frozen=True)
class PIDState:
    """PID memory: accumulated integral and the previous error."""

    integral: float = 0.0
    previous_error: float | None = None


def pid_step(gains: PIDGains, state: PIDState, error: float, dt: float) -> tuple[float, PIDState]:
    """One PID update; returns the clamped output and the next state.

    Anti-windup: the integral is kept unchanged when the output saturates in the
    direction the error pushes it.
    """
    derivative = 0.0 if state.previous_error is None else (error - state.previous_error) / dt
    integral = state.integral + error * dt
    raw = gains.kp * error + gains.ki * integral + gains.kd * derivative
    out = min(max(raw, gains.out_min), gains.out_max)
    if out != raw and (raw > gains.out_max) == (error > 0):
        integral = state.integral
    return out, replace(state, integral=integral, previous_error=error)
