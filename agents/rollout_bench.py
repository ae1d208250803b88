"""Throughput of batched rollouts: N worker envs plus one batched encoder forward per step.

:func:`bench_rollouts` measures, for each N, a :class:`SharedMemoryVecEnv` of N
camera-on envs under an :class:`EmbeddingVecEnv` driven by uniformly random actions (as a
policy's forward pass would, minus the policy), and reports env steps per second, the
wall time per vector step and the part of it spent in the encoder.

Threads: the parent's torch runs with one thread during the bench and every worker caps
its numeric libraries at one thread (``worker_threads=1``). Otherwise each process
would start a thread per core, and on a small machine the encoder's threads would
preempt the workers' rendering, which hides the scaling with N. The figures therefore
measure process parallelism, the thing that scales; a GPU encoder is unaffected.

Scaling expectation: the envs step in parallel, so env steps per second grow with N up
to the number of cores (about 1.7-2x from 1 to 2 workers on a 2-core machine) and stay
flat beyond it, while the encoder's cost per vector step grows slowly with the batch.
Episode resets happen inside the timed steps (as they do in training).
"""

from __future__ import annotations

import contextlib
import copy
import functools
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from agents.embedding_vec_env import EmbeddingVecEnv, resolve_device
from agents.shm_vec_env import SharedMemoryVecEnv
from perception.encoders import Encoder
from planning.make import make_env


@contextlib.contextmanager
def torch_threads(num_threads: int) -> Iterator[None]:
    """Set torch's intra-op thread count for a block, then restore it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _bench_one(num_envs: int, steps: int, warmup_steps: int, env_id: str, action_mode: str,
               encoder: Encoder | str | Path, device: torch.device,
               overrides: Sequence[str], seed: int, start_method: str | None,
               compile_encoder: bool) -> dict[str, float | None]:
    env_fn = functools.partial(make_env, env_id, action_mode=action_mode,
                               overrides=tuple(overrides))
    # copy_obs=False: EmbeddingVecEnv consumes each batch of frames before the next step.
    venv = EmbeddingVecEnv(SharedMemoryVecEnv([env_fn] * num_envs, start_method=start_method,
                                              copy_obs=False),
                           encoder=encoder, device=device, compile_encoder=compile_encoder)
    try:
        venv.seed(seed)
        venv.reset()
        # One action stream per env (env i's from seed + i), so that env 0 drives the same
        # episodes whatever N is and the rows compare like with like.
        spaces_i = [copy.deepcopy(venv.action_space) for _ in range(num_envs)]
        for i, space in enumerate(spaces_i):
            space.seed(seed + i)
        stream = [np.stack([space.sample() for space in spaces_i])
                  for _ in range(warmup_steps + steps)]
        for batch in stream[:warmup_steps]:
            venv.step(batch)
        actions = stream[warmup_steps:]
        venv.reset_timing()
        start = time.perf_counter()
        for batch in actions:
            venv.step(batch)
        elapsed = time.perf_counter() - start
        encoder_s = venv.encoder_seconds
        device_s = venv.device_seconds
    finally:
        venv.close()
    return {
        "num_envs": num_envs,
        "env_steps_per_s": num_envs * steps / elapsed,
        "ms_per_vector_step": 1000.0 * elapsed / steps,
        "ms_encoder_per_step": 1000.0 * encoder_s / steps,
        "device_busy_fraction": None if device_s is None else device_s / elapsed,
        "gpu_utilization_percent": gpu_utilization_percent(device),
    }


def gpu_utilization_percent(device: torch.device) -> float | None:
    """The driver's GPU utilisation over its last sample period [%] (NVML, through
    ``torch.cuda.utilization``); None on the CPU or without NVML (``pynvml``)."""
    if device.type != "cuda":
        return None
    try:
        return float(torch.cuda.utilization(device))
    except Exception:  # pynvml missing or NVML unavailable: no figure, not an error
        return None


def bench_rollouts(num_envs_list: Sequence[int] = (1, 2, 4), steps: int = 300,
                   env_id: str = "Highway-v0", action_mode: str = "behavior",
                   encoder: Encoder | str | Path = "nature_cnn", device: str = "auto",
                   overrides: Sequence[str] = (), warmup_steps: int = 10, seed: int = 0,
                   start_method: str | None = None, compile_encoder: bool = False,
                   repeats: int = 1) -> dict[str, Any]:
    """Measure batched-rollout throughput for each number of envs.

    Args:
        num_envs_list: The numbers of worker envs N to measure.
        steps: Timed vector steps per N (each is N env steps), after the warm-up.
        env_id: Env id (camera on, as configured by ``overrides``).
        action_mode: ``control``, ``behavior`` or ``trajectory``.
        encoder: Architecture name (random-init weights suffice for timing), checkpoint
            directory or :class:`Encoder` (frozen in place).
        device: ``"auto"`` (CUDA if available) or a torch device.
        overrides: Env config overrides, e.g. ``("camera.width=64", "camera.height=64")``.
        warmup_steps: Untimed vector steps first (first renders, allocator warm-up).
        seed: Seed of the envs (env i gets ``seed + i``) and of the random actions.
        start_method: Worker start method (None: forkserver where available).
        compile_encoder: Run the encoder through ``torch.compile`` (compiled during the
            warm-up steps, outside the timing).
        repeats: Rounds of measurements; each round measures every N once, in order, so
            that slow drifts of the machine's speed hit all N alike. A row then holds the
            medians over the rounds, ``env_steps_per_s_runs`` the rate of every round,
            and ``speedup_vs_1`` the median of the rounds' own ratios.

    Returns:
        ``{"config": {...}, "results": [row, ...]}`` with one row per N:
        ``num_envs``, ``env_steps_per_s`` (N * steps / time), ``ms_per_vector_step``,
        ``ms_encoder_per_step`` (embedding time, transfers included),
        ``device_busy_fraction`` (CUDA: GPU time of the embedding calls, from CUDA events,
        over wall time; None on the CPU), ``gpu_utilization_percent`` (NVML's figure at
        the end of the run; None on the CPU or without NVML) and ``speedup_vs_1``
        (env steps per second relative to N=1; None when N=1 was not
        measured).

    Raises:
        ValueError: For an empty ``num_envs_list``, N < 1, ``steps`` < 1 or ``repeats`` < 1.
    """
    if not num_envs_list or min(num_envs_list) < 1:
        raise ValueError(f"num_envs_list must hold numbers >= 1, got {tuple(num_envs_list)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    dev = resolve_device(device)
    rounds: list[list[dict[str, Any]]] = []
    with torch_threads(1):
        for _ in range(repeats):
            rounds.append([_bench_one(int(n), steps, warmup_steps, env_id, action_mode,
                                      encoder, dev, overrides, seed, start_method,
                                      compile_encoder) for n in num_envs_list])
    rows = [_median_row([one_round[j] for one_round in rounds])
            for j in range(len(num_envs_list))]
    for j, row in enumerate(rows):
        ratios = []
        for one_round in rounds:
            base = next((r["env_steps_per_s"] for r in one_round if r["num_envs"] == 1), None)
            if base:
                ratios.append(one_round[j]["env_steps_per_s"] / base)
        row["speedup_vs_1"] = float(np.median(ratios)) if ratios else None
    return {
        "config": {"env_id": env_id, "action_mode": action_mode,
                   "encoder": encoder if isinstance(encoder, str) else str(
                       getattr(encoder, "name", encoder)),
                   "device": str(dev), "compile_encoder": compile_encoder,
                   "steps": steps, "warmup_steps": warmup_steps,
                   "overrides": list(overrides), "torch_threads": 1, "worker_threads": 1,
                   "repeats": repeats},
        "results": rows,
    }


def _median_row(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from the same N's rows of several rounds: medians, plus every round's rate."""
    row: dict[str, Any] = {"num_envs": runs[0]["num_envs"]}
    for key, value in runs[0].items():
        if key == "num_envs":
            continue
        values = [r[key] for r in runs]
        row[key] = None if value is None or None in values else float(np.median(values))
    row["env_steps_per_s_runs"] = [r["env_steps_per_s"] for r in runs]
    return row


class _EnvStepper:
    """One env stepped with random actions (a Ray actor of :func:`bench_ray_actors`)."""

    def __init__(self, env_id: str, action_mode: str, overrides: Sequence[str], seed: int
                 ) -> None:
        self.env = make_env(env_id, action_mode=action_mode, overrides=tuple(overrides))
        self.env.reset(seed=seed)
        self.env.action_space.seed(seed)
        self.seed = seed

    def run(self, steps: int) -> float:
        """Step ``steps`` times (resetting at episode ends); returns the seconds taken."""
        start = time.perf_counter()
        for _ in range(steps):
            _, _, terminated, truncated, _ = self.env.step(self.env.action_space.sample())
            if terminated or truncated:
                self.seed += 1
                self.env.reset(seed=self.seed)
        return time.perf_counter() - start


def bench_ray_actors(num_actors_list: Sequence[int] = (1, 2), steps: int = 200,
                     env_id: str = "Highway-v0", action_mode: str = "behavior",
                     overrides: Sequence[str] = (), warmup_steps: int = 10, seed: int = 0,
                     address: str | None = None) -> dict[str, Any]:
    """Env steps per second with N Ray actors, each stepping one camera-on env.

    No encoder and no batching: this measures the simulation side of a Ray rollout
    (actor start-up excluded), to compare with :func:`bench_rollouts`.

    Args:
        num_actors_list: The numbers of actors N to measure.
        steps: Timed env steps per actor, after ``warmup_steps`` untimed ones.
        env_id / action_mode / overrides: The env, as in :func:`bench_rollouts`.
        warmup_steps: Untimed steps per actor first.
        seed: Actor i's env gets ``seed + i``.
        address: Ray cluster address; None: a local Ray instance with
            ``max(num_actors_list)`` CPUs (unless Ray is already initialised).

    Returns:
        ``{"config": {...}, "results": [row, ...]}``, one row per N: ``num_actors``,
        ``env_steps_per_s`` (N * steps / wall time) and ``speedup_vs_1``.

    Raises:
        ValueError: Empty list, N < 1, ``steps`` < 1, Ray missing or unreachable.
    """
    if not num_actors_list or min(num_actors_list) < 1:
        raise ValueError(f"num_actors_list must hold numbers >= 1, got {tuple(num_actors_list)}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    from evaluation.distributed import check_backend, init_ray

    check_backend("ray", address)
    import ray

    started = init_ray(address, max(num_actors_list))
    rows: list[dict[str, Any]] = []
    try:
        # Typed as Any: Ray's stubs do not describe the actor handles' .remote methods.
        actor_cls: Any = ray.remote(num_cpus=1)(_EnvStepper)
        for n in num_actors_list:
            actors: list[Any] = [actor_cls.remote(env_id, action_mode, tuple(overrides), seed + i)
                      for i in range(int(n))]
            try:
                ray.get([a.run.remote(warmup_steps) for a in actors])  # also waits for start
                start = time.perf_counter()
                ray.get([a.run.remote(steps) for a in actors])
                elapsed = time.perf_counter() - start
            finally:
                for a in actors:
                    ray.kill(a)
            rows.append({"num_actors": int(n), "env_steps_per_s": int(n) * steps / elapsed})
    finally:
        if started:
            ray.shutdown()
    base = next((r["env_steps_per_s"] for r in rows if r["num_actors"] == 1), None)
    for row in rows:
        row["speedup_vs_1"] = row["env_steps_per_s"] / base if base else None
    return {"config": {"env_id": env_id, "action_mode": action_mode, "steps": steps,
                       "warmup_steps": warmup_steps, "overrides": list(overrides),
                       "address": address},
            "results": rows}


__all__ = ["bench_ray_actors", "bench_rollouts", "torch_threads"]
