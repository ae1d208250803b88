"""A stable-baselines3 ``VecEnv`` with one env per worker process and frames in shared memory.

:class:`SharedMemoryVecEnv` behaves like SB3's ``SubprocVecEnv`` (same auto-reset, same
``terminal_observation`` and ``TimeLimit.truncated`` infos, same seeding through
``seed()`` / ``_seeds``), with one difference in transport: every image key of the
observation (a ``uint8`` :class:`~gymnasium.spaces.Box` with three dimensions, e.g. the
``camera``) is written by the workers straight into one
:class:`~multiprocessing.shared_memory.SharedMemory` block of shape ``(N, H, W, C)`` per
key, so frames are never pickled through the pipes. Small keys (``measurements``,
``state``), rewards, dones and infos still go through the pipes.

Example:
    >>> from functools import partial
    >>> from planning.make import make_env
    >>> venv = SharedMemoryVecEnv([partial(make_env, "Highway-v0", action_mode="behavior")] * 4)
    >>> venv.seed(0)
    >>> obs = venv.reset()            # obs["camera"]: (4, 84, 84, 3) uint8
    >>> venv.close()

Errors: an exception in a worker is re-raised in the parent as the same exception type
(when it can be pickled; :class:`WorkerError` otherwise) with a PEP 678 note holding the
worker index, the command and the worker's traceback. An error in ``step`` or ``reset``
leaves the batch half-stepped, so it closes the vec env first; errors in ``env_method``,
``get_attr``, ``set_attr``, ``env_is_wrapped`` and ``render`` leave it usable. A worker
that dies (e.g. a segfault in the simulator) raises :class:`WorkerError` and closes the
vec env. The shared memory is unlinked by :meth:`SharedMemoryVecEnv.close`, on every
fatal error, when the object is garbage collected, and at interpreter exit.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import multiprocessing.connection as mp_connection
import os
import pickle
import secrets
import weakref
from collections.abc import Callable, Sequence
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from multiprocessing.shared_memory import SharedMemory
from typing import Any

import cloudpickle
import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvIndices,
    VecEnvObs,
    VecEnvStepReturn,
)

from agents._shm_worker import SINGLE_KEY, BlockSpec, ErrorReport, worker_main

#: Seconds to wait for a worker to answer a pending request or exit when closing.
CLOSE_TIMEOUT_S = 10.0


class WorkerError(RuntimeError):
    """A worker process died, or raised an exception that cannot be sent to the parent.

    Attributes:
        env_index: Index of the env (and worker) concerned.
    """

    def __init__(self, message: str, env_index: int) -> None:
        super().__init__(message)
        self.env_index = env_index


def is_image_space(space: spaces.Space[Any]) -> bool:
    """Whether a (sub)space goes through shared memory: a uint8 Box with 3 dimensions."""
    return (isinstance(space, spaces.Box) and space.dtype == np.uint8
            and len(space.shape) == 3)


def default_start_method() -> str:
    """``forkserver`` where available (Linux, macOS), else ``spawn``.

    ``fork`` is not offered as the default: forking a parent that already runs torch
    threads (or a CUDA context) can deadlock or break the child.
    """
    return "forkserver" if "forkserver" in mp.get_all_start_methods() else "spawn"


class _Resources:
    """Everything that must be released, kept apart from the vec env so that a
    :func:`weakref.finalize` can release it without keeping the vec env alive."""

    def __init__(self) -> None:
        self.processes: list[BaseProcess] = []
        self.remotes: list[Connection] = []
        self.blocks: list[SharedMemory] = []
        self.arrays: dict[str, np.ndarray] = {}

    def release(self) -> None:
        """Unlink the shared memory, close the pipes and stop the workers; idempotent."""
        try:
            # Drop our views first: SharedMemory.close() refuses while they export its
            # buffer. Unlinking works regardless, and is what frees /dev/shm.
            self.arrays.clear()
            for block in self.blocks:
                # BufferError: zero-copy views still held by a caller keep the mapping
                # alive until they go; the name is unlinked all the same.
                with contextlib.suppress(BufferError):
                    block.close()
                with contextlib.suppress(FileNotFoundError):
                    block.unlink()
            self.blocks.clear()
        finally:
            # Closing our pipe ends makes a worker that still waits for a request see EOF
            # and exit, so a join only waits for a step in progress.
            for remote in self.remotes:
                with contextlib.suppress(OSError):
                    remote.close()
            for process in self.processes:
                process.join(timeout=CLOSE_TIMEOUT_S)
                if process.is_alive():
                    process.terminate()
                    process.join(timeout=CLOSE_TIMEOUT_S)


def available_cpus() -> int:
    """How many CPUs this process may run on (its affinity mask where the platform has
    one, else the machine's count)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_cpus(num_workers: int) -> list[int | None]:
    """CPU of each worker when pinned: round-robin over the CPUs this process may use
    (all None where the platform cannot pin)."""
    if not hasattr(os, "sched_getaffinity"):
        return [None] * num_workers
    allowed = sorted(os.sched_getaffinity(0))
    return [allowed[i % len(allowed)] for i in range(num_workers)]


class SharedMemoryVecEnv(VecEnv):
    """N envs in N worker processes, with image observations in shared memory.

    Args:
        env_fns: One picklable factory per env, e.g.
            ``functools.partial(make_env, "Highway-v0", action_mode="behavior")``.
            They are pickled with cloudpickle, so lambdas and closures work too.
        start_method: ``forkserver`` (default where available), ``spawn`` or ``fork``.
            With ``forkserver`` and ``spawn`` the main module is imported again in the
            workers, so scripts must guard their entry point with
            ``if __name__ == "__main__":``.
        copy_obs: If true (the default), the image arrays returned by :meth:`reset` and
            :meth:`step_wait` are fresh copies. If false, they are zero-copy views of the
            shared blocks: the **same** arrays are returned every time, and the workers
            overwrite them on the next ``step_async``/``reset``. Use ``copy_obs=False``
            only when the frames are consumed before the next step, e.g. under
            :class:`agents.embedding_vec_env.EmbeddingVecEnv`; SB3 algorithms keep the
            previous observation across a step (``_last_obs``) and need copies.
        worker_threads: Thread cap for torch/OpenMP/MKL/BLAS in each worker (1 by
            default: the workers run in parallel already, and extra threads per worker
            only fight each other and the encoder for cores); None leaves them alone.
        daemon: Start the workers as daemon processes (ended with the parent).
        pin_workers: Bind worker ``i`` to CPU ``i mod C`` of the C CPUs this process may
            use (Linux; elsewhere ignored). A synchronous vec env waits for its slowest
            worker at every step; left to itself, the scheduler sometimes wakes two
            workers, or a worker and the parent, on one core while another idles, and
            that worker becomes the slowest. On the 2-core machine pinning lifted the
            1 -> 2 worker speed-up from about 1.7x to about 1.8-2.0x (see the README's
            performance table). None (the default) pins only when the workers fill
            every CPU: with spare cores the scheduler has room, and two runs sharing a
            big machine would otherwise both pin to its first CPUs.

    Raises:
        ValueError: For no env factories, envs whose spaces differ, or a Tuple
            observation space.
        WorkerError: If a worker dies while starting.
        Exception: Whatever an ``env_fn`` raises, re-raised with the worker's traceback.
    """

    def __init__(self, env_fns: Sequence[Callable[[], gym.Env[Any, Any]]],
                 start_method: str | None = None, copy_obs: bool = True,
                 worker_threads: int | None = 1, daemon: bool = True,
                 pin_workers: bool | None = None) -> None:
        if len(env_fns) == 0:
            raise ValueError("SharedMemoryVecEnv needs at least one env factory")
        self.closed = False
        self.waiting = False
        self.copy_obs = copy_obs
        self.start_method = start_method or default_start_method()
        self._res = _Resources()
        self._pending: list[bool] = []
        self._block_names: dict[str, str] = {}
        # Set before anything is started, so that every failure below is cleaned up.
        self._finalizer = weakref.finalize(self, self._res.release)
        try:
            obs_space, action_space = self._start_workers(env_fns, daemon, worker_threads,
                                                          pin_workers)
            self._setup_shared_memory(obs_space, len(env_fns))
        except BaseException:
            self._finalizer()
            self.closed = True
            raise
        # VecEnv.__init__ asks the workers for render_mode, so it comes last.
        super().__init__(len(env_fns), obs_space, action_space)

    # -- start-up ----------------------------------------------------------------------

    def _start_workers(self, env_fns: Sequence[Callable[[], gym.Env[Any, Any]]], daemon: bool,
                       worker_threads: int | None, pin_workers: bool | None,
                       ) -> tuple[spaces.Space[Any], spaces.Space[Any]]:
        ctx = mp.get_context(self.start_method)
        if pin_workers is None:
            pin_workers = self.default_pinning(len(env_fns))
        cpus: list[int | None] = (worker_cpus(len(env_fns)) if pin_workers
                                  else [None] * len(env_fns))
        self.worker_cpus = cpus
        for env_fn, cpu in zip(env_fns, cpus, strict=True):
            parent_end, child_end = ctx.Pipe()
            self._res.remotes.append(parent_end)
            process = ctx.Process(  # type: ignore[attr-defined]
                target=worker_main,
                args=(child_end, parent_end, cloudpickle.dumps(env_fn), worker_threads, cpu),
                daemon=daemon)
            process.start()
            self._res.processes.append(process)
            # Only the worker may hold its end: then a dead worker reads as EOF here.
            child_end.close()
        self._pending = [True] * len(env_fns)
        replies = self._gather(range(len(env_fns)))
        self._raise_first_error(replies, range(len(env_fns)), "create env")
        obs_space, action_space = replies[0][1]
        for i, (_, (other_obs, other_action)) in enumerate(replies[1:], start=1):
            if other_obs != obs_space or other_action != action_space:
                raise ValueError(
                    f"all envs of a SharedMemoryVecEnv must have the same spaces; env 0 has "
                    f"{obs_space} / {action_space}, env {i} has {other_obs} / {other_action}")
        if isinstance(obs_space, spaces.Tuple):
            raise ValueError("SharedMemoryVecEnv supports Dict and single observation spaces, "
                             "not Tuple spaces")
        return obs_space, action_space

    def _setup_shared_memory(self, obs_space: spaces.Space[Any], num_envs: int) -> None:
        self._keyed = isinstance(obs_space, spaces.Dict)
        subspaces: dict[str, spaces.Space[Any]] = (
            dict(obs_space.spaces) if isinstance(obs_space, spaces.Dict)
            else {SINGLE_KEY: obs_space})
        self._subspaces = subspaces
        tag = secrets.token_hex(6)  # short: macOS limits shared-memory names to 31 chars
        specs: dict[str, BlockSpec] = {}
        for j, (key, space) in enumerate(subspaces.items()):
            if not is_image_space(space):
                continue
            assert space.shape is not None  # an image Box always has a shape
            shape = (num_envs, *space.shape)
            nbytes = int(np.prod(shape)) * np.dtype(np.uint8).itemsize
            block = SharedMemory(name=f"bdvec_{tag}_{j}", create=True, size=nbytes)
            self._res.blocks.append(block)
            self._res.arrays[key] = np.ndarray(shape, dtype=np.uint8, buffer=block.buf)
            specs[key] = BlockSpec(block.name, shape, "uint8")
            self._block_names[key] = block.name
        indices = range(num_envs)
        for i in indices:
            self._send(i, ("attach", (i, specs)))
        self._raise_first_error(self._gather(indices), indices, "attach")

    @staticmethod
    def default_pinning(num_workers: int) -> bool:
        """Whether ``pin_workers=None`` pins: only when the workers fill every CPU."""
        return num_workers >= available_cpus()

    # -- pipe plumbing -----------------------------------------------------------------

    def _send(self, index: int, message: tuple[str, Any]) -> None:
        try:
            self._res.remotes[index].send(message)
        except (BrokenPipeError, ConnectionResetError, EOFError) as exc:
            text = self._exit_text(index)
            self._fail()
            raise WorkerError(f"SharedMemoryVecEnv worker {index} is gone ({text}); cannot "
                              f"send {message[0]!r}", index) from exc
        self._pending[index] = True

    def _gather(self, indices: Sequence[int] | range,
                on_ready: Callable[[int], None] | None = None) -> list[tuple[str, Any]]:
        """Receive one reply from each worker in ``indices``; a dead worker gives
        ``("dead", None)``. Every pending reply is read before anything is raised, so that
        the pipes stay in step.

        With ``on_ready``, replies are read in the order they arrive and ``on_ready(i)``
        runs as soon as worker ``i`` has answered ``ok`` (its shared rows are then
        written), while slower workers are still busy. An exception from ``on_ready`` is
        raised after the remaining replies have been read.
        """
        if on_ready is None:
            replies: list[tuple[str, Any]] = []
            for i in indices:
                replies.append(self._recv(i))
            return replies
        by_index: dict[int, tuple[str, Any]] = {}
        waiting: dict[Any, int] = {self._res.remotes[i]: i for i in indices}
        failure: BaseException | None = None
        while waiting:
            for conn in mp_connection.wait(list(waiting)):
                i = waiting.pop(conn)
                by_index[i] = reply = self._recv(i)
                if reply[0] == "ok" and failure is None:
                    try:
                        on_ready(i)
                    except BaseException as exc:  # re-raised once the pipes are in step
                        failure = exc
        if failure is not None:
            raise failure
        return [by_index[i] for i in indices]

    def _recv(self, index: int) -> tuple[str, Any]:
        try:
            reply: tuple[str, Any] = self._res.remotes[index].recv()
        except (EOFError, ConnectionResetError, OSError):
            reply = ("dead", None)
        self._pending[index] = False
        return reply

    def _exit_text(self, index: int) -> str:
        process = self._res.processes[index]
        process.join(timeout=1.0)
        code = process.exitcode
        if code is None:
            return "still running, pipe closed"
        return f"exit code {code}" + (f", killed by signal {-code}" if code < 0 else "")

    def _raise_first_error(self, replies: list[tuple[str, Any]], indices: Sequence[int] | range,
                           cmd: str, fatal: bool = True) -> None:
        """Raise the first worker error among ``replies``; close first when ``fatal`` or
        when a worker died."""
        failed = [(i, reply) for i, reply in zip(indices, replies, strict=True)
                  if reply[0] != "ok"]
        if not failed:
            return
        # A dead worker outranks an exception: the vec env cannot go on without it.
        failed.sort(key=lambda item: item[1][0] != "dead")
        index, (status, payload) = failed[0]
        if status == "dead":
            text = self._exit_text(index)
            self._fail()
            raise WorkerError(f"SharedMemoryVecEnv worker {index} died during {cmd!r} ({text})",
                              index)
        if fatal:
            self._fail()
        report: ErrorReport = payload
        others = ", ".join(str(i) for i, _ in failed[1:])
        note = (f"raised in SharedMemoryVecEnv worker {index} (env index {index}) during "
                f"{cmd!r}" + (f"; workers {others} failed too" if others else "")
                + f". Worker traceback:\n{report.traceback_text.rstrip()}")
        exc: BaseException | None = None
        if report.exc_bytes is not None:
            try:
                exc = pickle.loads(report.exc_bytes)
            except Exception:
                exc = None
        if isinstance(exc, Exception):
            exc.add_note(note)
            raise exc
        raise WorkerError(f"{report.type_name}: {report.message}\n{note}", index)

    def _fail(self) -> None:
        """Close after a fatal error: replies still owed are discarded with the pipes."""
        self.waiting = False
        self.closed = True
        self._finalizer()

    def _check_open(self) -> None:
        if self.closed:
            raise RuntimeError("this SharedMemoryVecEnv is closed")

    def _call(self, cmd: str, data: Any, indices: VecEnvIndices = None,
              fatal: bool = False) -> list[Any]:
        self._check_open()
        if self.waiting:
            raise RuntimeError(f"cannot call {cmd!r} while a step is in progress; call "
                               "step_wait() first")
        targets = list(self._get_indices(indices))
        for i in targets:
            self._send(i, (cmd, data))
        replies = self._gather(targets)
        self._raise_first_error(replies, targets, cmd, fatal=fatal)
        return [payload for _, payload in replies]

    # -- observations ------------------------------------------------------------------

    def _assemble(self, smalls: Sequence[dict[str, Any]]) -> VecEnvObs:
        out: dict[str, np.ndarray] = {}
        for key, space in self._subspaces.items():
            shared = self._res.arrays.get(key)
            if shared is not None:
                out[key] = shared.copy() if self.copy_obs else shared
            else:
                stacked = np.stack([small[key] for small in smalls])
                # The space's dtype, as DummyVecEnv's buffers have it (a Discrete obs
                # arrives as a Python int, which would stack as int64).
                out[key] = stacked.astype(space.dtype, copy=False) if space.dtype else stacked
        return out if self._keyed else out[SINGLE_KEY]

    def shared_array(self, key: str = SINGLE_KEY) -> np.ndarray:
        """The shared block ``(N, ...)`` behind image key ``key``: row ``i`` is env ``i``'s
        latest image, overwritten by its next step or reset (read it, don't keep it).

        Raises:
            KeyError: If ``key`` is not an image key (only images live in shared memory).
        """
        arrays = self._res.arrays
        if key not in arrays:
            raise KeyError(f"{key!r} is not a shared image key; shared keys: {sorted(arrays)}")
        return arrays[key]

    # -- VecEnv API --------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        """Reset every env with the seeds of :meth:`seed` and options of
        :meth:`set_options` (used once, as in SB3).

        Returns:
            The first observations, stacked (see ``copy_obs`` for the image keys).
        """
        self._check_open()
        if self.waiting:
            # A step still owes replies: read them so that the pipes stay in step.
            self._raise_first_error(self._gather(range(self.num_envs)),
                                    range(self.num_envs), "step")
            self.waiting = False
        results = self._reset_all()
        smalls = [small for small, _ in results]
        self.reset_infos = [info for _, info in results]
        self._reset_seeds()
        self._reset_options()
        return self._assemble(smalls)

    def _reset_all(self) -> list[Any]:
        indices = range(self.num_envs)
        for i in indices:
            self._send(i, ("reset", (self._seeds[i], self._options[i])))
        replies = self._gather(indices)
        self._raise_first_error(replies, indices, "reset")
        return [payload for _, payload in replies]

    def step_async(self, actions: np.ndarray) -> None:
        """Send one action to each worker; the workers step in parallel."""
        self._check_open()
        if self.waiting:
            raise RuntimeError("step_async() called twice without step_wait()")
        if len(actions) != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one per env), got {len(actions)}")
        for i, action in enumerate(actions):
            self._send(i, ("step", action))
        self.waiting = True

    def step_wait(self, on_ready: Callable[[int], None] | None = None) -> VecEnvStepReturn:
        """Wait for all workers and return ``(obs, rewards, dones, infos)``.

        Rewards are float32 and dones bool, as in DummyVecEnv. An env whose episode ended
        was reset: ``infos[i]["terminal_observation"]`` holds its last observation (numpy
        copies, frames included) and ``obs`` the first of the next episode.

        Args:
            on_ready: Called as ``on_ready(i)`` as soon as env ``i`` has stepped, before
                the others finish: its rows of :meth:`shared_array` then hold its new
                observation. Lets a caller overlap work on early envs with the stepping
                of slow ones. If it raises, the exception propagates after every reply
                has been read (the vec env stays usable).
        """
        self._check_open()
        if not self.waiting:
            raise RuntimeError("step_wait() called without step_async()")
        indices = range(self.num_envs)
        try:
            replies = self._gather(indices, on_ready)
        finally:
            self.waiting = False
        self._raise_first_error(replies, indices, "step")
        smalls: list[dict[str, Any]] = []
        rewards = np.empty(self.num_envs, dtype=np.float32)
        dones = np.empty(self.num_envs, dtype=bool)
        infos: list[dict[str, Any]] = []
        for i, (_, (small, reward, done, info, reset_info)) in enumerate(replies):
            smalls.append(small)
            rewards[i] = reward
            dones[i] = done
            infos.append(info)
            if reset_info is not None:
                self.reset_infos[i] = reset_info
        return self._assemble(smalls), rewards, dones, infos

    def close(self) -> None:
        """Stop the workers (closing their envs) and unlink the shared memory; idempotent.

        With ``copy_obs=False``, image arrays returned earlier must not be used after
        this: they view memory that is released.
        """
        if self.closed:
            return
        self.closed = True
        try:
            for i, remote in enumerate(self._res.remotes):
                if self._pending[i] and remote.poll(CLOSE_TIMEOUT_S):
                    try:
                        remote.recv()  # the reply owed by an unfinished step
                    except (EOFError, OSError):
                        continue
                with contextlib.suppress(OSError):  # already gone
                    remote.send(("close", None))
        finally:
            self.waiting = False
            self._finalizer()

    def get_images(self) -> Sequence[np.ndarray | None]:
        """Each env's ``render()`` frame (the envs must use ``render_mode="rgb_array"``)."""
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return self._call("render", None)

    def has_attr(self, attr_name: str) -> bool:
        """Whether every env has ``attr_name`` (checked in the workers, nothing pickled)."""
        return all(self._call("has_attr", attr_name))

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        """The value of ``attr_name`` in each env (found through the wrappers).

        Raises:
            AttributeError: If an env lacks it.
        """
        return self._call("get_attr", attr_name, indices)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        """Set ``attr_name`` on each (outermost) env, as SB3's vec envs do."""
        self._call("set_attr", (attr_name, value), indices)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        """Call ``method_name`` of each env; returns the results (pickled back)."""
        return self._call("env_method", (method_name, method_args, method_kwargs), indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper[Any, Any, Any, Any]],
                       indices: VecEnvIndices = None) -> list[bool]:
        """Whether each env is wrapped by ``wrapper_class``."""
        return self._call("is_wrapped", wrapper_class, indices)

    @property
    def shared_memory_names(self) -> dict[str, str]:
        """Name of the shared-memory block of each image key (unlinked once closed)."""
        return dict(self._block_names)

    @property
    def processes(self) -> list[BaseProcess]:
        """The worker processes (kept after closing, for their exit codes)."""
        return list(self._res.processes)


__all__ = ["SharedMemoryVecEnv", "WorkerError", "default_start_method", "is_image_space"]
