"""The decision trace: the same episode as the evaluation, with the policy's confidence
and the expert's choice at each decision."""

from __future__ import annotations

import json
import runpy
from pathlib import Path

import numpy as np
import pytest

from evaluation.decision_trace import format_trace, trace_episode
from evaluation.recording import load_episode
from evaluation.runner import episode_path, evaluate
from evaluation.suites import load_suite
from planning.action_modes import MetaAction

BEHAVIOR = ["action_mode=behavior", "episodes=1"]


def test_a_built_in_policy_is_traced_beside_the_expert() -> None:
    decisions = trace_episode("keep_lane", "smoke", 299_990, BEHAVIOR)
    assert len(decisions) == 20  # 60 control steps, 3 per decision
    assert [d.step for d in decisions] == list(range(20))
    np.testing.assert_allclose(np.diff([d.time_s for d in decisions]), 0.3, atol=1e-9)
    assert all(d.action == MetaAction.KEEP_LANE for d in decisions)
    assert all(d.probabilities is None and d.lane_gaps is None for d in decisions)
    assert all(isinstance(d.expert_action, int) and 0 <= d.expert_action < len(MetaAction)
               for d in decisions)
    # The expert's gap is either a lead's (with its closing speed) or a free road (none).
    for d in decisions:
        assert (d.expert_gap_m is None) == (d.expert_closing_mps is None)
        assert d.expert_gap_m is None or d.expert_gap_m >= 0.0
    table = format_trace(decisions, last=5).splitlines()
    assert len(table) == 2 + 5 and table[-1].startswith("| 19 | 5.7 | keep_lane | - |")


def test_a_trained_agent_is_traced_as_the_evaluation_drives_it(tmp_path: Path) -> None:
    from agents.config import load_train_config
    from agents.train import train

    cfg = load_train_config(overrides=[
        "obs=privileged", "ppo.n_steps=8", "ppo.batch_size=8", "ppo.n_epochs=1",
        "num_envs=1", "total_timesteps=8", "env_overrides=[traffic.num_vehicles=2]"])
    agent_dir = train(cfg, tmp_path / "run", resume=False, progress=False).agent_dir
    decisions = trace_episode(str(agent_dir), "smoke", 299_990, BEHAVIOR)
    for d in decisions:
        assert d.probabilities is not None and len(d.probabilities) == len(MetaAction)
        assert sum(d.probabilities) == pytest.approx(1.0, abs=1e-5)
        assert d.action == int(np.argmax(d.probabilities))
    # The evaluation of the same seed took the same actions.
    evaluate(str(agent_dir), load_suite("smoke", BEHAVIOR), tmp_path / "eval", workers=1,
             progress=False, reps=50)
    rows, _ = load_episode(episode_path(tmp_path / "eval", 299_990))
    recorded = rows.groupby("decision")["policy_action"].first().map(json.loads).tolist()
    assert recorded == [d.action for d in decisions]


def test_the_script_prints_the_table_writes_json_and_rejects_bad_input(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main = runpy.run_path("scripts/decision_trace.py")["main"]
    out = tmp_path / "trace.json"
    assert main(["--agent", "keep_lane", "--suite", "smoke", "--seed", "299990",
                 "--set", "action_mode=behavior", "--last", "3", "--json", str(out)]) == 0
    assert len(capsys.readouterr().out.strip().splitlines()) == 2 + 3
    rows = json.loads(out.read_text())
    assert len(rows) == 20 and rows[0]["action"] == MetaAction.KEEP_LANE
    assert main(["--agent", "nobody", "--suite", "smoke", "--seed", "1"]) == 2
    assert "error:" in capsys.readouterr().err
    assert main(["--agent", "keep_lane", "--suite", "smoke", "--seed", "1", "--last",
                 "-1"]) == 2
