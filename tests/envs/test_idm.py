"""Closed-form checks of the IDM and MOBIL functions."""

from __future__ import annotations

import numpy as np

from envs.traffic.idm import (
    FREE_ROAD_GAP_M,
    MOBILParams,
    idm_acceleration,
    idm_desired_gap,
    idm_equilibrium_gap,
    mobil_decision,
)


def test_free_road_acceleration_from_rest_is_max_accel() -> None:
    a = idm_acceleration(0.0, 30.0, FREE_ROAD_GAP_M, 0.0, max_accel=1.5)
    assert abs(float(a) - 1.5) < 1e-6


def test_at_desired_speed_on_free_road_acceleration_vanishes() -> None:
    a = idm_acceleration(30.0, 30.0, FREE_ROAD_GAP_M, 30.0, max_accel=1.5)
    assert abs(float(a)) < 1e-4


def test_equilibrium_gap_gives_zero_acceleration() -> None:
    v, v0, T, s0 = 20.0, 30.0, 1.5, 2.0
    gap = idm_equilibrium_gap(v, v0, T, s0)
    expected = (s0 + v * T) / np.sqrt(1 - (v / v0) ** 4)
    assert abs(float(gap) - expected) < 1e-12
    a = idm_acceleration(v, v0, gap, v, time_headway=T, min_gap=s0)
    assert abs(float(a)) < 1e-9


def test_desired_gap_includes_approach_term() -> None:
    s = idm_desired_gap(20.0, 5.0, 1.5, 2.0, 1.5, 2.0)
    assert abs(float(s) - (2.0 + 30.0 + 20 * 5 / (2 * np.sqrt(3.0)))) < 1e-12
    # Pulling away never shrinks the gap below s0 + vT... it only drops the dynamic part.
    assert float(idm_desired_gap(0.0, -5.0, 1.5, 2.0, 1.5, 2.0)) == 2.0


def test_vectorised_over_vehicles() -> None:
    a = idm_acceleration(np.array([0.0, 30.0]), np.array([30.0, 30.0]),
                         np.array([FREE_ROAD_GAP_M, 5.0]), np.array([0.0, 0.0]))
    assert a.shape == (2,) and a[0] > 0 > a[1]


def test_mobil_safety_and_incentive() -> None:
    params = MOBILParams(safe_decel_mps2=4.0, threshold_mps2=0.2)
    # Big gain, safe: change.
    assert mobil_decision(-1.0, 1.0, 0.0, -1.0, 0.0, 0.0, 0.0, params)
    # Same gain but the new follower would brake at 5 m/s^2: unsafe.
    assert not mobil_decision(-1.0, 1.0, 0.0, -5.0, 0.0, 0.0, 0.0, params)
    # Polite driver weighs the new follower's loss: 2.0 - 1.0 * 2.5 < 0.2.
    assert not mobil_decision(-1.0, 1.0, 0.0, -2.5, 0.0, 0.0, 1.0, params)
    # Below threshold.
    assert not mobil_decision(0.0, 0.1, 0.0, 0.0, 0.0, 0.0, 0.0, params)
