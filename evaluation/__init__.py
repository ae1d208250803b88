"""Evaluation: scenario suites, per-episode safety metrics and driving scores, statistics.

* :mod:`evaluation.metrics` turns the per-step records of one episode into the metric
  dict of the design (CARLA driving score, nuPlan-style score, infractions, comfort).
* :mod:`evaluation.statistics` aggregates episodes: bootstrap confidence intervals,
  interquartile means (``rliable``), per-km rates, summary tables.
* :mod:`evaluation.suites` loads evaluation suites (``configs/suites/*.yaml``) whose
  train / validation / test seeds are disjoint by construction.
* :mod:`evaluation.recording` records one row per control step of an episode and writes
  it as one Parquet file; :func:`load_episode` / :func:`load_episodes` read them back.
* :mod:`evaluation.replay` re-simulates a recorded episode to verify it
  (:func:`verify_episode`) or render it as video / PNG (:func:`render_episode`).
* :mod:`evaluation.runner` runs an agent on a suite (parallel, resumable) and
  :mod:`evaluation.report` writes ``metrics.json``, Markdown, plots and an HTML page.

The heavier modules are imported on first use, so ``evaluation.suites`` stays light.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from evaluation.recording import load_episode, load_episodes
    from evaluation.replay import frame_png, render_episode, verify_episode
    from evaluation.report import compare
    from evaluation.runner import evaluate, resolve_agent

_LAZY = {"load_episode": "evaluation.recording", "load_episodes": "evaluation.recording",
         "compare": "evaluation.report", "evaluate": "evaluation.runner",
         "resolve_agent": "evaluation.runner", "verify_episode": "evaluation.replay",
         "render_episode": "evaluation.replay", "frame_png": "evaluation.replay"}


def __getattr__(name: str) -> Any:
    """Import :data:`_LAZY` attributes from their modules on first access."""
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'evaluation' has no attribute {name!r}")


__all__ = ["compare", "evaluate", "frame_png", "load_episode", "load_episodes",
           "render_episode", "resolve_agent", "verify_episode"]
