"""SharedMemoryVecEnv: same observations as DummyVecEnv, SB3 API, errors, shared-memory cleanup."""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.shm_vec_env import SharedMemoryVecEnv, WorkerError, worker_cpus
from planning.make import make_env

# Small, light envs; max_steps=8 truncates episodes early so that ~20 steps see auto-resets.
OVERRIDES = ("camera.width=32", "camera.height=32", "traffic.num_vehicles=2", "max_steps=8")
ENV_FN = functools.partial(make_env, "Highway-v0", action_mode="control", overrides=OVERRIDES)
# Different per env, so that a mix-up of rows would show.
ACTIONS = np.array([[0.1, 0.5], [-0.2, 0.3]], dtype=np.float32)


def _failing_env() -> gym.Env[Any, Any]:
    raise RuntimeError("env factory broke on purpose")


@pytest.fixture(scope="module")
def shm_env() -> Iterator[SharedMemoryVecEnv]:
    venv = SharedMemoryVecEnv([ENV_FN, ENV_FN])
    yield venv
    venv.close()


def _assert_obs_equal(a: dict[str, np.ndarray], b: dict[str, np.ndarray], where: str) -> None:
    assert a.keys() == b.keys(), where
    for key in a:
        assert a[key].dtype == b[key].dtype, (where, key)
        np.testing.assert_array_equal(a[key], b[key], err_msg=f"{where}: {key}")


def test_matches_dummy_vec_env_bit_for_bit_with_auto_reset(shm_env: SharedMemoryVecEnv) -> None:
    dummy = DummyVecEnv([ENV_FN, ENV_FN])
    try:
        assert shm_env.observation_space == dummy.observation_space
        assert shm_env.action_space == dummy.action_space
        assert shm_env.seed(5) == dummy.seed(5) == [5, 6]
        obs_s, obs_d = shm_env.reset(), dummy.reset()
        _assert_obs_equal(obs_s, obs_d, "reset")  # type: ignore[arg-type]
        assert shm_env._seeds == [None, None]  # seeds are used once, as in SB3
        terminal_seen = 0
        for step in range(20):
            obs_s, rew_s, done_s, infos_s = shm_env.step(ACTIONS)
            obs_d, rew_d, done_d, infos_d = dummy.step(ACTIONS)
            _assert_obs_equal(obs_s, obs_d, f"step {step}")  # type: ignore[arg-type]
            np.testing.assert_array_equal(rew_s, rew_d)
            np.testing.assert_array_equal(done_s, done_d)
            assert rew_s.dtype == np.float32 and done_s.dtype == bool
            for i, (info_s, info_d) in enumerate(zip(infos_s, infos_d, strict=True)):
                assert info_s.keys() == info_d.keys()
                assert info_s["TimeLimit.truncated"] == info_d["TimeLimit.truncated"]
                if done_s[i]:
                    terminal_seen += 1
                    term_s, term_d = info_s["terminal_observation"], info_d["terminal_observation"]
                    _assert_obs_equal(term_s, term_d, f"terminal {step}/{i}")
                    assert isinstance(term_s["camera"], np.ndarray)
                    # The terminal frame is the last of the old episode, not the new first.
                    assert not np.array_equal(term_s["camera"], obs_s["camera"][i])  # type: ignore[call-overload]
                else:
                    assert "terminal_observation" not in info_s
        assert terminal_seen >= 2  # max_steps=8: both envs were truncated and reset
    finally:
        dummy.close()


def test_copies_by_default_and_views_without_copy() -> None:
    venv = SharedMemoryVecEnv([ENV_FN], copy_obs=False)
    try:
        first = venv.reset()["camera"]  # type: ignore[call-overload]
        kept = first.copy()
        second = venv.step(ACTIONS[:1])[0]["camera"]  # type: ignore[call-overload]
        assert second is first  # the same shared view, overwritten in place
        assert not np.array_equal(second, kept)
    finally:
        venv.close()


def test_vec_env_api(shm_env: SharedMemoryVecEnv) -> None:
    assert shm_env.num_envs == 2
    assert shm_env.get_attr("render_mode") == [None, None]
    assert shm_env.get_attr("config", indices=1)[0].max_steps == 8
    assert shm_env.has_attr("road_map") and not shm_env.has_attr("no_such_attribute")
    with pytest.raises(AttributeError):
        shm_env.get_attr("no_such_attribute")
    shm_env.set_attr("bench_tag", "x", indices=[0])
    assert shm_env.get_attr("bench_tag", indices=0) == ["x"]
    assert shm_env.env_method("__repr__", indices=[1])[0].startswith("<")
    assert shm_env.env_is_wrapped(gym.Wrapper) == [False, False]
    # A method error is not fatal: the vec env still steps afterwards.
    with pytest.raises(TypeError):
        shm_env.env_method("reset", "not-a-keyword-call")
    shm_env.reset()
    shm_env.step(ACTIONS)
    assert not shm_env.closed


def test_worker_exception_propagates_and_releases_shared_memory() -> None:
    venv = SharedMemoryVecEnv([ENV_FN, ENV_FN])
    names = list(venv.shared_memory_names.values())
    assert names
    for name in names:
        SharedMemory(name=name).close()  # attaching works while the vec env is open
    venv.reset()
    bad = ACTIONS.copy()
    bad[1] = np.nan
    with pytest.raises(ValueError, match="NaN") as info:
        venv.step(bad)
    notes = "\n".join(getattr(info.value, "__notes__", []))
    assert "worker 1" in notes and "'step'" in notes
    assert "Traceback" in notes and "driving_env.py" in notes  # the worker's traceback
    assert venv.closed  # a failed step is fatal: workers stopped, memory released
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
    assert all(not p.is_alive() for p in venv.processes)
    with pytest.raises(RuntimeError, match="closed"):
        venv.reset()


def test_close_unlinks_shared_memory_and_is_idempotent() -> None:
    venv = SharedMemoryVecEnv([ENV_FN])
    processes = venv.processes
    names = list(venv.shared_memory_names.values())
    venv.reset()
    venv.step_async(ACTIONS[:1])  # closing with a step in flight drains it first
    venv.close()
    venv.close()
    for name in names:
        with pytest.raises(FileNotFoundError):
            SharedMemory(name=name)
    assert all(p.exitcode == 0 for p in processes)


def test_env_factory_error_is_reraised_with_worker_traceback() -> None:
    with pytest.raises(RuntimeError, match="broke on purpose") as info:
        SharedMemoryVecEnv([ENV_FN, _failing_env])
    assert "_failing_env" in "\n".join(getattr(info.value, "__notes__", []))


def test_dead_worker_raises_worker_error() -> None:
    venv = SharedMemoryVecEnv([ENV_FN])
    names = list(venv.shared_memory_names.values())
    venv.processes[0].kill()
    venv.processes[0].join()
    with pytest.raises(WorkerError, match="worker 0"):
        venv.reset()
    assert venv.closed
    with pytest.raises(FileNotFoundError):
        SharedMemory(name=names[0])


def test_on_ready_reports_each_env_once_with_its_row_written() -> None:
    venv = SharedMemoryVecEnv([ENV_FN, ENV_FN], copy_obs=False)
    try:
        venv.seed(1)
        venv.reset()
        frames = venv.shared_array("camera")
        seen: dict[int, np.ndarray] = {}
        venv.step_async(ACTIONS)
        obs, _, _, _ = venv.step_wait(on_ready=lambda i: seen.__setitem__(i, frames[i].copy()))
        assert sorted(seen) == [0, 1]
        for i in (0, 1):  # the row was final when env i was reported
            np.testing.assert_array_equal(seen[i], obs["camera"][i])  # type: ignore[call-overload]
        with pytest.raises(KeyError, match="shared image key"):
            venv.shared_array("measurements")
    finally:
        venv.close()


def test_on_ready_error_surfaces_after_all_replies_and_env_stays_usable() -> None:
    venv = SharedMemoryVecEnv([ENV_FN, ENV_FN])
    try:
        venv.reset()

        def broken(i: int) -> None:
            raise ValueError(f"callback failed on env {i}")

        venv.step_async(ACTIONS)
        with pytest.raises(ValueError, match="callback failed"):
            venv.step_wait(on_ready=broken)
        assert not venv.waiting and not venv.closed
        obs, _, _, _ = venv.step(ACTIONS)  # the pipes are still in step
        assert obs["camera"].shape[0] == 2  # type: ignore[call-overload]
    finally:
        venv.close()


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU pinning is Linux-only")
def test_workers_are_pinned_round_robin_unless_disabled() -> None:
    allowed = sorted(os.sched_getaffinity(0))
    assert worker_cpus(3) == [allowed[i % len(allowed)] for i in range(3)]
    venv = SharedMemoryVecEnv([ENV_FN, ENV_FN], pin_workers=True)
    free = SharedMemoryVecEnv([ENV_FN], pin_workers=False)
    try:
        assert venv.worker_cpus == worker_cpus(2)
        for process, cpu in zip(venv._res.processes, venv.worker_cpus, strict=True):
            assert process.pid is not None and os.sched_getaffinity(process.pid) == {cpu}
        assert free.worker_cpus == [None]
        pid = free._res.processes[0].pid
        assert pid is not None and os.sched_getaffinity(pid) == set(allowed)
        # By default only workers that fill every CPU are pinned.
        assert SharedMemoryVecEnv.default_pinning(len(allowed)) is True
        assert SharedMemoryVecEnv.default_pinning(len(allowed) - 1) is False
    finally:
        venv.close()
        free.close()
