"""Replay of recorded episodes: verification by re-simulation, video and PNG rendering,
the ``replay`` CLI and its errors on bad files."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cli.main import main
from evaluation.recording import METADATA_KEY, EpisodeFileError, load_episode
from evaluation.replay import (
    BAND_PX,
    CROSS_VERSION_TOLERANCE,
    PANEL_PX,
    frame_png,
    render_episode,
    verify_episode,
)
from evaluation.runner import run_episode
from evaluation.suites import load_suite

ROOT = Path(__file__).resolve().parents[2]
STEPS = 40


@pytest.fixture(scope="module")
def episode(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The expert on the first ``smoke`` seed, cut to :data:`STEPS` control steps."""
    out = tmp_path_factory.mktemp("replay") / "episode.parquet"
    suite = load_suite("smoke", [f"max_steps={STEPS}"])
    run_episode("expert", suite, suite.episode_seeds()[0], out, record_expert_progress=False)
    return out


def _rewrite(src: Path, dst: Path, column: str | None = None, index: int = 0,
             value: float = 0.0, meta: Callable[[dict[str, Any]], None] | None = None
             ) -> Path:
    """Copy an episode file, changing one value of a column and/or its metadata (the
    schema metadata is kept otherwise)."""
    table = pq.read_table(src)
    if column is not None:
        values = table.column(column).to_pylist()
        values[index] = value
        i = table.schema.get_field_index(column)
        table = table.set_column(i, table.schema.field(i), pa.array(values, pa.float64()))
    if meta is not None:
        data = json.loads(table.schema.metadata[METADATA_KEY])
        meta(data)
        table = table.replace_schema_metadata({METADATA_KEY: json.dumps(data).encode()})
    pq.write_table(table, dst)
    return dst


def test_verify_in_a_fresh_process_is_bit_identical(episode: Path) -> None:
    # A new interpreter shares nothing with the recording process (no warm caches).
    proc = subprocess.run([sys.executable, "-m", "cli.main", "replay", str(episode), "--verify"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("OK:"), proc.stdout
    assert f"{STEPS}/{STEPS} steps" in proc.stdout
    result = verify_episode(episode)
    assert result.ok and result.steps == STEPS and result.first_divergent_step is None
    assert result.max_abs_error == 0.0 and result.tolerance == 0.0 and result.note == ""


@pytest.mark.parametrize(("column", "index", "value"),
                         [("control_accel", 12, -1.0), ("control_steer", 25, 0.5)])
def test_tampered_action_diverges_at_its_step(episode: Path, tmp_path: Path,
                                              capsys: pytest.CaptureFixture[str],
                                              column: str, index: int, value: float) -> None:
    rows, _ = load_episode(episode)
    step = int(rows["step"].iloc[index])
    bad = _rewrite(episode, tmp_path / "tampered.parquet", column, index, value)
    result = verify_episode(bad)
    # A row holds the state after its own command, so the changed command of row `index`
    # shows in that very row.
    assert not result.ok
    assert result.first_divergent_step == step
    assert result.steps == index + 1
    assert result.column in ("x_m", "y_m", "yaw_rad", "speed_mps")
    assert result.recorded != result.replayed
    assert main(["replay", str(bad), "--verify"]) == 1
    assert f"DIVERGED: {bad} at step {step}" in capsys.readouterr().out


def test_other_package_version_uses_the_stated_tolerance(episode: Path, tmp_path: Path) -> None:
    def old(meta: dict[str, Any]) -> None:
        meta["package_version"] = "0.0.1"

    result = verify_episode(_rewrite(episode, tmp_path / "old.parquet", meta=old))
    assert result.ok and result.tolerance == CROSS_VERSION_TOLERANCE
    assert "0.0.1" in result.note and "tolerance" in result.note
    assert "note:" in result.summary()


def test_render_video_window_and_png(episode: Path, tmp_path: Path) -> None:
    video = render_episode(episode, tmp_path / "clip.mp4", start=5, end=16)
    cap = cv2.VideoCapture(str(video))
    frames = 0
    shape = None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames += 1
        shape = frame.shape
    cap.release()
    assert frames == 12
    assert shape == (PANEL_PX + BAND_PX, 2 * PANEL_PX, 3)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporaries
    png = frame_png(episode, 10, tmp_path / "frame.png")
    image = cv2.imread(str(png))
    assert image is not None and image.shape == (PANEL_PX + BAND_PX, 2 * PANEL_PX, 3)
    with pytest.raises(ValueError, match="step window"):
        render_episode(episode, tmp_path / "bad.mp4", start=30, end=STEPS + 1)
    assert not (tmp_path / "bad.mp4").exists()


def _not_parquet(src: Path, dst: Path) -> Path:
    dst.write_text("step,x_m\n1,0.0\n")
    return dst


def _truncated(src: Path, dst: Path) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: len(data) // 2])
    return dst


def _newer(src: Path, dst: Path) -> Path:
    def bump(meta: dict[str, Any]) -> None:
        meta["format_version"] = 99

    return _rewrite(src, dst, meta=bump)


@pytest.mark.parametrize(("make", "message"), [
    (_not_parquet, "not a readable Parquet file"),
    (_truncated, "truncated or corrupt"),
    (_newer, "format version 99, newer than"),
])
def test_bad_files_give_one_clear_error(episode: Path, tmp_path: Path,
                                        capsys: pytest.CaptureFixture[str],
                                        make: Callable[[Path, Path], Path], message: str) -> None:
    bad = make(episode, tmp_path / "bad.parquet")
    with pytest.raises(EpisodeFileError, match=message):
        verify_episode(bad)
    with pytest.raises(EpisodeFileError, match=message):
        render_episode(bad, tmp_path / "out.mp4")
    assert main(["replay", str(bad), "--verify"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]


def test_gui_without_display_is_a_clear_error(episode: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("DISPLAY", raising=False)
    assert main(["replay", str(episode), "--gui"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "DISPLAY" in err[0] and err[0].startswith("error: ")


def test_cli_argument_errors(episode: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(episode)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["replay", str(episode), "--frame", "3"]) == 2
    assert "go together" in capsys.readouterr().err
