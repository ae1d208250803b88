"""The runner: saved agents by path, the expert-progress cache, the report files."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

import evaluation.runner as runner
from evaluation.recording import load_episode
from evaluation.report import EvalResult, load_result
from evaluation.runner import (
    EXPERT_CACHE,
    AgentSpec,
    cached_expert_progress,
    episode_path,
    evaluate,
    resolve_agent,
)
from evaluation.suites import load_suite

REPS = 200


def test_saved_agent_by_path(tmp_path: Path) -> None:
    from agents.config import load_train_config
    from agents.train import train

    cfg = load_train_config(overrides=[
        "obs=privileged", "ppo.n_steps=8", "ppo.batch_size=8", "ppo.n_epochs=1",
        "num_envs=1", "total_timesteps=8",
        "env_overrides=[traffic.num_vehicles=2, sensors.state_vehicles=4]"])
    agent_dir = train(cfg, tmp_path / "run", resume=False, progress=False).agent_dir
    spec = resolve_agent(agent_dir)
    assert spec.name == str(agent_dir) and spec.path == str(agent_dir.resolve())
    assert spec.action_mode == "behavior" and not spec.uses_camera
    # Only the observation interface of the training env is carried over.
    assert spec.env_overrides == ("sensors.state_vehicles=4", "sensors.state=true",
                                  "sensors.camera=false")
    with pytest.raises(ValueError, match="acts in the 'behavior' action mode but suite "
                                         "'smoke' uses 'control'"):
        evaluate(spec, "smoke", tmp_path / "eval", workers=1, progress=False)
    suite = load_suite("smoke", ["action_mode=behavior", "episodes=1"])
    result = evaluate(str(agent_dir), suite, tmp_path / "eval", workers=1, progress=False,
                      reps=REPS)
    rows, meta = load_episode(episode_path(tmp_path / "eval", 299_990))
    assert meta["agent"] == str(agent_dir) and meta["action_mode"] == "behavior"
    assert meta["config"]["sensors"]["state"] is True
    assert len(rows) == 60 and rows["decision"].iloc[-1] == 19  # 3 control steps each
    assert meta["expert_progress_m"] > 0 and result.episodes[0].metrics["distance_m"] > 0


def test_expert_progress_is_cached_per_seed_and_settings(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, int]] = []

    def fake(suite: Any, seed: int, options: Any = None, overrides: Any = ()) -> float:
        calls.append((suite.name, seed))
        return 100.0 + seed % 10

    monkeypatch.setattr(runner, "expert_progress", fake)
    smoke = load_suite("smoke")
    assert cached_expert_progress(smoke, 299_990, tmp_path) == 100.0
    assert cached_expert_progress(smoke, 299_991, tmp_path) == 101.0
    assert cached_expert_progress(smoke, 299_990, tmp_path) == 100.0
    assert calls == [("smoke", 299_990), ("smoke", 299_991)]
    cache = json.loads((tmp_path / EXPERT_CACHE).read_text())
    assert set(cache) == {"299990", "299991"}
    # Other env settings: recomputed, not confused with the cached figure.
    busier = load_suite("smoke", ["num_vehicles=12"])
    cached_expert_progress(busier, 299_990, tmp_path)
    assert len(calls) == 3
    (tmp_path / EXPERT_CACHE).write_text("{broken")  # a damaged cache is rebuilt
    assert cached_expert_progress(smoke, 299_991, tmp_path) == 101.0 and len(calls) == 4


def test_report_files(expert_smoke: EvalResult) -> None:
    out = expert_smoke.out_dir
    for name in ("metrics.json", "metrics.md", "report.html", "plots/distributions.png",
                 "plots/trajectories.png"):
        assert (out / name).is_file(), name
    assert not list(out.rglob(".*.tmp*"))
    data = json.loads((out / "metrics.json").read_text())
    assert (data["agent"], data["suite"], data["seeds"]) == ("expert", "smoke",
                                                             [299_990, 299_991])
    assert data["bootstrap_reps"] == REPS and data["confidence"] == 0.95
    agg = data["aggregates"]["driving_score"]
    assert agg["ci_low"] <= agg["mean"] <= agg["ci_high"]
    assert {"iqm", "iqm_ci_low", "iqm_ci_high"} <= set(agg)
    assert data["per_km"]["collisions"]["per_km"] == 0.0
    assert [e["outcome"] for e in data["episodes"]] == ["timeout", "timeout"]
    back = load_result(out)
    assert json.dumps(back.to_json()) == json.dumps(expert_smoke.to_json())  # NaN-safe
    md = (out / "metrics.md").read_text()
    assert md.startswith("# expert on smoke") and "| nuplan_score | 1.00 [1.00, 1.00] |" in md


def test_video_links_hook(expert_smoke: EvalResult, tmp_path: Path) -> None:
    from evaluation.report import write_report

    result = EvalResult(expert_smoke.agent, expert_smoke.suite, tmp_path,
                        expert_smoke.episodes, expert_smoke.aggregates, expert_smoke.rates,
                        expert_smoke.reps)
    written = write_report(result, video_links={"seed-299991": "videos/seed-299991.mp4"},
                           plots=False)
    html = written["html"].read_text()
    assert "<video controls" in html and "videos/seed-299991.mp4" in html
    assert html.count("<video") == 1


def test_agent_spec_is_picklable() -> None:
    import pickle

    spec = resolve_agent("random")
    assert pickle.loads(pickle.dumps(spec)) == spec
    assert spec.builtin and not spec.uses_camera
    assert not AgentSpec("x", factory=print).builtin
