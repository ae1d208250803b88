"""Aggregates: bootstrap intervals, IQM, per-km rates, summary tables."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from evaluation.statistics import (
    bootstrap_ci,
    format_ci,
    iqm,
    iqm_ci,
    per_km_rate,
    summarize,
    to_markdown,
)

VALUES = np.random.default_rng(42).normal(0.7, 0.1, size=30)


def test_bootstrap_ci_contains_the_mean_and_is_reproducible() -> None:
    point, low, high = bootstrap_ci(VALUES, reps=1000, seed=3)
    assert point == pytest.approx(VALUES.mean())
    assert low < point < high
    # Roughly the normal-theory interval of the mean (1.96 standard errors).
    half = 1.96 * VALUES.std(ddof=1) / math.sqrt(VALUES.size)
    assert high - low == pytest.approx(2 * half, rel=0.25)
    assert bootstrap_ci(VALUES, reps=1000, seed=3) == (point, low, high)
    assert bootstrap_ci(VALUES, reps=1000, seed=4) != (point, low, high)


def test_bootstrap_ci_uses_its_own_generator() -> None:
    np.random.seed(5)
    expected = np.random.rand()
    np.random.seed(5)
    bootstrap_ci(VALUES, reps=100)
    assert np.random.rand() == expected


def test_bootstrap_ci_plain_callable_matches_vectorised() -> None:
    vectorised = bootstrap_ci(VALUES, np.median, reps=500, seed=1)
    per_resample = bootstrap_ci(VALUES, lambda x: float(np.median(x)), reps=500, seed=1)
    assert per_resample == pytest.approx(vectorised)


def test_bootstrap_ci_edge_cases() -> None:
    assert all(math.isnan(v) for v in bootstrap_ci([]))
    assert bootstrap_ci([2.5]) == (2.5, 2.5, 2.5)
    assert bootstrap_ci([1.0, math.nan, 1.0]) == (1.0, 1.0, 1.0)  # NaN dropped
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci(VALUES, confidence=1.5)
    with pytest.raises(ValueError, match="reps"):
        bootstrap_ci(VALUES, reps=0)


def test_iqm_is_the_25_percent_trimmed_mean() -> None:
    values = np.arange(1, 9, dtype=float)  # 1..8: drop 1, 2 and 7, 8
    assert iqm(values) == pytest.approx(np.mean([3, 4, 5, 6]))
    assert iqm(VALUES) == pytest.approx(scipy.stats.trim_mean(VALUES, 0.25))
    assert math.isnan(iqm([]))


def test_iqm_ci_reproducible_and_leaves_global_state_alone() -> None:
    np.random.seed(11)
    expected = np.random.rand()
    np.random.seed(11)
    a = iqm_ci(VALUES, reps=300, seed=7)
    assert np.random.rand() == expected
    assert iqm_ci(VALUES, reps=300, seed=7) == a
    point, low, high = a
    assert point == pytest.approx(iqm(VALUES))
    assert low <= point <= high


def test_iqm_ci_runs_by_tasks_and_edge_cases() -> None:
    scores = np.column_stack([VALUES, VALUES + 1.0])
    point, low, high = iqm_ci(scores, reps=200)
    assert point == pytest.approx(scipy.stats.trim_mean(scores, 0.25, axis=None))
    assert low <= point <= high
    assert iqm_ci([3.0]) == (3.0, 3.0, 3.0)
    with pytest.raises(ValueError, match="shape"):
        iqm_ci(np.zeros((2, 2, 2)))


def test_per_km_rate_is_a_ratio_of_sums() -> None:
    counts = [1, 2, 3, 0]
    distances = [1000.0, 1000.0, 2000.0, 1000.0]
    rate, low, high = per_km_rate(counts, distances, reps=500)
    assert rate == pytest.approx(6 / 5)
    assert low <= rate <= high
    assert per_km_rate(counts, distances, reps=500) == (rate, low, high)
    assert per_km_rate([1], [0.0])[0] == pytest.approx(1000.0)  # 1 m floor
    with pytest.raises(ValueError, match="one value per episode"):
        per_km_rate([1, 2], [1.0])


def episode_table() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    rows = []
    for method, base in (("expert", 0.9), ("random", 0.2)):
        for seed in range(10):
            rows.append({"method": method, "seed": seed,
                         "route_completion": float(np.clip(base + rng.normal(0, 0.05), 0, 1)),
                         "success": bool(base > 0.5), "collisions_vehicle": int(base < 0.5)})
    return pd.DataFrame(rows)


def test_summarize_per_group() -> None:
    table = episode_table()
    summary = summarize(table, ["method"], ["route_completion", "success"], reps=300)
    assert list(summary["method"]) == ["expert", "random"]
    assert list(summary["n"]) == [10, 10]
    expert = summary.iloc[0]
    mean = table[table.method == "expert"].route_completion.mean()
    assert expert["route_completion_mean"] == pytest.approx(mean)
    assert expert["route_completion_ci_low"] <= mean <= expert["route_completion_ci_high"]
    assert expert["success_mean"] == 1.0 and summary.iloc[1]["success_mean"] == 0.0
    assert "route_completion_iqm" in summary.columns
    overall = summarize(table, [], ["collisions_vehicle"], reps=100)
    assert len(overall) == 1 and overall["n"].iloc[0] == 20
    assert overall["collisions_vehicle_mean"].iloc[0] == pytest.approx(0.5)


def test_summarize_unknown_column() -> None:
    with pytest.raises(ValueError, match="available: method"):
        summarize(episode_table(), ["method"], ["driving_score"])
    with pytest.raises(ValueError, match="not numeric"):
        summarize(episode_table(), [], ["method"])


def test_to_markdown_cells() -> None:
    table = pd.DataFrame({"method": ["a", "a", "b"], "score": [1.0, 1.0, 0.5]})
    text = to_markdown(summarize(table, ["method"], ["score"], reps=50))
    lines = text.strip().splitlines()
    assert lines[0] == "| method | n | score |"
    assert lines[1] == "|---|---:|---:|"
    assert lines[2] == "| a | 2 | 1.00 [1.00, 1.00] |"
    assert lines[3] == "| b | 1 | 0.50 [0.50, 0.50] |"
    assert format_ci(0.834, 0.781, 0.8849) == "0.83 [0.78, 0.88]"
    assert format_ci(math.inf, 3.0, math.inf, digits=1) == "inf [3.0, inf]"
    assert format_ci(math.nan, math.nan, math.nan) == "n/a"
