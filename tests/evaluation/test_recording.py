"""Episode recording: one row per control step in every action mode, metrics inputs
computed correctly (TTC, corners outside the road), Parquet round trip with metadata."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import envs
from envs.maps.road_map import Lane, RoadMap
from evaluation import load_episode, load_episodes
from evaluation.metrics import REQUIRED_COLUMNS, episode_metrics
from evaluation.recording import (
    COLUMNS,
    FORMAT_VERSION,
    METADATA_KEYS,
    RecordingWrapper,
    body_corners,
    corner_outside_m,
    package_version,
    write_episode,
)
from evaluation.report import EvalResult
from planning.action_modes import wrap_action_mode
from planning.policies import make_policy

QUIET = ["sensors.camera=false", "ramp_start_prob=0", "traffic.num_vehicles=6", "max_steps=24"]


def drive(env_id: str, mode: str, overrides: list[str], seed: int = 299_700
          ) -> tuple[RecordingWrapper, int]:
    """Drive the expert through a recorder beneath the ``mode`` layer; returns the
    recorder and the number of outer (policy) steps."""
    bare = envs.make(env_id, overrides=[*overrides, f"action.mode={mode}"])
    recorder = RecordingWrapper(bare)
    env = wrap_action_mode(recorder)
    policy = make_policy("expert")
    obs, _ = env.reset(seed=seed)
    outer, done = 0, False
    while not done:
        action = policy.act(obs, env)
        recorder.policy_action = action
        obs, _, terminated, truncated, _ = env.step(action)
        outer += 1
        done = terminated or truncated
    bare.close()
    return recorder, outer


@pytest.mark.parametrize("mode", ["behavior", "trajectory"])
def test_one_row_per_control_step_beneath_decision_layers(mode: str) -> None:
    recorder, outer = drive("Highway-v0", mode, QUIET)
    rows = pd.DataFrame(recorder.rows)
    assert list(rows.columns) == list(COLUMNS)
    assert len(rows) == 24 and outer == 8  # 3 control steps per decision
    assert rows["step"].tolist() == list(range(1, 25))
    assert rows["decision"].tolist() == [k // 3 for k in range(24)]
    assert rows["t_s"].iloc[-1] == pytest.approx(2.4)
    # Every control step of one decision carries that decision.
    for _, group in rows.groupby("decision"):
        assert group["policy_action"].nunique() == 1
    decoded = json.loads(rows["policy_action"].iloc[0])
    assert isinstance(decoded, int) if mode == "behavior" else len(decoded) == 3
    # The applied controls are the layer's tracker commands, not the decision.
    assert rows["control_steer"].between(-1, 1).all()
    assert rows["control_accel"].between(-1, 1).all()
    assert bool(rows["truncated"].iloc[-1]) and not rows["truncated"].iloc[:-1].any()


def test_recorded_columns_match_the_env() -> None:
    bare = envs.make("Highway-v0", overrides=QUIET)
    recorder = RecordingWrapper(bare)
    _, info0 = recorder.reset(seed=299_701)
    policy = make_policy("expert")
    obs: Any = None
    for _ in range(5):
        action = policy.act(obs, recorder)
        recorder.policy_action = action
        obs, reward, _, _, info = recorder.step(action)
    row = recorder.rows[-1]
    st = bare.state
    assert (row["x_m"], row["y_m"], row["speed_mps"]) == (st.x, st.y, st.speed_mps)
    assert row["lat_accel_mps2"] == st.speed_mps * st.yaw_rate_radps
    assert row["route_progress_m"] == info["route_progress_m"]
    assert row["reward"] == reward and row["step"] == 5
    assert row["lane"] == info["ego"]["lane"] and row["d_m"] == info["ego"]["lateral_offset_m"]
    assert json.loads(row["policy_action"]) == pytest.approx(np.asarray(action).tolist())
    assert [row["control_steer"], row["control_accel"]] == pytest.approx(
        np.clip(action, -1, 1).tolist())
    t = bare.traffic
    assert row["traffic_xy"] == np.column_stack([t.x[t.active], t.y[t.active]]).ravel().tolist()
    assert recorder.route_length_m == info0["route_length_m"]
    bare.close()


def test_urban_recording_and_metrics_from_the_rows() -> None:
    recorder, _ = drive("Urban-v0", "control",
                        ["sensors.camera=false", "max_steps=20", "traffic.num_vehicles=6"])
    rows = pd.DataFrame(recorder.rows)
    assert len(rows) == 20 and set(REQUIRED_COLUMNS) <= set(rows.columns)
    meta = recorder.episode_metadata(env_id="bulletdrive/Urban-v0", agent="expert",
                                     suite="t")
    m = episode_metrics(rows, dt_s=meta["dt_s"], route_length_m=meta["route_length_m"])
    assert m["duration_s"] == pytest.approx(2.0) and m["distance_m"] > 0


def test_recorder_must_sit_on_the_bare_env() -> None:
    bare = envs.make("Highway-v0", overrides=[*QUIET, "action.mode=behavior"])
    try:
        with pytest.raises(TypeError, match="bare DrivingEnv"):
            RecordingWrapper(wrap_action_mode(bare))
    finally:
        bare.close()


# ---------------------------------------------------------------------- metric inputs
def straight_map() -> RoadMap:
    xs = np.linspace(0.0, 100.0, 51)
    lane = Lane("a", "road", np.column_stack([xs, np.zeros_like(xs)]), np.full(51, 4.0),
                xs.copy(), 20.0)
    return RoadMap([lane])


@pytest.mark.parametrize(("y", "expected"), [
    (0.0, 0.0),     # centred: corners 1 m inside the 2 m half width
    (1.5, 0.5),     # left corners 0.5 m beyond the edge
    (-2.2, 1.2),    # right corners 1.2 m beyond
    (8.0, 7.0),     # far off: no lane located, measured against every segment
])
def test_corner_outside_m_on_a_straight_lane(y: float, expected: float) -> None:
    corners = body_corners(50.0, y, 0.0, 4.0, 2.0)
    assert corner_outside_m(straight_map(), corners) == pytest.approx(expected, abs=1e-9)


def test_body_corners() -> None:
    corners = body_corners(1.0, 2.0, math.pi / 2, 4.0, 2.0)
    assert corners == pytest.approx(np.array([[0.0, 4.0], [0.0, 0.0], [2.0, 0.0],
                                              [2.0, 4.0]]))


# ---------------------------------------------------------------------- files
def test_episode_file_round_trip(expert_smoke: EvalResult) -> None:
    path = expert_smoke.out_dir / "episodes" / "seed-299990.parquet"
    rows, meta = load_episode(path)
    assert list(rows.columns) == list(COLUMNS) and len(rows) == meta["steps"] == 60
    assert set(METADATA_KEYS) <= set(meta)
    assert meta["format_version"] == FORMAT_VERSION
    assert meta["package_version"] == package_version() != "unknown"
    assert (meta["env_id"], meta["action_mode"], meta["seed"]) == (
        "bulletdrive/Highway-v0", "control", 299_990)
    assert (meta["agent"], meta["suite"], meta["reset_options"]) == ("expert", "smoke", {})
    assert meta["config"]["max_steps"] == 60 and meta["config"]["sensors"]["camera"] is False
    assert meta["config"]["traffic"]["num_vehicles"] == 8
    assert meta["dt_s"] == 0.1 and meta["route_length_m"] > 100
    assert meta["expert_progress_m"] == pytest.approx(rows["route_progress_m"].max())
    assert isinstance(rows["traffic_xy"].iloc[0], np.ndarray)
    m = episode_metrics(rows, dt_s=meta["dt_s"], route_length_m=meta["route_length_m"],
                        expert_progress_m=meta["expert_progress_m"])
    assert m == expert_smoke.episodes[0].metrics


def test_load_episodes_concatenates_with_episode_and_seed(expert_smoke: EvalResult,
                                                          tmp_path: Path) -> None:
    table = load_episodes(expert_smoke.out_dir)  # the run folder: uses episodes/
    assert list(table.columns[:4]) == ["episode", "seed", "agent", "suite"]
    assert table.groupby("episode").size().to_dict() == {"seed-299990": 60, "seed-299991": 60}
    assert sorted(table["seed"].unique().tolist()) == [299_990, 299_991]
    # Temporary files of interrupted writes are not episodes.
    folder = tmp_path / "eps"
    folder.mkdir()
    src = expert_smoke.out_dir / "episodes" / "seed-299990.parquet"
    (folder / "seed-299990.parquet").write_bytes(src.read_bytes())
    (folder / ".seed-299991.parquet.abc.tmp.parquet").write_bytes(src.read_bytes()[:500])
    assert load_episodes(folder)["episode"].unique().tolist() == ["seed-299990"]


def test_write_episode_checks_its_input(tmp_path: Path) -> None:
    recorder, _ = drive("Highway-v0", "control", [*QUIET, "max_steps=3"])
    meta = recorder.episode_metadata(env_id="bulletdrive/Highway-v0", agent="a", suite="s")
    with pytest.raises(ValueError, match="at least one recorded step"):
        write_episode(tmp_path / "e.parquet", [], meta)
    with pytest.raises(ValueError, match="lack column.*ttc_s"):
        write_episode(tmp_path / "e.parquet",
                      [{k: v for k, v in r.items() if k != "ttc_s"} for r in recorder.rows],
                      meta)
    with pytest.raises(ValueError, match="metadata lacks key.*seed"):
        write_episode(tmp_path / "e.parquet", recorder.rows,
                      {k: v for k, v in meta.items() if k != "seed"})
    assert not list(tmp_path.iterdir())
    write_episode(tmp_path / "e.parquet", [{**r, "note": "x"} for r in recorder.rows], meta)
    rows, back = load_episode(tmp_path / "e.parquet")
    assert rows["note"].tolist() == ["x"] * 3 and back["seed"] == 299_700
