"""The worker process of :class:`agents.shm_vec_env.SharedMemoryVecEnv`.

This module is what every worker process imports, so it deliberately imports neither
torch nor stable-baselines3: with ``spawn`` / ``forkserver`` each worker imports its
target's module afresh, and pulling in torch would cost every worker about a second and
a few hundred MB of memory for nothing (the env does not need it).

Protocol (one request, one reply, over a :func:`multiprocessing.Pipe`):

- On start the worker builds its env and sends ``("ok", (observation_space,
  action_space))`` or an error reply.
- Requests are ``(command, data)``; replies are ``("ok", payload)`` or ``("error",
  ErrorReport)``. ``close`` gets no reply: the worker just exits.
- ``attach`` maps the shared image blocks; afterwards ``step`` and ``reset`` write the
  image keys into this worker's row of those blocks and send only the small keys.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import signal
import sys
import traceback
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np

#: Key under which a non-Dict observation travels, so that one code path serves both.
SINGLE_KEY = "__obs__"

#: Thread-pool variables of the numeric libraries an env might load (OpenMP, MKL, BLAS).
_THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@dataclass(frozen=True)
class ErrorReport:
    """An exception raised in a worker, in a form that always survives the pipe.

    Attributes:
        exc_bytes: The pickled exception, or None when it cannot be pickled and
            unpickled (e.g. a custom exception with extra required arguments).
        type_name: Qualified name of the exception's type.
        message: ``str(exception)``.
        traceback_text: The formatted traceback in the worker.
    """

    exc_bytes: bytes | None
    type_name: str
    message: str
    traceback_text: str


@dataclass(frozen=True)
class BlockSpec:
    """Where one image key lives in shared memory.

    Attributes:
        name: Name of the :class:`SharedMemory` block.
        shape: Shape of the whole block, ``(num_envs, H, W, C)``.
        dtype: numpy dtype string of the block (``uint8``).
    """

    name: str
    shape: tuple[int, ...]
    dtype: str


def _report(exc: BaseException) -> ErrorReport:
    try:
        data = pickle.dumps(exc)
        # Check the round trip here: an exception whose __init__ needs other arguments
        # pickles fine but fails to unpickle, and that must not happen in the parent.
        pickle.loads(data)
        exc_bytes: bytes | None = data
    except Exception:
        exc_bytes = None
    kind = type(exc)
    return ErrorReport(exc_bytes, f"{kind.__module__}.{kind.__qualname__}", str(exc),
                       traceback.format_exc())


def limit_threads(num_threads: int | None) -> None:
    """Cap the thread pools of numeric libraries in this process.

    The environment variables only act on libraries loaded afterwards; torch, if it is
    already imported (e.g. by an ``env_fn`` or a forkserver preload), is capped directly.
    """
    if num_threads is None:
        return
    for var in _THREAD_ENV_VARS:
        os.environ[var] = str(num_threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(num_threads)


def _unwrap_to(env: gym.Env[Any, Any], wrapper_class: type) -> bool:
    """Whether ``wrapper_class`` is among the wrappers of ``env`` (SB3's ``is_wrapped``)."""
    current: Any = env
    while isinstance(current, gym.Wrapper):
        if isinstance(current, wrapper_class):
            return True
        current = current.env
    return False


class _Worker:
    """One env and its rows of the shared image blocks."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        self.env = env
        self.keyed = isinstance(env.observation_space, gym.spaces.Dict)
        self.blocks: list[SharedMemory] = []
        self.rows: dict[str, np.ndarray] = {}

    def attach(self, index: int, specs: dict[str, BlockSpec]) -> None:
        for key, spec in specs.items():
            block = SharedMemory(name=spec.name)
            self.blocks.append(block)
            whole = np.ndarray(spec.shape, dtype=np.dtype(spec.dtype), buffer=block.buf)
            self.rows[key] = whole[index]

    def publish(self, obs: Any) -> dict[str, Any]:
        """Write the image keys of ``obs`` to shared memory; return the other keys."""
        named = obs if self.keyed else {SINGLE_KEY: obs}
        for key, row in self.rows.items():
            # copyto checks shape and dtype, so a misshapen frame fails loudly here.
            np.copyto(row, named[key], casting="no")
        return {key: value for key, value in named.items() if key not in self.rows}

    def step(self, action: Any) -> tuple[dict[str, Any], float, bool, dict[str, Any],
                                          dict[str, Any] | None]:
        obs, reward, terminated, truncated, info = self.env.step(action)
        done = bool(terminated or truncated)
        info["TimeLimit.truncated"] = bool(truncated and not terminated)
        reset_info = None
        if done:
            # The terminal frame goes through the pipe (pickling copies it): its shared
            # row is about to be overwritten by the first frame of the next episode.
            info["terminal_observation"] = obs
            obs, reset_info = self.env.reset()
        return self.publish(obs), float(reward), done, info, reset_info

    def reset(self, seed: int | None, options: dict[str, Any]) -> tuple[dict[str, Any],
                                                                         dict[str, Any]]:
        kwargs: dict[str, Any] = {"options": options} if options else {}
        obs, info = self.env.reset(seed=seed, **kwargs)
        return self.publish(obs), info

    def handle(self, cmd: str, data: Any) -> Any:
        env = self.env
        if cmd == "step":
            return self.step(data)
        if cmd == "reset":
            return self.reset(*data)
        if cmd == "attach":
            return self.attach(*data)
        if cmd == "render":
            return env.render()
        if cmd == "env_method":
            name, args, kwargs = data
            return env.get_wrapper_attr(name)(*args, **kwargs)
        if cmd == "get_attr":
            return env.get_wrapper_attr(data)
        if cmd == "has_attr":
            try:
                env.get_wrapper_attr(data)
            except AttributeError:
                return False
            return True
        if cmd == "set_attr":
            # On the outermost env, as SB3's DummyVecEnv and SubprocVecEnv do.
            setattr(env, data[0], data[1])
            return None
        if cmd == "is_wrapped":
            return _unwrap_to(env, data)
        raise NotImplementedError(f"SharedMemoryVecEnv worker: unknown command {cmd!r}")

    def release(self) -> None:
        # Views first: SharedMemory.close() refuses while numpy arrays export its buffer.
        self.rows.clear()
        for block in self.blocks:
            with contextlib.suppress(BufferError, OSError):
                block.close()
        self.blocks.clear()
        try:
            self.env.close()
        except Exception:  # closing is best effort: the process ends right after
            traceback.print_exc()


def pin_to_cpu(cpu: int | None) -> None:
    """Bind this process to one CPU (Linux); None, or a platform without
    ``os.sched_setaffinity``, leaves it free."""
    if cpu is not None and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {cpu})


def worker_main(remote: Connection, parent_remote: Connection, env_fn_bytes: bytes,
                num_threads: int | None, cpu: int | None = None) -> None:
    """Entry point of a worker process.

    Args:
        remote: This worker's end of the pipe.
        parent_remote: The parent's end, closed here so that a dead parent shows up as
            EOF on ``remote``.
        env_fn_bytes: The cloudpickled env factory. It is unpickled only after the
            thread caps are set, because unpickling imports the env's modules.
        num_threads: Thread cap for numeric libraries in this worker (None: leave).
        cpu: The CPU to bind this worker to (None: the scheduler places it).
    """
    parent_remote.close()
    pin_to_cpu(cpu)
    # Ctrl-C reaches the whole process group; the parent handles it and closes the
    # workers in order, so a worker must not die half-way through a step on its own.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    limit_threads(num_threads)
    try:
        env = cloudpickle.loads(env_fn_bytes)()
        if not isinstance(env, gym.Env):
            # Old gym envs: let SB3 convert them (imported lazily, it pulls in torch).
            from stable_baselines3.common.vec_env.patch_gym import _patch_env

            env = _patch_env(env)
        limit_threads(num_threads)  # the env factory may have imported torch
        remote.send(("ok", (env.observation_space, env.action_space)))
    except BaseException as exc:
        remote.send(("error", _report(exc)))
        remote.close()
        return

    worker = _Worker(env)
    try:
        while True:
            try:
                cmd, data = remote.recv()
            except (EOFError, OSError):
                break  # the parent is gone
            if cmd == "close":
                break
            try:
                reply: tuple[str, Any] = ("ok", worker.handle(cmd, data))
                remote.send(reply)
            except Exception as exc:
                # Also catches replies that cannot be pickled (send pickles before it
                # writes anything, so the pipe stays in step).
                remote.send(("error", _report(exc)))
    finally:
        worker.release()
        remote.close()
