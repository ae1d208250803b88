"""Evaluation: scenario suites, per-episode safety metrics and driving scores, statistics.

* :mod:`evaluation.metrics` turns the per-step records of one episode into the metric
  dict of the design (CARLA driving score, nuPlan-style score, infractions, comfort).
* :mod:`evaluation.statistics` aggregates episodes: bootstrap confidence intervals,
  interquartile means (``rliable``), per-km rates, summary tables.
* :mod:`evaluation.suites` loads evaluation suites (``configs/suites/*.yaml``) whose
  train / validation / test seeds are disjoint by construction.
"""
