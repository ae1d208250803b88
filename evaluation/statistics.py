"""Aggregates over episodes: bootstrap confidence intervals, IQM, per-km rates, tables.

* :func:`bootstrap_ci`: percentile bootstrap over episodes with an explicit
  :class:`numpy.random.Generator` (reproducible from ``seed``).
* :func:`iqm` / :func:`iqm_ci`: interquartile mean (25 % trimmed mean, the ``rliable``
  definition) and its stratified-bootstrap interval from ``rliable``.
* :func:`per_km_rate`: events per km as a ratio of sums, bootstrapped over episodes.
* :func:`summarize` / :func:`to_markdown`: one row per group with mean, CI, IQM and n,
  and a Markdown table with ``"0.83 [0.78, 0.88]"`` cells.

NaN values (a metric missing for an episode) are dropped before aggregating; ``inf``
(e.g. ``min_ttc_s`` with no vehicle ahead) is kept, so a mean may be ``inf`` while the
IQM, which trims the top quarter, stays finite.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike, NDArray
from rliable import library as rly_library
from rliable import metrics as rly_metrics

#: A statistic of a 1-D sample; called as ``stat(x)`` and, if it accepts it, ``stat(x, axis=1)``.
Statistic = Callable[..., Any]

#: Default number of bootstrap resamples.
DEFAULT_REPS = 2000
#: Default coverage of confidence intervals.
DEFAULT_CONFIDENCE = 0.95

#: Suffixes of the per-metric columns written by :func:`summarize`.
SUMMARY_STATS: tuple[str, ...] = ("mean", "ci_low", "ci_high", "iqm")


def _sample(values: ArrayLike) -> NDArray[np.float64]:
    """A flat float64 array without NaNs."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return x[~np.isnan(x)]


def _check(reps: int, confidence: float) -> None:
    if isinstance(reps, bool) or not isinstance(reps, int | np.integer) or reps < 1:
        raise ValueError(f"reps must be a positive integer, got {reps!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")


def _percentiles(boot: NDArray[np.float64], confidence: float) -> tuple[float, float]:
    alpha = 100.0 * (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        # inf - inf inside the percentile interpolation warns; the NaN result is wanted.
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = np.percentile(boot, [alpha, 100.0 - alpha])
    return float(low), float(high)


def bootstrap_ci(values: ArrayLike, stat: Statistic = np.mean, reps: int = DEFAULT_REPS,
                 confidence: float = DEFAULT_CONFIDENCE,
                 seed: int | np.random.Generator = 0) -> tuple[float, float, float]:
    """Percentile bootstrap confidence interval of a statistic over episodes.

    Args:
        values: One value per episode (NaNs are dropped).
        stat: Statistic of a 1-D array; vectorised over resamples when it takes
            ``axis=1`` (as numpy reductions do), else called per resample.
        reps: Number of bootstrap resamples.
        confidence: Coverage of the interval, in (0, 1).
        seed: Seed of (or) the :class:`numpy.random.Generator` drawing the resamples;
            the global numpy state is never touched.

    Returns:
        ``(point, low, high)``: the statistic of the sample and the interval bounds.
        With no values all three are NaN; with one value, all equal it.
    """
    _check(reps, confidence)
    x = _sample(values)
    if x.size == 0:
        return math.nan, math.nan, math.nan
    point = float(stat(x))
    if x.size == 1:
        return point, point, point
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    resamples = x[rng.integers(0, x.size, size=(reps, x.size))]
    boot = _apply(stat, resamples)
    low, high = _percentiles(boot, confidence)
    return point, low, high


def _apply(stat: Statistic, resamples: NDArray[np.float64]) -> NDArray[np.float64]:
    """``stat`` of each row of ``resamples``, vectorised when ``stat`` takes ``axis``."""
    try:
        out = np.asarray(stat(resamples, axis=1), dtype=np.float64)
        if out.shape == (resamples.shape[0],):
            return out
    except TypeError:
        pass  # a plain callable without ``axis``: fall back to one call per resample
    return np.array([float(stat(row)) for row in resamples])


def iqm(values: ArrayLike) -> float:
    """Interquartile mean: the mean of the middle 50 % (``rliable.metrics.aggregate_iqm``,
    i.e. ``scipy.stats.trim_mean`` cutting 25 % at each end). NaN for no values."""
    x = _sample(values)
    if x.size == 0:
        return math.nan
    return float(rly_metrics.aggregate_iqm(x))


def iqm_ci(values: ArrayLike, reps: int = DEFAULT_REPS, confidence: float = DEFAULT_CONFIDENCE,
           seed: int = 0) -> tuple[float, float, float]:
    """IQM with a stratified percentile-bootstrap interval from ``rliable``.

    ``rliable.library.get_interval_estimates`` takes a ``random_state`` but (rliable
    1.2) draws its resampling indices from numpy's GLOBAL random state
    (``np.random.choice``), so that argument does not make results reproducible. This
    function therefore seeds the global state with ``seed`` for the call and restores the
    previous state afterwards, so callers' random streams are left unchanged. That is
    not thread-safe: do not run it concurrently with other users of ``np.random.*``.

    Args:
        values: Scores, either one per run (1-D) or ``(num_runs, num_tasks)``; runs are
            resampled within each task (rliable's stratified bootstrap). NaNs are
            dropped for 1-D input and not allowed for 2-D input.
        reps: Number of bootstrap resamples.
        confidence: Coverage of the interval, in (0, 1).
        seed: Seed of the resampling.

    Returns:
        ``(iqm, low, high)``. NaNs with no values; all equal with one run.
    """
    _check(reps, confidence)
    raw = np.asarray(values, dtype=np.float64)
    if raw.ndim == 2:
        if np.isnan(raw).any():
            raise ValueError("iqm_ci: a (runs, tasks) score matrix must not contain NaN")
        scores = raw
    elif raw.ndim <= 1:
        scores = _sample(raw).reshape(-1, 1)
    else:
        raise ValueError(f"iqm_ci expects 1-D or (runs, tasks) scores, got shape {raw.shape}")
    if scores.size == 0:
        return math.nan, math.nan, math.nan
    point = float(rly_metrics.aggregate_iqm(scores))
    if scores.shape[0] == 1:
        return point, point, point

    def aggregate(x: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.array([rly_metrics.aggregate_iqm(x)])

    saved = np.random.get_state()
    try:
        np.random.seed(seed)
        _, intervals = rly_library.get_interval_estimates(
            {"scores": scores}, aggregate, reps=int(reps), confidence_interval_size=confidence)
    finally:
        np.random.set_state(saved)
    interval = np.asarray(intervals["scores"], dtype=np.float64).reshape(-1)
    return point, float(interval[0]), float(interval[1])


def per_km_rate(counts: ArrayLike, distances_m: ArrayLike, reps: int = DEFAULT_REPS,
                confidence: float = DEFAULT_CONFIDENCE,
                seed: int | np.random.Generator = 0) -> tuple[float, float, float]:
    """Events per km over a set of episodes, with a bootstrap interval over episodes.

    The rate is a ratio of sums, ``sum(counts) / sum(distances_km)`` (long episodes weigh
    more, unlike the mean of per-episode rates); the denominator is floored at 1e-3 km
    as in :func:`evaluation.metrics.episode_metrics`. Episodes are resampled as pairs.

    Args:
        counts: Events per episode (N,).
        distances_m: Distance driven per episode (N,) [m].
        reps, confidence, seed: As in :func:`bootstrap_ci`.

    Returns:
        ``(rate, low, high)`` [1/km]; NaNs for no episodes.
    """
    _check(reps, confidence)
    c = np.asarray(counts, dtype=np.float64).reshape(-1)
    d = np.asarray(distances_m, dtype=np.float64).reshape(-1)
    if c.shape != d.shape:
        raise ValueError(f"counts and distances_m must have one value per episode, got "
                         f"{c.size} and {d.size}")
    keep = ~(np.isnan(c) | np.isnan(d))
    c, d = c[keep], d[keep]
    if c.size == 0:
        return math.nan, math.nan, math.nan

    def rate(num: NDArray[np.float64], den_m: NDArray[np.float64]) -> NDArray[np.float64]:
        return np.asarray(num.sum(axis=-1) / np.maximum(den_m.sum(axis=-1) / 1000.0, 1e-3))

    point = float(rate(c, d))
    if c.size == 1:
        return point, point, point
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    idx = rng.integers(0, c.size, size=(reps, c.size))
    low, high = _percentiles(rate(c[idx], d[idx]), confidence)
    return point, low, high


def summarize(table: pd.DataFrame, group_by: Sequence[str], metrics: Sequence[str],
              reps: int = DEFAULT_REPS, confidence: float = DEFAULT_CONFIDENCE,
              seed: int = 0) -> pd.DataFrame:
    """Mean with bootstrap CI, IQM and episode count of metrics per group.

    Args:
        table: One row per episode (e.g. the metric dicts plus ``method`` / ``seed``
            columns).
        group_by: Columns to group by (empty: one row for the whole table).
        metrics: Numeric (or bool) metric columns to summarise.
        reps, confidence, seed: Bootstrap settings (the same seed for every cell, so
            results are reproducible and metrics of one group share resamples).

    Returns:
        One row per group (sorted by the group keys): the group columns, ``n`` (rows in
        the group) and per metric ``<metric>_mean``, ``<metric>_ci_low``,
        ``<metric>_ci_high``, ``<metric>_iqm``.

    Raises:
        ValueError: If a group or metric column is missing (listing the columns) or a
            metric column is not numeric.
    """
    columns = [str(c) for c in table.columns]
    missing = [c for c in [*group_by, *metrics] if c not in table.columns]
    if missing:
        raise ValueError(f"summarize: unknown column(s) {', '.join(missing)}; available: "
                         f"{', '.join(columns)}")
    if not metrics:
        raise ValueError("summarize: give at least one metric column")
    for m in metrics:
        if not (pd.api.types.is_numeric_dtype(table[m]) or pd.api.types.is_bool_dtype(table[m])):
            raise ValueError(f"summarize: metric column '{m}' is not numeric "
                             f"(dtype {table[m].dtype})")
    groups: list[tuple[tuple[Any, ...], pd.DataFrame]]
    if group_by:
        groups = [((k if isinstance(k, tuple) else (k,)), g)
                  for k, g in table.groupby(list(group_by), sort=True, dropna=False)]
    else:
        groups = [((), table)]
    rows = []
    for key, group in groups:
        row: dict[str, Any] = dict(zip(group_by, key, strict=True))
        row["n"] = len(group)
        for m in metrics:
            values = group[m].to_numpy(dtype=np.float64)
            mean, low, high = bootstrap_ci(values, np.mean, reps, confidence, seed)
            row[f"{m}_mean"], row[f"{m}_ci_low"], row[f"{m}_ci_high"] = mean, low, high
            row[f"{m}_iqm"] = iqm(values)
        rows.append(row)
    out = pd.DataFrame(rows)
    out.attrs["group_by"] = list(group_by)
    out.attrs["metrics"] = list(metrics)
    return out


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """``"0.83 [0.78, 0.88]"``; NaN prints as ``n/a``, infinities as ``inf``."""

    def fmt(v: float) -> str:
        if math.isnan(v):
            return "n/a"
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        return f"{v:.{digits}f}"

    if math.isnan(mean):
        return "n/a"
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def to_markdown(summary: pd.DataFrame, metrics: Sequence[str] | None = None,
                digits: int = 2, iqm_column: bool = False) -> str:
    """A Markdown table of a :func:`summarize` result.

    Args:
        summary: Output of :func:`summarize`.
        metrics: Metrics to show, in order (default: those summarised).
        digits: Decimals of every number.
        iqm_column: Add an ``<metric> IQM`` column after each metric.

    Returns:
        The table: group columns, ``n``, then one ``"mean [low, high]"`` cell per metric.
    """
    shown = list(metrics) if metrics is not None else list(summary.attrs.get("metrics", []))
    if not shown:
        shown = [str(c)[: -len("_mean")] for c in summary.columns if str(c).endswith("_mean")]
    group_by = list(summary.attrs.get("group_by", []))
    if not group_by:
        stat_cols = {f"{m}_{s}" for m in shown for s in SUMMARY_STATS}
        group_by = [str(c) for c in summary.columns
                    if c != "n" and c not in stat_cols and not _is_stat_column(str(c))]
    missing = [m for m in shown if f"{m}_mean" not in summary.columns]
    if missing:
        raise ValueError(f"to_markdown: no summary columns for metric(s) {', '.join(missing)}")
    header = [*group_by, "n"]
    for m in shown:
        header.append(m)
        if iqm_column:
            header.append(f"{m} IQM")
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if h in group_by else "---:" for h in header) + "|"]
    for _, row in summary.iterrows():
        cells = [str(row[g]) for g in group_by] + [str(int(row["n"]))]
        for m in shown:
            cells.append(format_ci(float(row[f"{m}_mean"]), float(row[f"{m}_ci_low"]),
                                   float(row[f"{m}_ci_high"]), digits))
            if iqm_column:
                value = float(row[f"{m}_iqm"])
                cells.append("n/a" if math.isnan(value) else f"{value:.{digits}f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _is_stat_column(name: str) -> bool:
    return any(name.endswith(f"_{s}") for s in SUMMARY_STATS)


__all__ = [
    "DEFAULT_CONFIDENCE",
    "DEFAULT_REPS",
    "SUMMARY_STATS",
    "bootstrap_ci",
    "format_ci",
    "iqm",
    "iqm_ci",
    "per_km_rate",
    "summarize",
    "to_markdown",
]
