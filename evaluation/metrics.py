"""Per-episode safety metrics and driving scores from per-step records.

Input contract
--------------
One record per control step, as a sequence of mappings or a :class:`pandas.DataFrame`
with one row per step, in time order. The episode recorder fills these columns (extra
columns are ignored; a missing one is an error naming it):

==================== ======================================================================
column               meaning
==================== ======================================================================
``t_s``              simulated time at the END of the step [s]
``x_m``, ``y_m``     ego position at the end of the step [m]
``yaw_rad``          ego heading [rad]
``speed_mps``        ego speed [m/s]
``accel_mps2``       ego longitudinal acceleration over the step [m/s^2]
``lat_accel_mps2``   ego lateral acceleration, left positive [m/s^2]
``yaw_rate_radps``   ego yaw rate [rad/s]
``route_completion`` cumulative share of the route driven, 0-1
``route_progress_m`` cumulative progress along the route since the start [m]
``speed_limit_mps``  speed limit where the ego is [m/s] (inf or NaN: none)
``ttc_s``            time to collision with the nearest vehicle ahead on the ego's path
                     at constant speeds [s]; +inf (or NaN) if there is none
``corner_outside_m`` largest distance of a body corner outside the drivable area [m]
                     (0 when inside)
``wrong_way_m``      cumulative distance driven against the lane direction [m]
``events``           list of the step's event dicts (:mod:`envs.events`); a JSON string
                     of that list, a single dict or None (no events) are accepted too
``terminated``       the episode ended in this step (goal, collision, off road)
``truncated``        the episode was cut off in this step (step limit)
==================== ======================================================================

Episode information passed beside the records: ``dt_s`` (control period [s]),
``route_length_m`` (length of the route [m]) and optionally ``expert_progress_m``
(the rule-based expert's route progress on the same seed [m], for nuPlan's ego-progress
term).

Counting rules
--------------
* **Collisions** are counted once per contact onset: the env emits a ``collision`` event
  every step of a continued contact with the same body ``other``, so an event counts
  only if that ``other`` was not in contact in the previous step. (Events without
  ``other`` are keyed by their class.) A collision event without ``at_fault`` counts as
  at fault (conservative).
* ``off_road``, ``wrong_way`` and ``route_deviation`` are emitted every step the
  condition holds; they are counted by onset (a step with the event after one without).
* ``red_light``, ``stop_line``, ``lane_invasion`` are emitted once per violation.
* ``off_route_fraction`` is the share of the distance driven in steps with a
  ``route_deviation`` or an ``off_road`` event (off the road is off the route lanes, as
  in CARLA's outside-route-lanes test); share of steps if the ego never moved.

Metric definitions
------------------
* ``route_completion``: largest ``route_completion`` reached (reversing does not lower
  it), 1 if a ``route_completed`` event occurred.
* ``success``: a ``route_completed`` event with no collision and no off-road event.
* ``distance_m``: sum of ``|speed_mps| * dt_s`` (rectangle rule with the end-of-step
  speed); ``duration_s``: steps * ``dt_s``; ``mean_speed_mps``: their ratio.
* ``min_ttc_s``: smallest ``ttc_s`` of the episode (``inf`` if never a vehicle ahead;
  ``json.dumps`` writes it as ``Infinity``).
* ``max_abs_jerk_mps3``: largest |longitudinal jerk|, ``max_abs_lat_acc_mps2``: largest
  |lateral acceleration|, both after the smoothing described below.
* ``infractions``: collision onsets (all classes) + red lights + stop lines + off-road
  onsets + wrong-way onsets + route-deviation onsets. Lane invasions (legal lane changes
  emit them too) and timeouts (not a safety event) are left out.
  ``infractions_per_km`` = ``infractions / max(distance_m / 1000, 1e-3)``.
* ``driving_score`` (CARLA Leaderboard): ``100 * route_completion * prod(p_i ** n_i) *
  (1 - off_route_fraction)`` with penalties :data:`CARLA_PENALTIES` per pedestrian /
  vehicle / static collision (all, at fault or not, as in CARLA), red light, stop line
  and timeout (0 or 1). Range 0-100.
* ``nuplan_score`` (nuPlan closed-loop score, range 0-1): the product of the gates
  (0 for an at-fault collision with a vehicle or pedestrian, 0.5 if the at-fault
  collisions are with static objects only, however many; 0 if a body corner is more than
  0.3 m outside the drivable area at any step; 0 for more than 6 m wrong-way driving in
  the episode, 0.5 above 2 m (nuPlan measures this in 1 s windows; the episode total used
  here is stricter); 0 if the progress ratio is below 0.2) times the weighted mean
  ``(5 * ttc + 5 * progress + 4 * speed + 2 * comfort) / 16`` of:

  - ``ttc``: 1 if no step has a TTC below 0.95 s, TTCs beyond the 3 s horizon counting
    as infinite (with a precomputed ``ttc_s`` the horizon cannot change the outcome; it
    is kept to state the definition);
  - ``progress``: ego route progress / expert progress clipped to [0, 1]; 1 when there
    is no expert figure or the expert made less than 5 m of progress;
  - ``speed``: nuPlan's speed-limit compliance, ``1 - mean_t(max(0, v - limit)) / 2.23``
    clipped to [0, 1] (the mean over-speed relative to nuPlan's 2.23 m/s bound; steps
    without a finite positive limit count as compliant);
  - ``comfort``: 1 if every step is within :data:`COMFORT_BOUNDS`, else 0.

Comfort signals are smoothed as nuPlan does before checking bounds, with a centred
moving average over ``smoothing_window_s`` (default 0.5 s, 5 steps at 10 Hz; the window
shrinks at the episode ends), because the sim's accelerations are finite differences of
speed and a second difference at 10 Hz is dominated by noise. Derivatives (jerks, yaw
acceleration) are backward finite differences over ``dt_s`` of the raw signal, smoothed
afterwards; a constant derivative (e.g. a linear acceleration ramp) is reproduced exactly.
``|jerk|`` is the magnitude of the (longitudinal, lateral) jerk vector.

Extra keys beside the design's (:data:`EXTRA_METRIC_KEYS`): ``timeout``,
``stop_line_violations``, ``route_deviations``, ``wrong_way_episodes``, ``infractions``,
``off_route_fraction``, ``ego_progress_m``, ``route_length_m`` and the nuPlan parts
``nuplan_multiplier``, ``nuplan_ttc``, ``nuplan_progress``, ``nuplan_speed_compliance``,
``nuplan_comfort``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any, TypeAlias

import numpy as np
import pandas as pd
from numpy.typing import NDArray

from envs import events as ev

#: The per-step columns every episode record must have (see the module docstring).
REQUIRED_COLUMNS: tuple[str, ...] = (
    "t_s", "x_m", "y_m", "yaw_rad", "speed_mps", "accel_mps2", "lat_accel_mps2",
    "yaw_rate_radps", "route_completion", "route_progress_m", "speed_limit_mps", "ttc_s",
    "corner_outside_m", "wrong_way_m", "events", "terminated", "truncated",
)

#: The per-episode metric keys fixed by the design (section 6), in report order.
METRIC_KEYS: tuple[str, ...] = (
    "route_completion", "success", "collisions_vehicle", "collisions_pedestrian",
    "collisions_static", "at_fault_collisions", "off_road", "lane_invasions", "wrong_way_m",
    "red_light_violations", "distance_m", "duration_s", "mean_speed_mps", "min_ttc_s",
    "max_abs_jerk_mps3", "max_abs_lat_acc_mps2", "infractions_per_km", "driving_score",
    "nuplan_score",
)

#: Additional keys returned by :func:`episode_metrics` (documented in the module docstring).
EXTRA_METRIC_KEYS: tuple[str, ...] = (
    "timeout", "stop_line_violations", "route_deviations", "wrong_way_episodes",
    "infractions", "off_route_fraction", "ego_progress_m", "route_length_m",
    "nuplan_multiplier", "nuplan_ttc", "nuplan_progress", "nuplan_speed_compliance",
    "nuplan_comfort",
)

#: Collision classes of ``collision`` events.
COLLISION_CLASSES: tuple[str, ...] = ("vehicle", "pedestrian", "static")

#: CARLA Leaderboard penalty coefficients, one factor per infraction.
CARLA_PENALTIES: dict[str, float] = {
    "collision_pedestrian": 0.50,
    "collision_vehicle": 0.60,
    "collision_static": 0.65,
    "red_light": 0.70,
    "stop_line": 0.80,
    "timeout": 0.70,
}

#: nuPlan gate: a body corner farther than this outside the drivable area zeroes the score [m].
NUPLAN_MAX_CORNER_OUTSIDE_M = 0.3
#: nuPlan gate: wrong-way distance above which the score is zero [m].
NUPLAN_WRONG_WAY_ZERO_M = 6.0
#: nuPlan gate: wrong-way distance above which the score is halved [m].
NUPLAN_WRONG_WAY_HALF_M = 2.0
#: nuPlan gate: progress ratio (ego / expert) below which the score is zero [-].
NUPLAN_MIN_PROGRESS_RATIO = 0.2
#: Expert progress below which the progress ratio is taken as 1 [m].
NUPLAN_MIN_EXPERT_PROGRESS_M = 5.0
#: Smallest acceptable time to collision [s].
NUPLAN_MIN_TTC_S = 0.95
#: TTCs beyond this horizon count as infinite [s].
NUPLAN_TTC_HORIZON_S = 3.0
#: Mean over-speed at which speed-limit compliance reaches 0 [m/s].
NUPLAN_OVERSPEED_BOUND_MPS = 2.23
#: Weights of the nuPlan score's averaged terms.
NUPLAN_WEIGHTS: dict[str, float] = {"ttc": 5.0, "progress": 5.0, "speed": 4.0, "comfort": 2.0}

#: nuPlan comfort bounds: (low, high) per signal, in SI units.
COMFORT_BOUNDS: dict[str, tuple[float, float]] = {
    "lon_acc_mps2": (-4.05, 2.40),
    "lat_acc_mps2": (-4.89, 4.89),
    "yaw_rate_radps": (-0.95, 0.95),
    "yaw_acc_radps2": (-1.93, 1.93),
    "lon_jerk_mps3": (-4.13, 4.13),
    "jerk_mps3": (-8.37, 8.37),
}

#: Default length of the comfort smoothing window [s].
DEFAULT_SMOOTHING_WINDOW_S = 0.5

#: Denominator floor of ``infractions_per_km`` [km] (1 m).
MIN_DISTANCE_KM = 1e-3

#: The metric dict of one episode.
EpisodeMetrics: TypeAlias = dict[str, float | int | bool]
#: Step records of one episode: a DataFrame or a sequence of per-step mappings.
StepRecords: TypeAlias = "pd.DataFrame | Sequence[Mapping[str, Any]]"


# ---------------------------------------------------------------------- input handling
def steps_frame(steps: StepRecords) -> pd.DataFrame:
    """Turn step records into a DataFrame and check the column contract.

    Args:
        steps: A DataFrame or a sequence of per-step mappings.

    Returns:
        A DataFrame with (at least) :data:`REQUIRED_COLUMNS`, one row per step.

    Raises:
        ValueError: If there are no steps or columns are missing (the message lists them).
    """
    frame = steps if isinstance(steps, pd.DataFrame) else pd.DataFrame.from_records(list(steps))
    if len(frame) == 0:
        raise ValueError("an episode needs at least one step record; got none")
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"step records lack column(s) {', '.join(missing)}; required columns: "
                         f"{', '.join(REQUIRED_COLUMNS)}")
    return frame


def parse_events(value: Any) -> list[Mapping[str, Any]]:
    """Normalise one step's ``events`` cell to a list of event mappings.

    Accepts a list / tuple / numpy array of mappings (as read back from Parquet), a JSON
    string of such a list, a single mapping, or None / NaN for no events.

    Raises:
        ValueError: If the cell holds something else.
    """
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return []
    if isinstance(value, str):
        try:
            value = json.loads(value) if value.strip() else []
        except json.JSONDecodeError as exc:
            raise ValueError(f"events cell is not valid JSON: {value[:80]!r} ({exc})") from None
    if isinstance(value, Mapping):
        return [value]
    if isinstance(value, list | tuple | np.ndarray):
        out = []
        for item in value:
            if not isinstance(item, Mapping) or "type" not in item:
                raise ValueError(f"each event must be a mapping with a 'type' key, got {item!r}")
            out.append(item)
        return out
    raise ValueError(f"events cell must be a list of event dicts, got {type(value).__name__}")


def _column(frame: pd.DataFrame, name: str) -> NDArray[np.float64]:
    """A numeric column as float64 (None becomes NaN), with an error naming the column."""
    try:
        return pd.to_numeric(frame[name], errors="raise").to_numpy(dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"step column '{name}' must be numeric: {exc}") from None


def _nanmax(x: NDArray[np.float64], empty: float = 0.0) -> float:
    """Largest non-NaN value, ``empty`` when there is none."""
    valid = x[~np.isnan(x)]
    return float(valid.max()) if valid.size else empty


def _onsets(flags: NDArray[np.bool_]) -> int:
    """Number of False -> True transitions, counting a True first step as an onset."""
    if flags.size == 0:
        return 0
    return int(flags[0]) + int(np.count_nonzero(flags[1:] & ~flags[:-1]))


def smooth(x: NDArray[np.float64], window: int) -> NDArray[np.float64]:
    """Centred moving average over ``window`` samples, NaN-aware, shrinking at the ends.

    Args:
        x: Signal (N,).
        window: Odd number of samples (1: no smoothing).

    Returns:
        The smoothed signal (N,); NaN only where the whole window is NaN.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"smoothing window must be an odd number >= 1, got {window}")
    if window == 1 or x.size == 0:
        return x.astype(np.float64, copy=True)
    half = window // 2
    valid = ~np.isnan(x)
    csum = np.concatenate([[0.0], np.cumsum(np.where(valid, x, 0.0))])
    ccount = np.concatenate([[0], np.cumsum(valid)])
    idx = np.arange(x.size)
    lo = np.maximum(idx - half, 0)
    hi = np.minimum(idx + half + 1, x.size)
    count = ccount[hi] - ccount[lo]
    total = csum[hi] - csum[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def smoothing_steps(window_s: float, dt_s: float) -> int:
    """Odd number of samples closest to ``window_s`` at period ``dt_s`` (at least 1)."""
    n = max(int(round(window_s / dt_s)), 1)
    return n if n % 2 == 1 else n + 1


def _derivative(x: NDArray[np.float64], dt_s: float) -> NDArray[np.float64]:
    """Backward finite difference (N-1,) of a signal sampled every ``dt_s``."""
    return np.diff(x) / dt_s


# ---------------------------------------------------------------------- scores
def carla_driving_score(route_completion: float, counts: Mapping[str, int],
                        off_route_fraction: float = 0.0) -> float:
    """CARLA Leaderboard driving score in 0-100.

    Args:
        route_completion: Share of the route completed, 0-1.
        counts: Number of infractions per key of :data:`CARLA_PENALTIES` (missing = 0).
        off_route_fraction: Share of the distance driven off the route, 0-1.

    Returns:
        ``100 * route_completion * prod(penalty ** count) * (1 - off_route_fraction)``.
    """
    unknown = sorted(set(counts) - set(CARLA_PENALTIES))
    if unknown:
        raise ValueError(f"unknown infraction(s) {unknown}; valid: {', '.join(CARLA_PENALTIES)}")
    penalty = 1.0
    for key, factor in CARLA_PENALTIES.items():
        penalty *= factor ** int(counts.get(key, 0))
    completion = float(np.clip(route_completion, 0.0, 1.0))
    return 100.0 * completion * penalty * (1.0 - float(np.clip(off_route_fraction, 0.0, 1.0)))


def comfort_ok(accel_mps2: NDArray[np.float64], lat_accel_mps2: NDArray[np.float64],
               yaw_rate_radps: NDArray[np.float64], dt_s: float, window: int) -> bool:
    """Whether an episode stays within :data:`COMFORT_BOUNDS` (signals smoothed first).

    Args:
        accel_mps2, lat_accel_mps2, yaw_rate_radps: Per-step signals (N,).
        dt_s: Control period [s].
        window: Moving-average window [samples, odd].
    """
    return _within_comfort(_comfort_signals(accel_mps2, lat_accel_mps2, yaw_rate_radps, dt_s,
                                            window))


def _within_comfort(signals: Mapping[str, NDArray[np.float64]]) -> bool:
    for name, (low, high) in COMFORT_BOUNDS.items():
        x = signals[name]
        x = x[~np.isnan(x)]
        if x.size and (x.min() < low or x.max() > high):
            return False
    return True


def _comfort_signals(accel: NDArray[np.float64], lat: NDArray[np.float64],
                     yaw_rate: NDArray[np.float64], dt_s: float,
                     window: int) -> dict[str, NDArray[np.float64]]:
    lon_jerk = smooth(_derivative(accel, dt_s), window)
    lat_jerk = smooth(_derivative(lat, dt_s), window)
    return {
        "lon_acc_mps2": smooth(accel, window),
        "lat_acc_mps2": smooth(lat, window),
        "yaw_rate_radps": smooth(yaw_rate, window),
        "yaw_acc_radps2": smooth(_derivative(yaw_rate, dt_s), window),
        "lon_jerk_mps3": lon_jerk,
        "jerk_mps3": np.hypot(lon_jerk, lat_jerk),
    }


def speed_limit_compliance(speed_mps: NDArray[np.float64],
                           speed_limit_mps: NDArray[np.float64]) -> float:
    """nuPlan-style compliance: ``1 - mean over-speed / 2.23 m/s``, clipped to [0, 1].

    Steps whose limit is not a finite positive number count as compliant.
    """
    limited = np.isfinite(speed_limit_mps) & (speed_limit_mps > 0) & np.isfinite(speed_mps)
    over = np.where(limited, np.maximum(speed_mps - np.where(limited, speed_limit_mps, 0.0),
                                        0.0), 0.0)
    return float(np.clip(1.0 - over.mean() / NUPLAN_OVERSPEED_BOUND_MPS, 0.0, 1.0))


def progress_ratio(ego_progress_m: float, expert_progress_m: float | None) -> float:
    """Ego progress over expert progress, clipped to [0, 1]; 1 without a usable expert."""
    if expert_progress_m is None or expert_progress_m < NUPLAN_MIN_EXPERT_PROGRESS_M:
        return 1.0
    return float(np.clip(ego_progress_m / expert_progress_m, 0.0, 1.0))


# ---------------------------------------------------------------------- main entry
def episode_metrics(
    steps: StepRecords,
    *,
    dt_s: float,
    route_length_m: float,
    expert_progress_m: float | None = None,
    smoothing_window_s: float = DEFAULT_SMOOTHING_WINDOW_S,
) -> EpisodeMetrics:
    """Compute the per-episode metrics of the design from per-step records.

    Args:
        steps: Step records (see the module docstring for the column contract).
        dt_s: Control period [s].
        route_length_m: Length of the episode's route [m] (passed through as
            ``route_length_m`` for length-weighted aggregates).
        expert_progress_m: Route progress of the expert on the same seed [m], or None.
        smoothing_window_s: Moving-average window of the comfort signals [s] (0: none).

    Returns:
        A dict with :data:`METRIC_KEYS` plus :data:`EXTRA_METRIC_KEYS`: counts as int,
        ``success`` / ``timeout`` as bool, everything else as float.

    Raises:
        ValueError: On missing columns, malformed events or invalid episode information.
    """
    if not (math.isfinite(dt_s) and dt_s > 0):
        raise ValueError(f"dt_s must be a positive number of seconds, got {dt_s!r}")
    if not (math.isfinite(route_length_m) and route_length_m > 0):
        raise ValueError(f"route_length_m must be a positive number of metres, got "
                         f"{route_length_m!r}")
    if expert_progress_m is not None and not math.isfinite(expert_progress_m):
        raise ValueError(f"expert_progress_m must be finite or None, got {expert_progress_m!r}")
    if not (math.isfinite(smoothing_window_s) and smoothing_window_s >= 0):
        raise ValueError(f"smoothing_window_s must be >= 0, got {smoothing_window_s!r}")
    frame = steps_frame(steps)
    n = len(frame)
    step_events = [parse_events(v) for v in frame["events"]]
    types = [{str(e["type"]) for e in events} for events in step_events]

    def flags(event_type: str) -> NDArray[np.bool_]:
        return np.array([event_type in t for t in types], dtype=bool)

    def total(event_type: str) -> int:
        return sum(1 for events in step_events for e in events if e["type"] == event_type)

    collisions = _collision_onsets(step_events)
    off_road_steps = flags(ev.OFF_ROAD)
    deviation_steps = flags(ev.ROUTE_DEVIATION)
    wrong_way_steps = flags(ev.WRONG_WAY)
    completed = bool(flags(ev.ROUTE_COMPLETED).any())
    truncated = frame["truncated"].to_numpy()
    timeout = bool(flags(ev.TIMEOUT).any() or bool(truncated[-1]))

    speed = _column(frame, "speed_mps")
    step_distance = np.nan_to_num(np.abs(speed)) * dt_s
    distance_m = float(step_distance.sum())
    duration_s = n * dt_s
    off_route = off_road_steps | deviation_steps
    off_route_fraction = (float(step_distance[off_route].sum() / distance_m) if distance_m > 0
                          else float(off_route.mean()))

    route_completion = 1.0 if completed else float(
        np.clip(_nanmax(_column(frame, "route_completion")), 0.0, 1.0))
    n_collisions = sum(collisions[c] for c in COLLISION_CLASSES)
    off_road = _onsets(off_road_steps)
    red_lights = total(ev.RED_LIGHT)
    stop_lines = total(ev.STOP_LINE)
    deviations = _onsets(deviation_steps)
    wrong_way_episodes = _onsets(wrong_way_steps)
    infractions = n_collisions + red_lights + stop_lines + off_road + wrong_way_episodes \
        + deviations
    wrong_way_m = max(_nanmax(_column(frame, "wrong_way_m")), 0.0)

    ttc = _column(frame, "ttc_s")
    ttc = np.where(np.isnan(ttc), np.inf, ttc)
    min_ttc_s = float(ttc.min())

    window = smoothing_steps(smoothing_window_s, dt_s) if smoothing_window_s > 0 else 1
    accel = _column(frame, "accel_mps2")
    lat = _column(frame, "lat_accel_mps2")
    yaw_rate = _column(frame, "yaw_rate_radps")
    comfort_signals = _comfort_signals(accel, lat, yaw_rate, dt_s, window)

    driving_score = carla_driving_score(route_completion, {
        "collision_pedestrian": collisions["pedestrian"],
        "collision_vehicle": collisions["vehicle"],
        "collision_static": collisions["static"],
        "red_light": red_lights,
        "stop_line": stop_lines,
        "timeout": int(timeout),
    }, off_route_fraction)

    ego_progress_m = max(_nanmax(_column(frame, "route_progress_m")), 0.0)
    ratio = progress_ratio(ego_progress_m, expert_progress_m)
    multiplier = 1.0
    if collisions["at_fault_vehicle"] or collisions["at_fault_pedestrian"]:
        multiplier = 0.0
    elif collisions["at_fault_static"]:
        multiplier *= 0.5
    if _nanmax(_column(frame, "corner_outside_m")) > NUPLAN_MAX_CORNER_OUTSIDE_M:
        multiplier = 0.0
    if wrong_way_m > NUPLAN_WRONG_WAY_ZERO_M:
        multiplier = 0.0
    elif wrong_way_m > NUPLAN_WRONG_WAY_HALF_M:
        multiplier *= 0.5
    if ratio < NUPLAN_MIN_PROGRESS_RATIO:
        multiplier = 0.0
    horizon_ttc = np.where(ttc > NUPLAN_TTC_HORIZON_S, np.inf, ttc)
    terms = {
        "ttc": float(horizon_ttc.min() >= NUPLAN_MIN_TTC_S),
        "progress": ratio,
        "speed": speed_limit_compliance(speed, _column(frame, "speed_limit_mps")),
        "comfort": float(_within_comfort(comfort_signals)),
    }
    weighted = sum(NUPLAN_WEIGHTS[k] * v for k, v in terms.items()) / sum(NUPLAN_WEIGHTS.values())

    return {
        "route_completion": route_completion,
        "success": bool(completed and n_collisions == 0 and off_road == 0),
        "collisions_vehicle": collisions["vehicle"],
        "collisions_pedestrian": collisions["pedestrian"],
        "collisions_static": collisions["static"],
        "at_fault_collisions": collisions["at_fault"],
        "off_road": off_road,
        "lane_invasions": total(ev.LANE_INVASION),
        "wrong_way_m": wrong_way_m,
        "red_light_violations": red_lights,
        "distance_m": distance_m,
        "duration_s": duration_s,
        "mean_speed_mps": distance_m / duration_s,
        "min_ttc_s": min_ttc_s,
        "max_abs_jerk_mps3": _nanmax(np.abs(comfort_signals["lon_jerk_mps3"])),
        "max_abs_lat_acc_mps2": _nanmax(np.abs(comfort_signals["lat_acc_mps2"])),
        "infractions_per_km": infractions / max(distance_m / 1000.0, MIN_DISTANCE_KM),
        "driving_score": driving_score,
        "nuplan_score": multiplier * weighted,
        "timeout": timeout,
        "stop_line_violations": stop_lines,
        "route_deviations": deviations,
        "wrong_way_episodes": wrong_way_episodes,
        "infractions": infractions,
        "off_route_fraction": off_route_fraction,
        "ego_progress_m": ego_progress_m,
        "route_length_m": float(route_length_m),
        "nuplan_multiplier": multiplier,
        "nuplan_ttc": terms["ttc"],
        "nuplan_progress": terms["progress"],
        "nuplan_speed_compliance": terms["speed"],
        "nuplan_comfort": terms["comfort"],
    }


def _collision_onsets(step_events: Iterable[list[Mapping[str, Any]]]) -> dict[str, int]:
    """Count collision onsets per class and at fault (see the module docstring)."""
    counts = {c: 0 for c in COLLISION_CLASSES}
    counts.update({f"at_fault_{c}": 0 for c in COLLISION_CLASSES})
    counts["at_fault"] = 0
    in_contact: set[Hashable] = set()
    for events in step_events:
        now: set[Hashable] = set()
        for e in events:
            if e["type"] != ev.COLLISION:
                continue
            cls = e.get("class")
            if cls not in COLLISION_CLASSES:
                raise ValueError(f"collision event has invalid class {cls!r}; valid: "
                                 f"{', '.join(COLLISION_CLASSES)}")
            other = e.get("other")
            key: Hashable
            # Parquet round trips turn a missing ``other`` into None or NaN.
            if other is None or (isinstance(other, float) and math.isnan(other)):
                key = ("class", cls)
            else:
                key = ("body", int(other))
            if key in now:
                continue  # several contact points with one body in one step
            now.add(key)
            if key in in_contact:
                continue  # continued contact: counted at its onset
            counts[cls] += 1
            at_fault = e.get("at_fault")
            if at_fault is None or bool(at_fault):
                counts[f"at_fault_{cls}"] += 1
                counts["at_fault"] += 1
        in_contact = now
    return counts


__all__ = [
    "CARLA_PENALTIES",
    "COLLISION_CLASSES",
    "COMFORT_BOUNDS",
    "EXTRA_METRIC_KEYS",
    "METRIC_KEYS",
    "REQUIRED_COLUMNS",
    "EpisodeMetrics",
    "StepRecords",
    "carla_driving_score",
    "comfort_ok",
    "episode_metrics",
    "parse_events",
    "progress_ratio",
    "smooth",
    "smoothing_steps",
    "speed_limit_compliance",
    "steps_frame",
]
