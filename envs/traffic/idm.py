"""Car-following (IDM) and lane-change (MOBIL) models as vectorised pure functions.

References: Treiber, Hennecke & Helbing (2000), "Congested traffic states in empirical
observations and microscopic simulations" (IDM); Kesting, Treiber & Helbing (2007),
"General lane-changing model MOBIL for car-following models".

All inputs broadcast with numpy; units are SI (m, m/s, m/s^2, s).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from common.config import require

#: A float64 array; the dtype is documented, not enforced by the type checker.
FloatArray = NDArray[Any]
#: A scalar or an array that broadcasts with the others.
Num = FloatArray | float

#: Gap used when there is no leader [m]; large enough that the interaction term vanishes.
FREE_ROAD_GAP_M = 1.0e4


@dataclass(frozen=True)
class IDMParams:
    """Intelligent Driver Model parameters.

    Attributes:
        max_accel_mps2: Maximum acceleration ``a`` [m/s^2].
        comfort_decel_mps2: Comfortable deceleration ``b`` [m/s^2].
        time_headway_s: Desired time gap ``T`` [s].
        min_gap_m: Jam distance ``s0`` [m].
        delta: Acceleration exponent (dimensionless).
    """

    max_accel_mps2: float = 1.5
    comfort_decel_mps2: float = 2.0
    time_headway_s: float = 1.5
    min_gap_m: float = 2.0
    delta: float = 4.0

    def __post_init__(self) -> None:
        require(self.max_accel_mps2 > 0, "idm.max_accel_mps2 must be > 0")
        require(self.comfort_decel_mps2 > 0, "idm.comfort_decel_mps2 must be > 0")
        require(self.time_headway_s >= 0, "idm.time_headway_s must be >= 0")
        require(self.min_gap_m >= 0, "idm.min_gap_m must be >= 0")


def idm_desired_gap(speed: Num, approach_rate: Num, time_headway: Num,
                    min_gap: Num, max_accel: Num, comfort_decel: Num,
                    ) -> FloatArray:
    """IDM desired dynamical gap ``s*`` [m].

    ``s* = s0 + max(0, v T + v dv / (2 sqrt(a b)))`` with ``dv = v - v_lead`` the approach rate.
    """
    v = np.asarray(speed, dtype=np.float64)
    dv = np.asarray(approach_rate, dtype=np.float64)
    dyn = v * time_headway + v * dv / (2.0 * np.sqrt(np.multiply(max_accel, comfort_decel)))
    return np.asarray(min_gap + np.maximum(dyn, 0.0), dtype=np.float64)


def idm_acceleration(speed: Num, desired_speed: Num, gap: Num,
                     lead_speed: Num, max_accel: Num = 1.5,
                     comfort_decel: Num = 2.0, time_headway: Num = 1.5,
                     min_gap: Num = 2.0, delta: float = 4.0) -> FloatArray:
    """IDM acceleration ``a [1 - (v/v0)^delta - (s*/s)^2]`` [m/s^2].

    Args:
        speed: Follower speed ``v`` [m/s].
        desired_speed: Free-road speed ``v0`` [m/s].
        gap: Bumper-to-bumper gap to the leader ``s`` [m] (``FREE_ROAD_GAP_M`` if none).
        lead_speed: Leader speed [m/s].
        max_accel, comfort_decel, time_headway, min_gap, delta: IDM parameters.

    Returns:
        Acceleration per vehicle [m/s^2] (unbounded below: an emergency brake is allowed).
    """
    v = np.asarray(speed, dtype=np.float64)
    v0 = np.maximum(np.asarray(desired_speed, dtype=np.float64), 1e-3)
    s = np.maximum(np.asarray(gap, dtype=np.float64), 1e-2)
    s_star = idm_desired_gap(v, v - np.asarray(lead_speed, dtype=np.float64), time_headway,
                             min_gap, max_accel, comfort_decel)
    free = np.power(np.clip(v / v0, 0.0, None), delta)
    return np.asarray(max_accel * (1.0 - free - (s_star / s) ** 2), dtype=np.float64)


def idm_equilibrium_gap(speed: Num, desired_speed: Num, time_headway: Num,
                        min_gap: Num, delta: float = 4.0) -> FloatArray:
    """Gap at which a follower at ``speed`` behind an equally fast leader has zero acceleration.

    ``s_e = (s0 + v T) / sqrt(1 - (v / v0)^delta)`` [m].
    """
    v = np.asarray(speed, dtype=np.float64)
    ratio = np.power(v / np.asarray(desired_speed, dtype=np.float64), delta)
    return np.asarray((min_gap + v * np.asarray(time_headway)) / np.sqrt(1.0 - ratio),
                      dtype=np.float64)


@dataclass(frozen=True)
class MOBILParams:
    """MOBIL lane-change parameters.

    Attributes:
        safe_decel_mps2: Largest deceleration a change may impose on the new follower [m/s^2].
        threshold_mps2: Minimum acceleration advantage to change [m/s^2].
        keep_right_bias_mps2: Extra incentive for moving right (European rule) [m/s^2].
    """

    safe_decel_mps2: float = 4.0
    threshold_mps2: float = 0.2
    keep_right_bias_mps2: float = 0.1

    def __post_init__(self) -> None:
        require(self.safe_decel_mps2 > 0, "mobil.safe_decel_mps2 must be > 0")


def mobil_decision(acc_self_now: Num, acc_self_new: Num,
                   acc_new_follower_now: Num, acc_new_follower_new: Num,
                   acc_old_follower_now: Num, acc_old_follower_new: Num,
                   politeness: Num, params: MOBILParams,
                   bias: Num = 0.0) -> NDArray[np.bool_]:
    """MOBIL: change lanes when it is safe and the incentive exceeds the threshold.

    Safety: the new follower's acceleration after the change is at least ``-b_safe``.
    Incentive: ``(a'_c - a_c) + p [(a'_n - a_n) + (a'_o - a_o)] + bias > threshold``.

    Args:
        acc_self_now / acc_self_new: Candidate's acceleration before / after [m/s^2].
        acc_new_follower_now / _new: New follower's acceleration before / after [m/s^2].
        acc_old_follower_now / _new: Old follower's acceleration before / after [m/s^2].
        politeness: Politeness factor ``p`` (0 selfish, 1 altruistic).
        params: Thresholds.
        bias: Extra incentive (keep-right rule, mandatory lane end) [m/s^2].

    Returns:
        Boolean decision per candidate.
    """
    safe = np.asarray(acc_new_follower_new) >= -params.safe_decel_mps2
    others = ((np.asarray(acc_new_follower_new) - acc_new_follower_now)
              + (np.asarray(acc_old_follower_new) - acc_old_follower_now))
    gain = np.asarray(acc_self_new) - acc_self_now + np.asarray(politeness) * others
    return np.asarray(safe & (gain + bias > params.threshold_mps2))
