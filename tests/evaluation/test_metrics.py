"""Per-episode metrics against closed-form answers on hand-built step sequences."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import pandas as pd
import pytest

from evaluation.metrics import (
    CARLA_PENALTIES,
    EXTRA_METRIC_KEYS,
    METRIC_KEYS,
    REQUIRED_COLUMNS,
    episode_metrics,
    smooth,
)

DT = 0.1
ROUTE_M = 500.0


def drive(n: int = 50, speed: float = 10.0, completion: float = 0.8,
          **columns: Any) -> list[dict[str, Any]]:
    """A clean straight drive at constant speed; ``columns`` replace whole columns
    (a list with one value per step, or a scalar for every step)."""
    steps = []
    for i in range(n):
        t = (i + 1) * DT
        frac = (i + 1) / n
        steps.append({
            "t_s": t, "x_m": speed * t, "y_m": 0.0, "yaw_rad": 0.0, "speed_mps": speed,
            "accel_mps2": 0.0, "lat_accel_mps2": 0.0, "yaw_rate_radps": 0.0,
            "route_completion": completion * frac, "route_progress_m": completion * frac * ROUTE_M,
            "speed_limit_mps": 30.0, "ttc_s": math.inf, "corner_outside_m": 0.0,
            "wrong_way_m": 0.0, "events": [], "terminated": False, "truncated": False,
        })
    for name, value in columns.items():
        values = value if isinstance(value, list) else [value] * n
        assert len(values) == n
        for step, v in zip(steps, values, strict=True):
            step[name] = v
    return steps


def add_event(steps: list[dict[str, Any]], index: int, event: dict[str, Any]) -> None:
    steps[index]["events"] = [*steps[index]["events"], event]


def metrics(steps: Any, **kwargs: Any) -> dict[str, Any]:
    kwargs.setdefault("dt_s", DT)
    kwargs.setdefault("route_length_m", ROUTE_M)
    return episode_metrics(steps, **kwargs)


def vehicle_hit(other: int = 7, at_fault: bool = True) -> dict[str, Any]:
    return {"type": "collision", "class": "vehicle", "other": other, "at_fault": at_fault}


# ---------------------------------------------------------------------- keys, basics
def test_keys_are_the_design_contract_plus_documented_extras() -> None:
    m = metrics(drive())
    assert set(METRIC_KEYS) <= set(m)
    assert set(m) == set(METRIC_KEYS) | set(EXTRA_METRIC_KEYS)
    assert isinstance(m["success"], bool) and isinstance(m["collisions_vehicle"], int)


def test_clean_drive_scores_completion_only() -> None:
    m = metrics(drive(completion=0.8))
    assert m["route_completion"] == pytest.approx(0.8)
    assert m["driving_score"] == pytest.approx(80.0)
    assert m["nuplan_score"] == pytest.approx(1.0)
    assert not m["success"] and not m["timeout"]
    assert m["infractions_per_km"] == 0.0 and m["off_route_fraction"] == 0.0


def test_completed_route_is_success() -> None:
    steps = drive(completion=1.0)
    add_event(steps, -1, {"type": "route_completed"})
    steps[-1]["terminated"] = True
    m = metrics(steps)
    assert m["success"] and m["route_completion"] == 1.0
    assert m["driving_score"] == pytest.approx(100.0)


def test_distance_duration_mean_speed() -> None:
    speeds = [float(i) for i in range(10)]  # 0..9 m/s
    m = metrics(drive(n=10, speed_mps=speeds))
    assert m["distance_m"] == pytest.approx(sum(speeds) * DT)  # 4.5 m
    assert m["duration_s"] == pytest.approx(1.0)
    assert m["mean_speed_mps"] == pytest.approx(4.5)


# ---------------------------------------------------------------------- CARLA score
def test_vehicle_collision_and_red_light_penalties() -> None:
    steps = drive(completion=0.6)
    add_event(steps, 20, vehicle_hit())
    add_event(steps, 30, {"type": "red_light", "signal": 3})
    m = metrics(steps)
    assert m["collisions_vehicle"] == 1 and m["red_light_violations"] == 1
    assert m["driving_score"] == pytest.approx(100 * 0.6 * 0.6 * 0.7)
    assert not m["success"]


@pytest.mark.parametrize(("event", "factor"), [
    ({"type": "collision", "class": "pedestrian", "other": 3, "at_fault": True}, 0.50),
    ({"type": "collision", "class": "static", "other": 4, "at_fault": True}, 0.65),
    ({"type": "stop_line", "signal": 1, "overrun_m": 1.0}, 0.80),
    ({"type": "timeout"}, 0.70),
])
def test_single_infraction_penalties(event: dict[str, Any], factor: float) -> None:
    steps = drive(completion=0.5)
    add_event(steps, -1, event)
    assert metrics(steps)["driving_score"] == pytest.approx(50.0 * factor)


def test_penalty_table_is_carla() -> None:
    assert CARLA_PENALTIES == {"collision_pedestrian": 0.5, "collision_vehicle": 0.6,
                               "collision_static": 0.65, "red_light": 0.7, "stop_line": 0.8,
                               "timeout": 0.7}


def test_truncated_last_step_is_a_timeout() -> None:
    steps = drive(completion=0.5)
    steps[-1]["truncated"] = True
    m = metrics(steps)
    assert m["timeout"] and m["driving_score"] == pytest.approx(35.0)


def test_continued_contact_counts_once_per_onset() -> None:
    steps = drive()
    add_event(steps, 10, vehicle_hit(other=7))
    add_event(steps, 11, vehicle_hit(other=7))  # same body, continued contact
    add_event(steps, 11, vehicle_hit(other=7))  # second contact point, same step
    add_event(steps, 12, vehicle_hit(other=9))  # another body: a new collision
    add_event(steps, 12, vehicle_hit(other=7))
    add_event(steps, 20, vehicle_hit(other=7, at_fault=False))  # contact again after a gap
    m = metrics(steps)
    assert m["collisions_vehicle"] == 3
    assert m["at_fault_collisions"] == 2
    assert m["driving_score"] == pytest.approx(80.0 * 0.6**3)


def test_off_route_fraction_applied() -> None:
    steps = drive(completion=0.8)
    for i in range(10, 20):  # 10 of 50 equally long steps
        add_event(steps, i, {"type": "route_deviation"})
    m = metrics(steps)
    assert m["off_route_fraction"] == pytest.approx(0.2)
    assert m["route_deviations"] == 1
    assert m["driving_score"] == pytest.approx(80.0 * 0.8)


def test_off_route_fraction_is_distance_weighted() -> None:
    speeds = [10.0] * 40 + [0.0] * 10
    steps = drive(speed_mps=speeds)
    for i in range(40, 50):  # off route only while standing still
        add_event(steps, i, {"type": "route_deviation"})
    assert metrics(steps)["off_route_fraction"] == 0.0


# ---------------------------------------------------------------------- counts per km
def test_infractions_per_km() -> None:
    steps = drive(n=50, speed=10.0)  # 50 m
    add_event(steps, 5, vehicle_hit())
    add_event(steps, 6, vehicle_hit())  # continued: not a new infraction
    add_event(steps, 10, {"type": "collision", "class": "static", "other": 2, "at_fault": True})
    add_event(steps, 15, {"type": "red_light", "signal": 0})
    for i in (20, 21, 22, 30):  # two off-road onsets
        add_event(steps, i, {"type": "off_road"})
    for i in (40, 41):  # one wrong-way stretch
        add_event(steps, i, {"type": "wrong_way", "distance_m": 1.0})
    add_event(steps, 45, {"type": "lane_invasion", "marking": "broken"})  # not counted
    m = metrics(steps)
    assert m["off_road"] == 2 and m["wrong_way_episodes"] == 1 and m["lane_invasions"] == 1
    assert m["infractions"] == 1 + 1 + 1 + 2 + 1
    assert m["infractions_per_km"] == pytest.approx(6 / 0.05)


def test_infractions_per_km_distance_floor() -> None:
    steps = drive(n=5, speed=0.0)
    add_event(steps, 0, {"type": "collision", "class": "static", "other": 2, "at_fault": True})
    assert metrics(steps)["infractions_per_km"] == pytest.approx(1 / 1e-3)


# ---------------------------------------------------------------------- nuPlan
def test_nuplan_at_fault_vehicle_collision_zeroes() -> None:
    steps = drive()
    add_event(steps, 10, vehicle_hit(at_fault=True))
    assert metrics(steps)["nuplan_score"] == 0.0


def test_nuplan_not_at_fault_collision_is_not_gated() -> None:
    steps = drive()
    add_event(steps, 10, vehicle_hit(at_fault=False))
    m = metrics(steps)
    assert m["nuplan_score"] == pytest.approx(1.0) and m["at_fault_collisions"] == 0


def test_nuplan_at_fault_pedestrian_zeroes() -> None:
    steps = drive()
    add_event(steps, 10, {"type": "collision", "class": "pedestrian", "other": 5,
                          "at_fault": True})
    assert metrics(steps)["nuplan_score"] == 0.0


def test_nuplan_static_collision_halves() -> None:
    steps = drive()
    add_event(steps, 10, {"type": "collision", "class": "static", "other": 2, "at_fault": True})
    m = metrics(steps)
    assert m["nuplan_multiplier"] == 0.5 and m["nuplan_score"] == pytest.approx(0.5)


@pytest.mark.parametrize(("corner_m", "expected"), [(0.4, 0.0), (0.3, 1.0), (0.0, 1.0)])
def test_nuplan_drivable_area_gate(corner_m: float, expected: float) -> None:
    corners = [0.0] * 50
    corners[25] = corner_m
    assert metrics(drive(corner_outside_m=corners))["nuplan_score"] == pytest.approx(expected)


@pytest.mark.parametrize(("wrong_m", "expected"), [(1.5, 1.0), (3.0, 0.5), (7.0, 0.0)])
def test_nuplan_wrong_way_gate(wrong_m: float, expected: float) -> None:
    ramp = list(np.linspace(0.0, wrong_m, 50))
    m = metrics(drive(wrong_way_m=ramp))
    assert m["wrong_way_m"] == pytest.approx(wrong_m)
    assert m["nuplan_score"] == pytest.approx(expected)


def test_nuplan_progress_term_and_gate() -> None:
    steps = drive(completion=0.8)  # ego progress 400 m
    assert metrics(steps, expert_progress_m=400.0)["nuplan_score"] == pytest.approx(1.0)
    m = metrics(steps, expert_progress_m=800.0)  # ratio 0.5
    assert m["nuplan_progress"] == pytest.approx(0.5)
    assert m["nuplan_score"] == pytest.approx((5 + 5 * 0.5 + 4 + 2) / 16)
    assert metrics(steps, expert_progress_m=2100.0)["nuplan_score"] == 0.0  # ratio < 0.2
    assert metrics(steps, expert_progress_m=3.0)["nuplan_progress"] == 1.0  # expert < 5 m


def test_nuplan_ttc_term() -> None:
    ttc = [math.inf] * 50
    ttc[10] = 2.0
    m = metrics(drive(ttc_s=ttc))
    assert m["min_ttc_s"] == 2.0 and m["nuplan_ttc"] == 1.0
    ttc[20] = 0.5
    m = metrics(drive(ttc_s=ttc))
    assert m["min_ttc_s"] == 0.5 and m["nuplan_ttc"] == 0.0
    assert m["nuplan_score"] == pytest.approx(11 / 16)
    assert metrics(drive())["min_ttc_s"] == math.inf


def test_nuplan_speed_limit_compliance() -> None:
    # 1.115 m/s over the limit on every step: half of nuPlan's 2.23 m/s bound.
    m = metrics(drive(speed=11.115, speed_limit_mps=10.0))
    assert m["nuplan_speed_compliance"] == pytest.approx(0.5)
    assert m["nuplan_score"] == pytest.approx((5 + 5 + 4 * 0.5 + 2) / 16)
    assert metrics(drive(speed=20.0, speed_limit_mps=10.0))["nuplan_speed_compliance"] == 0.0
    no_limit = metrics(drive(speed=20.0, speed_limit_mps=math.inf))
    assert no_limit["nuplan_speed_compliance"] == 1.0


@pytest.mark.parametrize("column,value", [
    ("accel_mps2", 3.0), ("accel_mps2", -4.5), ("lat_accel_mps2", -5.0),
    ("yaw_rate_radps", 1.2)])
def test_comfort_violations_switch_the_comfort_term(column: str, value: float) -> None:
    replaced: dict[str, Any] = {column: value}
    m = metrics(drive(**replaced))
    assert m["nuplan_comfort"] == 0.0
    assert m["nuplan_score"] == pytest.approx(14 / 16)


def test_comfort_within_bounds() -> None:
    m = metrics(drive(accel_mps2=2.0, lat_accel_mps2=-4.0, yaw_rate_radps=0.9))
    assert m["nuplan_comfort"] == 1.0
    assert m["max_abs_lat_acc_mps2"] == pytest.approx(4.0)


def test_jerk_from_acceleration_ramp() -> None:
    # a(t) = 1.5 t: a constant jerk of 1.5 m/s^3, exact under the moving average.
    n = 10
    accel = [1.5 * (i + 1) * DT for i in range(n)]
    m = metrics(drive(n=n, accel_mps2=accel))
    assert m["max_abs_jerk_mps3"] == pytest.approx(1.5)
    assert m["nuplan_comfort"] == 1.0
    # Jerk 5 > 4.13 m/s^3 while the acceleration (0.5..2.0 m/s^2) stays within bounds.
    steep = [5.0 * (i + 1) * DT for i in range(4)]
    m = metrics(drive(n=4, accel_mps2=steep))
    assert m["max_abs_jerk_mps3"] == pytest.approx(5.0)
    assert m["nuplan_comfort"] == 0.0


def test_yaw_acceleration_bound() -> None:
    # Yaw rate ramp of 2.5 rad/s^2 stays below 0.95 rad/s for 3 steps but breaks 1.93.
    m = metrics(drive(n=3, yaw_rate_radps=[0.25, 0.5, 0.75]))
    assert m["nuplan_comfort"] == 0.0


def test_smoothing_window() -> None:
    x = np.array([0.0, 0.0, 5.0, 0.0, 0.0])
    assert smooth(x, 1).tolist() == x.tolist()
    assert smooth(x, 5)[2] == pytest.approx(1.0)
    assert smooth(np.array([1.0, 2.0, 3.0, 4.0]), 3).tolist() == pytest.approx([1.5, 2, 3, 3.5])
    # Zig-zag noise of +-0.3 m/s^2 (a finite-difference artefact) is a raw jerk of
    # 6 m/s^3 > 4.13; the 0.5 s (5-sample) moving average brings it to 1.2 m/s^3 inside
    # and 6 / 3 = 2 m/s^3 at the ends, where the window shrinks to 3 samples.
    noise = [0.3 * (-1) ** i for i in range(20)]
    smoothed = metrics(drive(n=20, accel_mps2=noise))
    assert smoothed["nuplan_comfort"] == 1.0
    assert smoothed["max_abs_jerk_mps3"] == pytest.approx(2.0)
    raw = metrics(drive(n=20, accel_mps2=noise), smoothing_window_s=0.0)
    assert raw["nuplan_comfort"] == 0.0
    assert raw["max_abs_jerk_mps3"] == pytest.approx(6.0)


# ---------------------------------------------------------------------- inputs
def test_dataframe_with_json_events_matches_records() -> None:
    steps = drive()
    add_event(steps, 10, vehicle_hit())
    add_event(steps, 20, {"type": "red_light", "signal": 1})
    frame = pd.DataFrame(steps)
    frame["events"] = [json.dumps(e) for e in frame["events"]]
    assert metrics(frame) == metrics(steps)


def test_missing_column_is_named() -> None:
    steps = drive()
    for s in steps:
        del s["ttc_s"]
    with pytest.raises(ValueError, match="ttc_s"):
        metrics(steps)
    assert "ttc_s" in REQUIRED_COLUMNS


def test_bad_inputs() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        metrics([])
    with pytest.raises(ValueError, match="dt_s"):
        metrics(drive(), dt_s=0.0)
    steps = drive()
    add_event(steps, 3, {"type": "collision", "class": "tree", "other": 1})
    with pytest.raises(ValueError, match="vehicle, pedestrian, static"):
        metrics(steps)
    steps = drive()
    steps[3]["events"] = [42]
    with pytest.raises(ValueError, match="'type'"):
        metrics(steps)
