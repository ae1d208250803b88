"""Bad input to the evaluation harness: one clear error naming the problem and the valid
choices, and nothing already recorded is lost."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import evaluation.recording as recording
import evaluation.runner as runner
from cli.main import main
from common.config import ConfigError, from_dict
from evaluation.recording import EpisodeFileError, load_episode, load_episodes
from evaluation.report import EvalResult, compare
from evaluation.runner import episode_path, evaluate, resolve_agent
from evaluation.statistics import summarize
from evaluation.suites import SPLIT_SEED_RANGES, SuiteConfig, check_disjoint, load_suite

REPS = 200


def test_unknown_suite_lists_the_shipped_ones(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"no config 'highway_tset'.*valid names: "
                                          r"demo, highway-merge-val, highway-test, highway-val, "
                                          r"smoke, urban-night-fog, urban-test"):
        load_suite("highway_tset")
    with pytest.raises(ConfigError, match="valid names: .*smoke"):
        evaluate("expert", "nope", tmp_path, workers=1, progress=False)
    assert not (tmp_path / "episodes").exists()


def test_unknown_agent_lists_the_names(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown agent 'expret'.*valid names: expert, random, "
                                         "keep_lane, or give the path of a saved agent"):
        resolve_agent("expret")
    bogus = tmp_path / "agent.zip"
    bogus.write_text("not an agent")
    # Whether or not agents.load exists yet, a bad file is one clear error naming it.
    with pytest.raises(ValueError, match=f"cannot load agent from .*{bogus.name}"):
        resolve_agent(bogus)(0)


def test_unknown_metric_names(expert_smoke: EvalResult) -> None:
    with pytest.raises(ValueError, match="unknown metric.*'drive_score'.*valid: "
                                         "route_completion, success"):
        compare([expert_smoke], ["driving_score", "drive_score"])
    with pytest.raises(ValueError, match="unknown column.*collisions; available: "
                                         "agent, suite, seed"):
        summarize(expert_smoke.table(), [], ["collisions"])
    with pytest.raises(ValueError, match="at least one evaluation result"):
        compare([])


def test_compare_puts_agents_side_by_side(expert_smoke: EvalResult,
                                          random_smoke: EvalResult) -> None:
    table = compare([expert_smoke, random_smoke], ["driving_score", "success"])
    lines = table.splitlines()
    assert lines[0] == "| agent | suite | n | driving_score | success |"
    assert lines[2].startswith("| expert | smoke | 2 | ") and lines[3].startswith("| random |")
    assert "[" in lines[2]  # mean [low, high]


def test_overlapping_seed_ranges_are_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    shipped = [load_suite(n) for n in ("highway-test", "highway-val", "urban-test",
                                       "urban-night-fog", "smoke")]
    check_disjoint(shipped)
    # Splits own disjoint ranges, so a clash needs overlapping ranges (a config mistake).
    monkeypatch.setitem(SPLIT_SEED_RANGES, "val", (150_000, 300_000))
    val = from_dict(SuiteConfig, {"name": "late-val", "env_id": "Highway-v0", "split": "val",
                                  "first_seed": 299_991, "episodes": 3})
    with pytest.raises(ConfigError, match=r"episode seeds shared between splits: 299991 "
                                          r"\(smoke: test, late-val: val\)"):
        check_disjoint([*shipped, val])


def test_malformed_episode_files(expert_smoke: EvalResult, tmp_path: Path) -> None:
    good = episode_path(expert_smoke.out_dir, 299_990)
    cases: dict[str, bytes] = {
        "text.parquet": b"this is not parquet",
        "truncated.parquet": good.read_bytes()[: good.stat().st_size // 2],
        "empty.parquet": b"",
    }
    for name, data in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(EpisodeFileError, match=f"'{tmp_path / name}' is not a readable "
                                                   "Parquet file"):
            load_episode(tmp_path / name)
    plain = tmp_path / "plain.parquet"
    pq.write_table(pa.Table.from_pandas(pd.DataFrame({"x": [1.0]})), plain)
    with pytest.raises(EpisodeFileError, match="without bulletdrive episode metadata"):
        load_episode(plain)
    with pytest.raises(EpisodeFileError, match="does not exist"):
        load_episode(tmp_path / "missing.parquet")
    # A file from a newer bulletdrive is refused, naming the versions.
    table = pq.read_table(good)
    meta = json.loads(table.schema.metadata[b"bulletdrive"])
    meta["format_version"] = recording.FORMAT_VERSION + 1
    newer = tmp_path / "newer.parquet"
    pq.write_table(table.replace_schema_metadata({b"bulletdrive": json.dumps(meta)}), newer)
    with pytest.raises(EpisodeFileError, match="format version 2, newer .*upgrade"):
        load_episode(newer)
    assert issubclass(EpisodeFileError, ValueError)
    with pytest.raises(EpisodeFileError, match="empty.parquet. is not a readable"):
        load_episodes(tmp_path)  # a folder with a bad file names it
    (tmp_path / "empty").mkdir()
    with pytest.raises(EpisodeFileError, match="no episode files"):
        load_episodes(tmp_path / "empty")
    with pytest.raises(EpisodeFileError, match="does not exist"):
        load_episodes(tmp_path / "nowhere")


def test_interrupted_eval_keeps_finished_episodes(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    real_write = pq.write_table
    writes: list[Path] = []

    def interrupted(table: pa.Table, where: Any, **kwargs: Any) -> None:
        writes.append(Path(where))
        if len(writes) == 2:  # Ctrl-C half way through writing the second episode
            Path(where).write_bytes(b"PAR1 partial")
            raise KeyboardInterrupt
        real_write(table, where, **kwargs)

    monkeypatch.setattr(recording.pq, "write_table", interrupted)
    with pytest.raises(KeyboardInterrupt):
        evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)
    first, second = (episode_path(out, s) for s in (299_990, 299_991))
    assert load_episode(first)[1]["seed"] == 299_990
    assert not second.exists()
    assert writes[1].name.startswith(".") and not writes[1].exists()  # temp file removed
    assert not (out / "metrics.json").exists()
    monkeypatch.undo()

    # A run killed outright leaves its temporary file behind: it is not an episode, and
    # the next run removes it and records only the missing seed.
    leftover = first.parent / ".seed-299991.parquet.x1y2.tmp.parquet"
    leftover.write_bytes(b"PAR1 partial")
    assert load_episodes(out)["seed"].unique().tolist() == [299_990]
    before = first.stat().st_mtime_ns
    calls: list[int] = []
    original = runner.run_episode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(args[2]))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run_episode", counting)
    evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)
    assert calls == [299_991] and first.stat().st_mtime_ns == before
    assert not leftover.exists() and second.is_file()


def test_out_dir_of_another_run_is_refused(expert_smoke: EvalResult,
                                           copy_run: Callable[[EvalResult], Path]) -> None:
    out = copy_run(expert_smoke)
    with pytest.raises(ValueError, match="recorded by another run.*agent: 'expert' vs "
                                         "'random'.*new output folder"):
        evaluate("random", "smoke", out, workers=1, progress=False, reps=REPS)
    with pytest.raises(ValueError, match="env_overrides"):
        evaluate("expert", load_suite("smoke", ["num_vehicles=3"]), out, workers=1,
                 progress=False, reps=REPS)


def test_bad_workers_and_action_mode_mismatch(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers must be a whole number >= 1"):
        evaluate("expert", "smoke", tmp_path, workers=0)

    class BehaviorAgent:
        name = "b"
        action_mode = "behavior"

    spec = runner.AgentSpec("b", factory=lambda seed: BehaviorAgent())
    with pytest.raises(ValueError, match="acts in the 'behavior' action mode but suite "
                                         "'smoke' uses 'control'.*action_mode=behavior"):
        runner.run_episode(spec, "smoke", 299_990, tmp_path / "e.parquet")


def test_cli_eval(expert_smoke: EvalResult, copy_run: Callable[[EvalResult], Path],
                  capsys: pytest.CaptureFixture[str]) -> None:
    out = copy_run(expert_smoke)  # recorded already: the command resumes and reports
    assert main(["eval", "--agent", "expert", "--suite", "smoke", "--out", str(out),
                 "--workers", "1", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# expert on smoke") and "| driving_score |" in printed
    assert f"report: {out / 'report.html'}" in printed
    html = (out / "report.html").read_text()
    assert "data:image/png;base64," in html and "seed-299990" in html
    for argv, message in [
        (["--agent", "nobody", "--suite", "smoke"], "unknown agent 'nobody'"),
        (["--agent", "expert", "--suite", "nope"],
         "valid names: demo, highway-merge-val, highway-test"),
        (["--agent", "expert", "--suite", "smoke", "--set", "episodes=zero"],
         "'episodes' must be int"),
    ]:
        assert main(["eval", *argv, "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
