"""Evaluation results and reports: aggregates, ``metrics.json``, Markdown, plots, HTML.

:func:`build_result` aggregates per-episode metrics into an :class:`EvalResult`: for
every metric of :data:`evaluation.metrics.METRIC_KEYS` the mean with a percentile
bootstrap 95 % interval and the interquartile mean (IQM), with rliable's
stratified-bootstrap interval for the scores in :data:`IQM_CI_METRICS` (rliable's
bootstrap costs about 0.2 s per metric at 2000 resamples, and an IQM of a count is of
little use); per-km infraction rates (ratio of sums) with bootstrap intervals. All
resampling is seeded, so the same episodes always give the same numbers.

:func:`write_report` writes, atomically, into the result's folder:

* ``metrics.json``: agent, suite, seeds, aggregates, per-km rates and every episode's
  metrics with its outcome (``min_ttc_s`` without a vehicle ahead is ``Infinity``);
* ``metrics.md``: the aggregates as a Markdown table;
* ``plots/distributions.png``: the distribution of every metric over episodes;
* ``plots/trajectories.png``: ego trajectories drawn over each episode's map;
* ``report.html``: one self-contained page (images inlined as base64) with the table,
  the plots and the list of episodes with their outcomes and optional video links.

:func:`compare` puts several results side by side in one Markdown table.
"""

from __future__ import annotations

import base64
import html
import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from common.config import from_dict, to_dict
from common.io import atomic_path, atomic_write_text
from evaluation.metrics import EXTRA_METRIC_KEYS, METRIC_KEYS, EpisodeMetrics
from evaluation.statistics import (
    DEFAULT_CONFIDENCE,
    DEFAULT_REPS,
    bootstrap_ci,
    format_ci,
    iqm,
    iqm_ci,
    per_km_rate,
    summarize,
    to_markdown,
)
from evaluation.suites import SuiteConfig

#: Version of the ``metrics.json`` layout.
REPORT_FORMAT_VERSION = 1
#: Seed of every bootstrap in reports (results are reproducible).
BOOTSTRAP_SEED = 0
#: Metrics shown by :func:`compare` by default.
COMPARE_METRICS: tuple[str, ...] = ("driving_score", "nuplan_score", "route_completion",
                                    "success", "at_fault_collisions", "infractions_per_km")
#: Metrics whose IQM gets a confidence interval.
IQM_CI_METRICS: tuple[str, ...] = ("route_completion", "driving_score", "nuplan_score")
#: Per-km rates in reports: name -> the per-episode count columns summed.
RATE_COUNTS: dict[str, tuple[str, ...]] = {
    "infractions": ("infractions",),
    "collisions": ("collisions_vehicle", "collisions_pedestrian", "collisions_static"),
    "at_fault_collisions": ("at_fault_collisions",),
    "off_road": ("off_road",),
    "red_light_violations": ("red_light_violations",),
    "lane_invasions": ("lane_invasions",),
}
#: Episodes drawn in the trajectory figure at most.
MAX_TRAJECTORY_PANELS = 12
#: Margin around a trajectory in its panel [m].
_PANEL_MARGIN_M = 25.0


@dataclass(frozen=True)
class EpisodeSummary:
    """One evaluated episode: seed, recording name (file stem) and metrics."""

    seed: int
    name: str
    metrics: EpisodeMetrics

    @property
    def outcome(self) -> str:
        """How the episode ended (see :func:`outcome`)."""
        return outcome(self.metrics)


@dataclass
class EvalResult:
    """Metrics of an agent on a suite.

    Attributes:
        agent: Agent name.
        suite: The suite.
        out_dir: Folder holding the recordings and the report.
        episodes: One entry per seed, in suite order.
        aggregates: Per metric: ``n``, ``mean``, ``ci_low``, ``ci_high``, ``iqm`` and, for
            :data:`IQM_CI_METRICS`, ``iqm_ci_low``, ``iqm_ci_high``.
        rates: Per :data:`RATE_COUNTS` name: ``per_km``, ``ci_low``, ``ci_high``, ``count``.
        reps: Bootstrap resamples used.
        confidence: Coverage of the intervals.
    """

    agent: str
    suite: SuiteConfig
    out_dir: Path
    episodes: list[EpisodeSummary]
    aggregates: dict[str, dict[str, float]] = field(default_factory=dict)
    rates: dict[str, dict[str, float]] = field(default_factory=dict)
    reps: int = DEFAULT_REPS
    confidence: float = DEFAULT_CONFIDENCE

    @property
    def seeds(self) -> list[int]:
        """Episode seeds, in suite order."""
        return [e.seed for e in self.episodes]

    def table(self) -> pd.DataFrame:
        """One row per episode: agent, suite, seed, episode, outcome and every metric."""
        rows = [{"agent": self.agent, "suite": self.suite.name, "seed": e.seed,
                 "episode": e.name, "outcome": e.outcome, **e.metrics} for e in self.episodes]
        return pd.DataFrame(rows)

    def to_json(self) -> dict[str, Any]:
        """The content of ``metrics.json``."""
        return {
            "format_version": REPORT_FORMAT_VERSION,
            "agent": self.agent,
            "suite": self.suite.name,
            "env_id": self.suite.env_id,
            "action_mode": self.suite.action_mode,
            "split": self.suite.split,
            "suite_config": to_dict(self.suite),
            "seeds": self.seeds,
            "confidence": self.confidence,
            "bootstrap_reps": self.reps,
            "aggregates": self.aggregates,
            "per_km": self.rates,
            "episodes": [{"episode": e.name, "seed": e.seed, "outcome": e.outcome,
                          **e.metrics} for e in self.episodes],
        }


def outcome(m: Mapping[str, Any]) -> str:
    """A short label of how an episode ended: ``success``, ``collision (vehicle)``,
    ``off road``, ``timeout``, ``completed with infractions`` or ``stopped``."""
    if m["success"]:
        return "success"
    hit = [c for c in ("vehicle", "pedestrian", "static") if m[f"collisions_{c}"]]
    if hit:
        return f"collision ({', '.join(hit)})"
    if m["off_road"]:
        return "off road"
    if m["timeout"]:
        return "timeout"
    if m["route_completion"] >= 1.0:
        return "completed with infractions"
    return "stopped"


# ---------------------------------------------------------------------- aggregation
def aggregate(episodes: Sequence[EpisodeSummary], reps: int = DEFAULT_REPS,
              confidence: float = DEFAULT_CONFIDENCE
              ) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, float]]]:
    """Aggregates of :data:`METRIC_KEYS` and per-km rates of :data:`RATE_COUNTS`.

    Returns:
        ``(aggregates, rates)`` as described in :class:`EvalResult`.
    """
    frame = pd.DataFrame([e.metrics for e in episodes])
    aggregates: dict[str, dict[str, float]] = {}
    for key in METRIC_KEYS:
        values = frame[key].to_numpy(dtype=np.float64)
        mean, low, high = bootstrap_ci(values, np.mean, reps, confidence, BOOTSTRAP_SEED)
        entry = {"n": int(np.count_nonzero(~np.isnan(values))), "mean": mean,
                 "ci_low": low, "ci_high": high}
        with warnings.catch_warnings():
            # inf values (min_ttc_s with no vehicle ahead) make inf - inf inside the trim.
            warnings.simplefilter("ignore", RuntimeWarning)
            if key in IQM_CI_METRICS:
                entry["iqm"], entry["iqm_ci_low"], entry["iqm_ci_high"] = iqm_ci(
                    values, reps, confidence, BOOTSTRAP_SEED)
            else:
                entry["iqm"] = iqm(values)
        aggregates[key] = entry
    rates: dict[str, dict[str, float]] = {}
    distances = frame["distance_m"].to_numpy(dtype=np.float64)
    for name, columns in RATE_COUNTS.items():
        counts = frame[list(columns)].to_numpy(dtype=np.float64).sum(axis=1)
        rate, low, high = per_km_rate(counts, distances, reps, confidence, BOOTSTRAP_SEED)
        rates[name] = {"per_km": rate, "ci_low": low, "ci_high": high,
                       "count": float(counts.sum())}
    return aggregates, rates


def build_result(agent: str, suite: SuiteConfig, out_dir: str | Path,
                 episodes: Sequence[tuple[int, str, EpisodeMetrics]],
                 reps: int = DEFAULT_REPS, confidence: float = DEFAULT_CONFIDENCE
                 ) -> EvalResult:
    """An :class:`EvalResult` with aggregates from ``(seed, name, metrics)`` triples.

    Raises:
        ValueError: No episodes.
    """
    if not episodes:
        raise ValueError("an evaluation result needs at least one episode")
    summaries = [EpisodeSummary(int(s), str(n), dict(m)) for s, n, m in episodes]
    aggregates, rates = aggregate(summaries, reps, confidence)
    return EvalResult(agent, suite, Path(out_dir), summaries, aggregates, rates, reps,
                      confidence)


def load_result(path: str | Path) -> EvalResult:
    """Read an :class:`EvalResult` back from ``metrics.json`` (or its folder).

    Raises:
        ValueError: Missing or malformed file.
    """
    p = Path(path)
    if p.is_dir():
        p = p / "metrics.json"
    try:
        data = json.loads(p.read_text())
        suite = from_dict(SuiteConfig, data["suite_config"])
        episodes = []
        for e in data["episodes"]:
            metrics = {k: v for k, v in e.items() if k not in ("episode", "seed", "outcome")}
            episodes.append(EpisodeSummary(int(e["seed"]), str(e["episode"]), metrics))
        return EvalResult(str(data["agent"]), suite, p.parent, episodes,
                          data["aggregates"], data["per_km"], int(data["bootstrap_reps"]),
                          float(data["confidence"]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read evaluation result '{p}': {exc}") from None


# ---------------------------------------------------------------------- tables
def _fmt(value: float, digits: int = 2) -> str:
    if math.isnan(value):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return f"{value:.{digits}f}"


def _iqm_cell(a: Mapping[str, float], digits: int = 2) -> str:
    """``"iqm [low, high]"`` when the IQM has an interval, else the IQM alone."""
    if "iqm_ci_low" in a:
        return format_ci(a["iqm"], a["iqm_ci_low"], a["iqm_ci_high"], digits)
    return _fmt(a["iqm"], digits)


def to_markdown_table(result: EvalResult, digits: int = 2) -> str:
    """``metrics.md``: a title line and the aggregates and per-km rates as tables."""
    seeds = result.seeds
    pct = round(100 * result.confidence)
    lines = [f"# {result.agent} on {result.suite.name}", "",
             f"{len(seeds)} episodes of {result.suite.env_id} ({result.suite.action_mode} "
             f"actions, {result.suite.split} seeds {min(seeds)}-{max(seeds)}); "
             f"mean and IQM with {pct} % bootstrap intervals ({result.reps} resamples).", "",
             f"| metric | mean [{pct} % CI] | IQM [{pct} % CI] |", "|---|---:|---:|"]
    for key, a in result.aggregates.items():
        lines.append(f"| {key} | {format_ci(a['mean'], a['ci_low'], a['ci_high'], digits)} | "
                     f"{_iqm_cell(a, digits)} |")
    lines += ["", f"| per km | rate [{pct} % CI] | count |", "|---|---:|---:|"]
    for name, r in result.rates.items():
        lines.append(f"| {name} | {format_ci(r['per_km'], r['ci_low'], r['ci_high'], digits)}"
                     f" | {int(r['count'])} |")
    return "\n".join(lines) + "\n"


def compare(results: Sequence[EvalResult], metrics: Sequence[str] = COMPARE_METRICS,
            digits: int = 2, iqm_column: bool = False) -> str:
    """Several results side by side: one Markdown row per result, ``mean [CI]`` cells.

    Args:
        results: Results, in the order of the rows (e.g. expert, random, trained agents).
        metrics: Metric keys (of :data:`METRIC_KEYS` or :data:`EXTRA_METRIC_KEYS`).
        digits: Decimals.
        iqm_column: Add an IQM column after each metric.

    Returns:
        The Markdown table (agent, suite, n, one column per metric).

    Raises:
        ValueError: No results, or an unknown metric name (the message lists the valid
            ones).
    """
    if not results:
        raise ValueError("compare: give at least one evaluation result")
    valid = (*METRIC_KEYS, *EXTRA_METRIC_KEYS)
    unknown = [m for m in metrics if m not in valid]
    if unknown:
        raise ValueError(f"compare: unknown metric(s) {', '.join(map(repr, unknown))}; valid: "
                         f"{', '.join(valid)}")
    if not metrics:
        raise ValueError("compare: give at least one metric")
    parts = []
    for r in results:
        summary = summarize(r.table(), [], list(metrics), reps=r.reps,
                            confidence=r.confidence, seed=BOOTSTRAP_SEED)
        summary.insert(0, "suite", r.suite.name)
        summary.insert(0, "agent", r.agent)
        parts.append(summary)
    table = pd.concat(parts, ignore_index=True)
    table.attrs["group_by"] = ["agent", "suite"]
    table.attrs["metrics"] = list(metrics)
    return to_markdown(table, metrics, digits, iqm_column)


# ---------------------------------------------------------------------- plots
def _save_figure(fig: Any, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)


def plot_distributions(result: EvalResult, path: str | Path) -> Path:
    """One panel per metric: histogram over episodes with the mean (inf values are
    counted in the title, not drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    keys = list(METRIC_KEYS)
    cols = 5
    rows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.3 * rows), squeeze=False)
    try:
        for ax, key in zip(axes.flat, keys, strict=False):
            values = np.array([float(e.metrics[key]) for e in result.episodes])
            finite = values[np.isfinite(values)]
            title = key if len(finite) == len(values) else \
                f"{key} ({len(values) - len(finite)} inf)"
            ax.set_title(title, fontsize=8)
            ax.tick_params(labelsize=7)
            # Few ticks: creating tick artists dominates the drawing time.
            ax.xaxis.set_major_locator(MaxNLocator(4))
            ax.yaxis.set_major_locator(MaxNLocator(3, integer=True))
            if len(finite):
                # One filled step patch instead of a bar per bin: much faster to draw.
                ax.hist(finite, bins=min(20, max(3, len(finite))), color="#4a78b0",
                        histtype="stepfilled")
                ax.axvline(float(finite.mean()), color="#d04030", linewidth=1)
        for ax in list(axes.flat)[len(keys):]:
            ax.axis("off")
        fig.suptitle(f"{result.agent} on {result.suite.name}: metric distributions "
                     f"({len(result.episodes)} episodes; red: mean)", fontsize=10)
        # Fixed spacing: tight_layout costs about a second for this many panels.
        fig.subplots_adjust(left=0.04, right=0.99, bottom=0.05, top=0.92, wspace=0.3,
                            hspace=0.55)
        target = Path(path)
        _save_figure(fig, target)
    finally:
        plt.close(fig)
    return target


def _road_map(meta: Mapping[str, Any]) -> Any:
    """Regenerate an episode's map from its recorded config and map seed."""
    from envs.config import HighwayEnvConfig, UrbanEnvConfig, load_env_config
    from envs.maps.highway import generate_highway
    from envs.maps.urban import generate_urban

    if str(meta["env_id"]).endswith("Highway-v0"):
        hcfg = load_env_config(meta["config"], (), HighwayEnvConfig)
        return generate_highway(hcfg.map, int(meta["map_seed"]))[0]
    ucfg = load_env_config(meta["config"], (), UrbanEnvConfig)
    return generate_urban(ucfg.map, int(meta["map_seed"]))[0]


def _lane_polygons(road_map: Any, lo: np.ndarray, hi: np.ndarray) -> list[np.ndarray]:
    """Outlines (K, 2) of the parts of every lane inside the window ``[lo, hi]``."""
    polygons = []
    for lane in road_map.lanes:
        pad = float(lane.width.max())
        inside = np.flatnonzero(np.all((lane.centre >= lo - pad) & (lane.centre <= hi + pad),
                                       axis=1))
        if len(inside) == 0:
            continue
        i0, i1 = max(int(inside[0]) - 1, 0), min(int(inside[-1]) + 2, len(lane.s))
        s, w = lane.s[i0:i1], lane.width[i0:i1]
        polygons.append(np.concatenate([lane.position(s, w / 2.0),
                                        lane.position(s, -w / 2.0)[::-1]]))
    return polygons


def plot_trajectories(result: EvalResult, path: str | Path) -> Path:
    """Ego trajectories (coloured by speed) over the lanes of each episode's map, one
    panel per episode (the first :data:`MAX_TRAJECTORY_PANELS`); the end is marked by
    outcome (green: success, red: collision, orange: other)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    from evaluation.recording import load_episode

    shown = result.episodes[:MAX_TRAJECTORY_PANELS]
    cols = min(4, len(shown))
    rows = math.ceil(len(shown) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.4 * rows), squeeze=False)
    try:
        for ax, ep in zip(axes.flat, shown, strict=False):
            frame, meta = load_episode(result.out_dir / "episodes" / f"{ep.name}.parquet")
            x, y = frame["x_m"].to_numpy(), frame["y_m"].to_numpy()
            # A square window around the trajectory, so that equal axes keep the limits.
            centre = np.array([x.min() + x.max(), y.min() + y.max()]) / 2.0
            half = max(x.max() - x.min(), y.max() - y.min()) / 2.0 + _PANEL_MARGIN_M
            lo, hi = centre - half, centre + half
            ax.add_collection(PolyCollection(_lane_polygons(_road_map(meta), lo, hi),
                                             facecolors="#c8c8c8", edgecolors="#b0b0b0",
                                             linewidths=0.3))
            points = ax.scatter(x, y, c=frame["speed_mps"].to_numpy(), s=2, cmap="viridis",
                                vmin=0.0)
            colour = ("#20a040" if ep.outcome == "success" else
                      "#d02020" if ep.outcome.startswith("collision") else "#e08000")
            ax.plot(x[-1], y[-1], marker="X", markersize=9, color=colour)
            ax.set_xlim(lo[0], hi[0])
            ax.set_ylim(lo[1], hi[1])
            ax.set_aspect("equal", adjustable="box")
            ax.set_title(f"{ep.name}: {ep.outcome}", fontsize=8)
            ax.tick_params(labelsize=6)
        for ax in list(axes.flat)[len(shown):]:
            ax.axis("off")
        if shown:
            fig.colorbar(points, ax=axes.ravel().tolist(), shrink=0.6, label="speed [m/s]")
        fig.suptitle(f"{result.agent} on {result.suite.name}: trajectories", fontsize=10)
        target = Path(path)
        _save_figure(fig, target)
    finally:
        plt.close(fig)
    return target


# ---------------------------------------------------------------------- HTML
_CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #ccc;padding:3px 8px;
font-size:13px}th{background:#eee}td.n{text-align:right}img{max-width:100%}
.success{color:#1a7f37}.collision{color:#c62828}.other{color:#b26a00}"""


def _html_table(header: Sequence[str], rows: Sequence[Sequence[str]],
                numeric_from: int = 1) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for row in rows:
        cells = "".join(
            f"<td class='n'>{c}</td>" if i >= numeric_from else f"<td>{c}</td>"
            for i, c in enumerate(row))
        body.append(f"<tr>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def to_html(result: EvalResult, images: Mapping[str, bytes],
            video_links: Mapping[str, str] | None = None) -> str:
    """The self-contained HTML report.

    Args:
        result: The result.
        images: PNG bytes by caption, inlined as base64.
        video_links: Optional video URL per episode name (file stem) or seed; shown as a
            link and an inline player in the episode list.
    """
    esc = html.escape
    videos = dict(video_links or {})
    pct = round(100 * result.confidence)
    summary = _html_table(
        ["metric", f"mean [{pct} % CI]", f"IQM [{pct} % CI]"],
        [[esc(k), format_ci(a["mean"], a["ci_low"], a["ci_high"]), _iqm_cell(a)]
         for k, a in result.aggregates.items()])
    rates = _html_table(
        ["per km", f"rate [{pct} % CI]", "count"],
        [[esc(k), format_ci(r["per_km"], r["ci_low"], r["ci_high"]), str(int(r["count"]))]
         for k, r in result.rates.items()])
    rows = []
    for e in result.episodes:
        m = e.metrics
        css = ("success" if e.outcome == "success" else
               "collision" if e.outcome.startswith("collision") else "other")
        link = videos.get(e.name) or videos.get(str(e.seed))
        video = ("" if link is None else
                 f"<a href='{esc(link, quote=True)}'>video</a><br><video controls "
                 f"preload='none' width='320' src='{esc(link, quote=True)}'></video>")
        rows.append([esc(e.name), str(e.seed), f"<span class='{css}'>{esc(e.outcome)}</span>",
                     _fmt(float(m["route_completion"])), _fmt(float(m["driving_score"])),
                     _fmt(float(m["nuplan_score"])), _fmt(float(m["distance_m"]), 0),
                     _fmt(float(m["min_ttc_s"])), video])
    episodes = _html_table(["episode", "seed", "outcome", "route completion",
                            "driving score", "nuPlan score", "distance [m]", "min TTC [s]",
                            "video"], rows, numeric_from=3)
    figures = "".join(
        f"<figure><img alt='{esc(caption, quote=True)}' src='data:image/png;base64,"
        f"{base64.b64encode(data).decode()}'><figcaption>{esc(caption)}</figcaption></figure>"
        for caption, data in images.items())
    s = result.suite
    title = f"{result.agent} on {s.name}"
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>"
            f"<p>{esc(s.description)}</p><p>{len(result.episodes)} episodes of "
            f"{esc(s.env_id)} ({esc(s.action_mode)} actions), {esc(s.split)} seeds "
            f"{min(result.seeds)}-{max(result.seeds)}; {pct} % bootstrap intervals "
            f"({result.reps} resamples).</p><h2>Metrics</h2>{summary}<h2>Infractions per km"
            f"</h2>{rates}<h2>Plots</h2>{figures}<h2>Episodes</h2>{episodes}</body></html>\n")


def write_report(result: EvalResult, video_links: Mapping[str, str] | None = None,
                 plots: bool = True) -> dict[str, Path]:
    """Write ``metrics.json``, ``metrics.md``, the plots and ``report.html`` (atomically)
    into ``result.out_dir``.

    Args:
        result: The result.
        video_links: Optional video URL per episode name or seed for the HTML page.
        plots: Draw the PNG plots (needs the episode recordings in ``out_dir/episodes``).

    Returns:
        The written files by kind (``json``, ``markdown``, ``html``, plot names).
    """
    out = result.out_dir
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    written["json"] = out / "metrics.json"
    atomic_write_text(written["json"], json.dumps(result.to_json(), indent=1) + "\n")
    written["markdown"] = out / "metrics.md"
    atomic_write_text(written["markdown"], to_markdown_table(result))
    images: dict[str, bytes] = {}
    if plots:
        written["distributions"] = plot_distributions(result, out / "plots" /
                                                      "distributions.png")
        written["trajectories"] = plot_trajectories(result, out / "plots" / "trajectories.png")
        images["Metric distributions over episodes"] = written["distributions"].read_bytes()
        images["Ego trajectories over the maps"] = written["trajectories"].read_bytes()
    written["html"] = out / "report.html"
    atomic_write_text(written["html"], to_html(result, images, video_links))
    return written


__all__ = [
    "COMPARE_METRICS",
    "IQM_CI_METRICS",
    "RATE_COUNTS",
    "EpisodeSummary",
    "EvalResult",
    "aggregate",
    "build_result",
    "compare",
    "load_result",
    "outcome",
    "plot_distributions",
    "plot_trajectories",
    "to_html",
    "to_markdown_table",
    "write_report",
]
