"""Why did the agent do that? One episode, decision by decision, beside the expert.

A recording (:mod:`evaluation.recording`) says what the agent did; this trace says what
it saw and how sure it was. It drives one seed of a suite exactly as ``bulletdrive eval``
does (the suite's env, the agent's observation settings, deterministic actions) and
keeps, at every decision: the action, the policy's probability of each action (trained
agents with discrete actions), the expert's choice in the same state (as DAgger labels
it), the ego's speed, the lane gaps a lane-gaps agent measured, and the expert's gap
and closing speed to what it follows. Collisions are mostly read backwards from the
impact, so :func:`format_trace` prints the last decisions::

    python scripts/decision_trace.py --agent runs/x/final --suite highway-test \\
        --seed 200017 --set action_mode=behavior
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from evaluation.runner import AgentSpec, resolve_agent, run_overrides, start_episode
from evaluation.suites import SuiteConfig, load_suite
from planning.action_modes import MetaAction, wrap_action_mode
from planning.expert import FREE_ROAD_GAP_M
from planning.policies import ExpertPolicy


@dataclass(frozen=True)
class Decision:
    """One decision of a traced episode.

    Attributes:
        step: Decision index in the episode.
        time_s: Simulated time at the decision [s].
        action: The agent's action (an int for discrete modes, else a list of floats).
        probabilities: The policy's probability of each discrete action, or ``None``
            (built-in policies, continuous actions).
        expert_action: The expert's action in the same state.
        speed_mps: Ego speed [m/s].
        lane_gaps: What a lane-gaps agent measured (:data:`planning.lane_gaps.FEATURES`),
            else ``None``.
        expert_gap_m: The expert's gap to what it follows [m]; ``None`` on a free road.
        expert_closing_mps: Ego speed minus that lead's speed [m/s]; ``None`` on a free
            road.
        events: The events of the steps this decision ran (collisions, off-road, ...).
    """

    step: int
    time_s: float
    action: int | list[float]
    probabilities: list[float] | None
    expert_action: int | list[float]
    speed_mps: float
    lane_gaps: list[float] | None
    expert_gap_m: float | None
    expert_closing_mps: float | None
    events: list[dict[str, Any]]


def _plain(action: Any) -> int | list[float]:
    if isinstance(action, int | np.integer):
        return int(action)
    return [float(a) for a in np.asarray(action).ravel()]


def trace_episode(agent: AgentSpec | str, suite: SuiteConfig | str, seed: int,
                  suite_overrides: Sequence[str] = ()) -> list[Decision]:
    """Drive one episode of ``suite`` with ``agent`` and trace every decision.

    Args:
        agent: A built-in policy name, a saved agent's path or an :class:`AgentSpec`.
        suite: A suite name, YAML path or config.
        seed: The episode's seed.
        suite_overrides: ``key=value`` overrides of the suite (``action_mode=behavior``).

    Returns:
        The decisions in order, up to the end of the episode.

    Raises:
        ValueError: Unknown agent or suite, a bad override, or an agent whose action
            mode is not the suite's.
    """
    spec = resolve_agent(agent)
    cfg = suite if isinstance(suite, SuiteConfig) else load_suite(suite, suite_overrides)
    policy, bare = start_episode(spec, cfg, seed, run_overrides(spec, cfg))
    expert = ExpertPolicy()
    decide = getattr(policy, "decide", None)
    out: list[Decision] = []
    try:
        env = wrap_action_mode(bare)
        driving: Any = env.unwrapped
        policy.reset(seed)
        expert.reset(seed)
        obs, _ = env.reset(seed=seed)
        done = False
        while not done:
            if decide is not None:
                action, probs = decide(obs, env)
            else:
                action, probs = policy.act(obs, env), None
            expert_action = expert.act(obs, env)
            plan = expert.last_plan
            lead = None if plan is None or plan.gap_m >= FREE_ROAD_GAP_M else plan
            speed = float(driving.state.speed_mps)
            sensor = getattr(policy, "lane_gaps", None)
            gaps = None if sensor is None or sensor.last is None else sensor.last
            time_s = float(driving.sim_time_s)
            obs, _, terminated, truncated, info = env.step(action)
            out.append(Decision(
                step=len(out), time_s=time_s, action=_plain(action),
                probabilities=None if probs is None else [float(p) for p in probs],
                expert_action=_plain(expert_action), speed_mps=speed,
                lane_gaps=None if gaps is None else [float(g) for g in gaps],
                expert_gap_m=None if lead is None else float(lead.gap_m),
                expert_closing_mps=None if lead is None else speed - float(lead.lead_speed_mps),
                events=list(info.get("events", []))))
            done = bool(terminated or truncated)
    finally:
        bare.close()
    return out


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _action_text(action: int | list[float]) -> str:
    """A ``behavior`` action by name (the only discrete mode), others as numbers."""
    if isinstance(action, int):
        return MetaAction(action).name.lower()
    return "[" + ", ".join(f"{a:.2f}" for a in action) + "]"


def format_trace(decisions: Sequence[Decision], last: int | None = None) -> str:
    """A Markdown table of the last ``last`` decisions (all when ``None``)."""
    rows = list(decisions if last is None else decisions[-last:])
    header = ("| step | t [s] | action | p(action) | expert | speed [m/s] | lane gaps | "
              "expert gap [m] | expert closing [m/s] | events |")
    lines = [header, "| " + " | ".join(["---"] * 10) + " |"]
    for d in rows:
        p = "-"
        if d.probabilities is not None and isinstance(d.action, int):
            p = f"{d.probabilities[d.action]:.2f}"
        gaps = "-" if d.lane_gaps is None else " ".join(f"{g:.1f}" for g in d.lane_gaps)
        events = ", ".join(str(e.get("type", e)) for e in d.events) or ""
        lines.append(f"| {d.step} | {d.time_s:.1f} | {_action_text(d.action)} | {p} "
                     f"| {_action_text(d.expert_action)} "
                     f"| {d.speed_mps:.1f} | {gaps} | {_number(d.expert_gap_m)} "
                     f"| {_number(d.expert_closing_mps)} | {events} |")
    return "\n".join(lines)


__all__ = ["Decision", "format_trace", "trace_episode"]
