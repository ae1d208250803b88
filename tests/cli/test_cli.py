"""The bulletdrive CLI: snapshot/demo/bench outputs and one-line errors on bad input."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import pytest

from cli.main import main


def test_snapshot_writes_pngs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["snapshot", "--out", str(tmp_path), "--steps", "3",
                 "--set", "traffic.num_vehicles=4"])
    assert code == 0
    for name in ("camera.png", "camera_x4.png", "bev.png", "map.png"):
        img = cv2.imread(str(tmp_path / name))
        assert img is not None and img.size > 0
    assert cv2.imread(str(tmp_path / "camera.png")).shape == (84, 84, 3)
    assert not list(tmp_path.glob(".*.tmp*"))  # no temporary files left behind


def test_demo_runs_the_whole_stack_at_a_small_scale(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--out", str(tmp_path), "--steps", "12", "--scale", "0.05",
                 "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    assert "random_init" in out  # the probe table
    table = (tmp_path / "comparison.md").read_text()
    for agent in ("expert", "random", str(tmp_path / "train" / "final")):
        assert f"| {agent} | demo |" in table
    summary = json.loads((tmp_path / "summary.json").read_text())
    for report in summary["reports"]:
        assert Path(report).is_file()
    assert (tmp_path / "train" / "final" / "policy.safetensors").is_file()
    cap = cv2.VideoCapture(summary["video"])
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    cap.release()


def test_bench_json(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--json", "--steps", "20", "--workers"]) == 0
    out = json.loads(capsys.readouterr().out)
    cam = out["highway_camera"]
    for key in ("steps_per_s", "ms_per_frame", "ms_per_physics_substep", "ms_per_traffic_update"):
        assert cam[key] > 0
    assert out["highway_no_camera"]["camera"] == "off"


@pytest.mark.parametrize(("argv", "fragment"), [
    (["snapshot", "--set", "traffic.num_vehicle=3"], "unknown config key 'traffic.num_vehicle'"),
    (["snapshot", "--set", "camera.width=big"], "'camera.width' must be an integer"),
    (["snapshot", "--env", "Mars-v0"], "unknown env id 'Mars-v0'; valid: bulletdrive/Highway-v0"),
    (["bench", "--compare", "carla"], "unknown --compare target 'carla'; valid: highway-env"),
    (["collect", "--envs", "Moon-v0"], "unknown env id 'Moon-v0'"),
    (["collect", "--set", "policy=pilot"], "unknown policy 'pilot'; valid: expert, random"),
    (["probe", "--data", "/nonexistent/frames"], "no dataset at /nonexistent/frames"),
])
def test_bad_input_is_one_clear_line(argv: list[str], fragment: str, tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    code = main([*argv, *(["--out", str(tmp_path)] if argv[0] in ("snapshot", "collect",
                                                                   "probe") else [])])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ") and fragment in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(("argv", "fragment"), [
    (["demo", "--seed", "-3"], "--seed: must be a whole number >= 0"),
    (["demo", "--steps", "0"], "--steps: must be a whole number >= 1"),
    (["bench", "--steps", "many"], "--steps: must be a whole number >= 1"),
])
def test_bad_numbers_are_rejected_by_the_parser(argv: list[str], fragment: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2 and fragment in capsys.readouterr().err
