"""The backbone benchmark: config loading and validation, a complete ``smoke`` run on a
tiny collected dataset, resumption that skips finished cells, and CLI errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from agents.collect import CollectConfig, collect
from cli.main import main
from common.config import ConfigError
from evaluation.benchmark import (
    BenchmarkConfig,
    BenchmarkResult,
    Cell,
    CellResult,
    aggregate_row,
    load_benchmark_config,
    plan_benchmark,
    run_benchmark,
    slug,
)
from evaluation.report import EpisodeSummary, EvalResult
from evaluation.statistics import iqm
from evaluation.suites import load_suite

#: The two rows of the ``smoke`` benchmark, as they start in benchmark.md.
SMOKE_ROWS = ("| nature_cnn | curl | frozen | 1 | 2 |", "| - | - | privileged | 1 | 2 |")


@pytest.fixture(scope="module")
def frames(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 short expert episodes: both splits get frames (as in the demo)."""
    out = tmp_path_factory.mktemp("bench_frames")
    collect(CollectConfig(envs=("Highway-v0",), episodes_per_env=4, max_steps=40,
                          val_fraction=0.3, overrides=("traffic.num_vehicles=8",)),
            out, progress=False)
    return out


@pytest.fixture(scope="module")
def smoke_run(frames: Path, tmp_path_factory: pytest.TempPathFactory) -> BenchmarkResult:
    """The shipped ``smoke`` benchmark (pretraining already uses batch_size=32)."""
    cfg = load_benchmark_config("smoke", [f"data={frames}"])
    out = tmp_path_factory.mktemp("bench_out")
    return run_benchmark(cfg, out, progress=False, workers=1)


# ---------------------------------------------------------------------- configs
def test_shipped_configs_load_and_plan() -> None:
    default = load_benchmark_config()
    assert default.name == "default" and default.track == "bc"
    assert default.encoders == ("nature_cnn", "impala_cnn")
    assert default.objectives == ("curl", "atc") and default.modes == ("frozen", "finetune")
    assert default.seeds == (0, 1, 2) and default.baselines == ("scratch", "privileged")
    plan = plan_benchmark(default)
    assert plan.suite.name == "highway-test" and plan.suite.action_mode == "behavior"
    assert len(plan.pretrains) == 4
    assert len(plan.cells) == 2 * 2 * 2 * 3 + 2 * 3
    assert plan.rows[:2] == ("nature_cnn/curl/frozen", "nature_cnn/curl/finetune")
    assert plan.rows[-2:] == ("scratch", "privileged")
    # Every cell trains in the suite's env and action mode with the shared settings.
    assert plan.base_train.algo == "bc" and plan.base_train.action_mode == "behavior"
    assert plan.base_train.bc.episodes == 20

    smoke = load_benchmark_config("smoke", ["seeds=[3, 4]"])
    plan = plan_benchmark(smoke)
    assert [c.id for c in plan.cells] == ["privileged_s3", "privileged_s4",
                                          "nature_cnn_curl_frozen_s3",
                                          "nature_cnn_curl_frozen_s4"]
    assert plan.pretrains[0].config.batch_size == 32
    assert plan.pretrains[0].config.objective.name == "curl"


def test_timm_encoders_get_file_safe_ids_and_unknown_models_are_refused() -> None:
    cfg = BenchmarkConfig(encoders=("timm:resnet18",), objectives=("byol",),
                          modes=("finetune",), baselines=())
    assert slug("timm:resnet18") == "timm-resnet18"
    assert [c.id for c in plan_benchmark(cfg).cells] == ["timm-resnet18_byol_finetune_s0"]
    with pytest.raises(ConfigError, match="timm has no model"):
        plan_benchmark(BenchmarkConfig(encoders=("timm:resnet_nope",), baselines=()))


def _fake_result(seed: int, scores: list[float], at_fault: list[int]) -> CellResult:
    suite = load_suite("smoke")
    episodes = [EpisodeSummary(299990 + i, f"seed-{299990 + i}", {
        "driving_score": ds, "route_completion": ds / 100.0, "at_fault_collisions": af,
        "success": False, "collisions_vehicle": af, "collisions_pedestrian": 0,
        "collisions_static": 0, "off_road": 0, "timeout": True})
        for i, (ds, af) in enumerate(zip(scores, at_fault, strict=True))]
    cell = Cell(f"privileged_s{seed}", "privileged", "privileged", seed)
    return CellResult(cell, Path("."), Path("."), EvalResult("x", suite, Path("."), episodes),
                      skipped=False)


def test_rows_pool_episodes_and_take_the_iqm_over_seeds_x_episodes() -> None:
    scores = {0: [10.0, 20.0, 30.0, 40.0], 1: [50.0, 60.0, 70.0, 80.0],
              2: [0.0, 5.0, 90.0, 95.0]}
    at_fault = {0: [0, 2, 0, 0], 1: [0, 0, 0, 0], 2: [1, 0, 0, 1]}
    results = [_fake_result(s, scores[s], at_fault[s]) for s in scores]
    row = aggregate_row(results, reps=200)
    pooled = np.array([v for s in scores for v in scores[s]])
    ds = {k: float("nan") if v is None else v for k, v in row["driving_score"].items()}
    assert ds["mean"] == pytest.approx(pooled.mean())
    assert ds["ci_low"] < ds["mean"] < ds["ci_high"]
    assert ds["iqm"] == pytest.approx(iqm(pooled))
    assert ds["iqm_ci_low"] <= ds["iqm"] <= ds["iqm_ci_high"]
    assert row["route_completion"]["mean"] == pytest.approx(pooled.mean() / 100.0)
    # Episodes with any at-fault collision, not the number of collisions.
    assert row["at_fault_collision_rate"]["mean"] == pytest.approx(3 / 12)
    assert aggregate_row(results, reps=200) == row  # seeded: the same numbers again


@pytest.mark.parametrize(("override", "message"), [
    ("encoders=[resnet]", "unknown encoder(s) 'resnet'; valid: nature_cnn, impala_cnn"),
    ("objectives=[simclr]", "unknown name(s) 'simclr'; valid: curl, byol, mae, atc"),
    ("modes=[frozen, warm]", "unknown name(s) 'warm'; valid: frozen, finetune"),
    ("baselines=[expert]", "unknown name(s) 'expert'; valid: scratch, privileged"),
    ("seeds=[]", "at least one seed"),
    ("seeds=[1, 1]", "'seeds' has duplicates"),
    ("track=sac", "valid choices: 'bc', 'ppo'"),
    ("pretrain_minutes=-1", "'pretrain_minutes' must be >= 0"),
    ("modes=[]", "are empty while"),
    ("train_overrides=[seed=3]", "may not set seed"),
    ("train_overrides=[bc]", "must have the form key.sub=value"),
    ("pretrain_overrides=[objective.name=mae]", "may not set objective.name"),
    ("colour=red", "unknown config key 'colour'"),
])
def test_invalid_configs_name_the_problem(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_benchmark_config("smoke", [override])
    assert message in str(info.value)


def test_unknown_config_lists_the_shipped_ones() -> None:
    with pytest.raises(ConfigError, match="valid names: default, smoke"):
        load_benchmark_config("nope")


def test_bad_suite_or_train_override_fails_before_anything_is_written(tmp_path: Path) -> None:
    for override, message in (("suite=nope", "no config 'nope' in configs/suites/"),
                              ("train_overrides=[bc.epochz=2]", "unknown config key")):
        cfg = load_benchmark_config("smoke", [override])
        with pytest.raises(ConfigError, match=message):
            run_benchmark(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_missing_dataset_is_a_clear_error(tmp_path: Path) -> None:
    cfg = load_benchmark_config("smoke", [f"data={tmp_path / 'no_frames'}"])
    with pytest.raises(ConfigError, match=r"dataset directory .*no_frames' does not exist; "
                                          r"collect one"):
        run_benchmark(cfg, tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_cli_prints_one_error_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["benchmark", "--config", "smoke", "--out", str(tmp_path),
                 "--set", "objectives=[simclr]"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "curl, byol, mae, atc" in err


# ---------------------------------------------------------------------- a run
def test_smoke_run_writes_table_json_plot_and_cells(smoke_run: BenchmarkResult) -> None:
    out = smoke_run.out_dir
    assert set(smoke_run.ran) == {"privileged_s0", "nature_cnn_curl_frozen_s0"}
    assert smoke_run.skipped == ()
    table = (out / "benchmark.md").read_text()
    assert table == smoke_run.table
    header = next(line for line in table.splitlines() if line.startswith("| encoder"))
    for column in ("driving score", "driving score IQM", "route completion",
                   "at-fault collision rate", "lane_offset_m R^2", "lead_distance_m R^2"):
        assert f"| {column} |" in header
    rows = [line for line in table.splitlines() if line.startswith("| ") and line != header]
    assert len(rows) == 2
    for row, prefix in zip(rows, SMOKE_ROWS, strict=True):
        assert row.startswith(prefix)
        assert "[" in row  # mean [CI] cells
    # The probe R^2 stands beside the pretrained row only.
    assert rows[1].endswith("| - | - |") and not rows[0].endswith("| - | - |")

    data = json.loads((out / "benchmark.json").read_text())
    assert [r["row"] for r in data["rows"]] == ["nature_cnn/curl/frozen", "privileged"]
    for row in data["rows"]:
        assert row["seeds"] == [0] and row["episodes"] == 2
        for metric in ("driving_score", "route_completion", "at_fault_collision_rate"):
            stats = row["metrics"][metric]
            assert stats["ci_low"] <= stats["mean"] <= stats["ci_high"]
            assert stats["iqm"] is not None
    assert set(data["rows"][0]["probe"]) == {"lane_offset_m", "lead_distance_m"}
    assert data["rows"][0]["probe"]["lane_offset_m"] is not None

    assert (out / "benchmark.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    cells = json.loads((out / "cells.json").read_text())["cells"]
    assert {c["id"] for c in cells} == set(smoke_run.ran)
    for c in cells:
        assert Path(c["eval_dir"], "metrics.json").is_file()
        assert Path(c["agent_dir"], "agent.json").is_file()
    assert (out / "pretrain" / "nature_cnn_curl" / "encoder" / "encoder.safetensors").is_file()
    assert (out / "pretrain" / "nature_cnn_curl" / "probe" / "probes.json").is_file()
    assert not list(out.rglob(".*.tmp*"))  # atomic writes leave no temporaries


def test_rerun_skips_done_cells(smoke_run: BenchmarkResult, frames: Path, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    shutil.copytree(smoke_run.out_dir, out)
    watched = [*out.glob("cells/*/eval/metrics.json"), *out.glob("cells/*/final/*"),
               *out.glob("pretrain/*/encoder/*"), *out.glob("pretrain/*/probe/*")]
    assert len(watched) >= 6
    before = {p: p.stat().st_mtime_ns for p in watched}
    code = main(["benchmark", "--config", "smoke", "--out", str(out), "--workers", "1",
                 "--set", f"data={frames}", "--quiet"])
    assert code == 0
    printed = capsys.readouterr().out
    assert all(prefix in printed for prefix in SMOKE_ROWS)
    assert "cells: 0 run, 2 already done" in printed
    assert {p: p.stat().st_mtime_ns for p in watched} == before
    for cell in json.loads((out / "cells.json").read_text())["cells"]:
        assert cell["skipped"] and Path(cell["agent_dir"]).is_relative_to(out)
    # The same files give the same table.
    assert (out / "benchmark.md").read_text() == smoke_run.table


def test_rerun_with_other_settings_is_refused(smoke_run: BenchmarkResult, frames: Path,
                                              tmp_path: Path) -> None:
    out = tmp_path / "out"
    shutil.copytree(smoke_run.out_dir, out)
    cfg = load_benchmark_config("smoke", [f"data={frames}",
                                          "train_overrides=[bc.episodes=1, bc.max_steps=20, "
                                          "bc.epochs=2]"])
    with pytest.raises(ConfigError, match=r"cell privileged_s0 .* other settings "
                                          r"\(differing: train.bc.epochs\)"):
        run_benchmark(cfg, out, progress=False, workers=1)
