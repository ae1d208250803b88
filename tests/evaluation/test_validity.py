"""Validity of the evaluation harness: scripted crashes and road departures score as the
metric definitions say, the expert beats the random policy, runs are reproducible and
resume exactly what is missing."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import evaluation.runner as runner
from common.config import from_dict
from envs.bench import lane_keeping_action
from envs.driving_env import DrivingEnv
from evaluation import load_episode
from evaluation.metrics import CARLA_PENALTIES, NUPLAN_MAX_CORNER_OUTSIDE_M
from evaluation.report import EvalResult
from evaluation.runner import AgentSpec, episode_path, evaluate, run_episode
from evaluation.suites import SuiteConfig

REPS = 200
#: A quiet highway for scripted drives: no ramp start, camera off, short.
SCRIPTED = ["ramp_start_prob=0", "sensors.camera=false"]


def scripted_suite(num_vehicles: int, *overrides: str) -> SuiteConfig:
    return from_dict(SuiteConfig, {
        "name": "scripted", "env_id": "Highway-v0", "split": "test", "seeds": [299_500],
        "num_vehicles": num_vehicles, "max_steps": 80,
        "overrides": [*SCRIPTED, *overrides]})


class RamStoppedCar:
    """Puts the only traffic vehicle, standing still, 30 m ahead in the ego's lane at the
    first step, then keeps the lane at full throttle into it."""

    name = "ram"

    def reset(self, seed: int | None = None) -> None:
        self.placed = False

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        driving = env.unwrapped
        assert isinstance(driving, DrivingEnv) and driving.road_map is not None
        if not self.placed:
            lp = driving.lane_point
            assert lp is not None
            t = driving.traffic
            t.active[0], t.lane[0] = True, driving.road_map.lane_index[lp.lane]
            t.s[0], t.v[0], t.d[0], t.speed_factor[0] = lp.s + 30.0, 0.0, 0.0, 0.0
            t._update_poses()
            self.placed = True
        return np.array([lane_keeping_action(driving)[0], 1.0], np.float32)


class SteerLeft:
    """Constant gentle left steering, coasting."""

    name = "steer_left"

    def reset(self, seed: int | None = None) -> None:
        pass

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        return np.array([0.1, 0.0], np.float32)


def ram(seed: int | None) -> RamStoppedCar:
    return RamStoppedCar()


def steer_left(seed: int | None) -> SteerLeft:
    return SteerLeft()


def test_rear_end_collision_is_one_at_fault_vehicle_collision(tmp_path: Path) -> None:
    suite = scripted_suite(1, "traffic.opposite_fraction=0", "traffic.ramp_fraction=0")
    out = tmp_path / "ram.parquet"
    result = run_episode(AgentSpec("ram", factory=ram), suite, 299_500, out,
                         record_expert_progress=False,
                         options={"start_lane": "main/f1", "start_s_m": 100.0})
    m = result.metrics
    assert (m["collisions_vehicle"], m["at_fault_collisions"]) == (1, 1)
    assert (m["collisions_static"], m["collisions_pedestrian"], m["off_road"]) == (0, 0, 0)
    assert not m["timeout"] and not m["success"] and m["off_route_fraction"] == 0.0
    assert 0.0 < m["route_completion"] < 0.1
    # CARLA: completion in percent times the vehicle-collision penalty, nothing else.
    assert CARLA_PENALTIES["collision_vehicle"] == 0.6
    assert m["driving_score"] == 100.0 * m["route_completion"] * 0.6
    assert m["nuplan_score"] == 0.0  # at-fault vehicle collision gate
    # The recording saw it coming: TTC fell below a second before the impact.
    rows, meta = load_episode(out)
    assert m["min_ttc_s"] < 1.0 and rows["ttc_s"].iloc[0] > 1.0
    assert bool(rows["terminated"].iloc[-1])
    events = json.loads(rows["events"].iloc[-1])
    assert events[0]["class"] == "vehicle" and events[0]["at_fault"] is True
    assert meta["reset_options"] == {"start_lane": "main/f1", "start_s_m": 100.0}
    assert meta["agent"] == "ram" and meta["expert_progress_m"] is None


def test_steering_off_the_road_is_off_road_with_corners_outside(tmp_path: Path) -> None:
    # A wide median: the car leaves the lanes without hitting the barrier first.
    suite = scripted_suite(0, "map.median_m=20")
    out = tmp_path / "off.parquet"
    result = run_episode(AgentSpec("steer_left", factory=steer_left), suite, 299_500, out,
                         record_expert_progress=False,
                         options={"start_lane": "main/f0", "start_s_m": 100.0})
    m = result.metrics
    assert m["off_road"] == 1
    assert m["collisions_vehicle"] + m["collisions_static"] + m["collisions_pedestrian"] == 0
    assert m["nuplan_score"] == 0.0 and m["nuplan_multiplier"] == 0.0
    rows, _ = load_episode(out)
    outside = rows["corner_outside_m"].to_numpy()
    assert outside[0] == 0.0 and outside.max() > NUPLAN_MAX_CORNER_OUTSIDE_M
    first_off = int(np.flatnonzero(rows["events"].str.contains("off_road"))[0])
    # A corner leaves the lane before the car's centre does.
    assert 0 < int(np.flatnonzero(outside > 0)[0]) < first_off
    # The off-road step is off the route: CARLA's (1 - off-route fraction) applies.
    assert 0.0 < m["off_route_fraction"] < 1.0
    assert m["driving_score"] == pytest.approx(
        100.0 * m["route_completion"] * (1.0 - m["off_route_fraction"]))


def test_expert_beats_random_on_every_score(expert_smoke: EvalResult,
                                            random_smoke: EvalResult) -> None:
    for key in ("driving_score", "nuplan_score", "route_completion"):
        assert expert_smoke.aggregates[key]["mean"] > random_smoke.aggregates[key]["mean"], key
    assert expert_smoke.aggregates["at_fault_collisions"]["mean"] == 0.0
    assert random_smoke.seeds == expert_smoke.seeds == [299_990, 299_991]
    # The random run compared its progress with the expert's cached figures.
    cache = json.loads((random_smoke.out_dir / "expert_progress.json").read_text())
    assert set(cache) == {"299990", "299991"}
    for e in expert_smoke.episodes:
        assert cache[str(e.seed)]["expert_progress_m"] == pytest.approx(
            e.metrics["ego_progress_m"])


def test_same_agent_and_suite_give_bit_equal_metrics(random_smoke: EvalResult,
                                                     tmp_path: Path) -> None:
    # Inline this time; the session run used two worker processes.
    again = evaluate("random", "smoke", tmp_path / "again", workers=1, progress=False,
                     reps=REPS)
    assert (again.out_dir / "metrics.json").read_bytes() == \
        (random_smoke.out_dir / "metrics.json").read_bytes()


def test_resume_reruns_only_the_deleted_episode(expert_smoke: EvalResult,
                                                copy_run: Callable[[EvalResult], Path],
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    out = copy_run(expert_smoke)
    kept, deleted = (episode_path(out, s) for s in expert_smoke.seeds)
    kept_stat = kept.stat()
    deleted.unlink()
    calls: list[int] = []
    original = runner.run_episode

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(args[2]))
        return original(*args, **kwargs)

    monkeypatch.setattr(runner, "run_episode", counting)
    result = evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)
    assert calls == [expert_smoke.seeds[1]]
    assert deleted.is_file()
    assert (kept.stat().st_mtime_ns, kept.stat().st_ino) == (kept_stat.st_mtime_ns,
                                                             kept_stat.st_ino)
    assert (out / "metrics.json").read_bytes() == \
        (expert_smoke.out_dir / "metrics.json").read_bytes()
    # A complete folder is not run again, and a damaged file is recorded again.
    calls.clear()
    evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)
    assert calls == []
    kept.write_bytes(kept.read_bytes()[:100])
    evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)
    assert calls == [expert_smoke.seeds[0]]
    assert json.dumps(result.aggregates) == json.dumps(expert_smoke.aggregates)  # NaN-safe
