"""Where episodes run: local worker processes or Ray tasks, the same function either way.

:func:`map_episodes` calls one picklable, module-level function on each argument and
yields the results as they finish:

* ``local``: a spawned :class:`~concurrent.futures.ProcessPoolExecutor` with ``workers``
  processes (``workers=1`` runs in this process);
* ``ray``: one Ray remote task per argument (``ray.remote(fn)``), on the cluster at
  ``address`` (``host:port`` of ``ray start --head``, ``auto``, or ``ray://host:port``),
  or on a local Ray instance with ``workers`` CPUs when no address is given and Ray is
  not initialised yet.

Episodes write their recordings themselves, so with Ray on several machines the output
folder must be on a file system all nodes share (the report is computed from the files).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import multiprocessing
import socket
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

log = logging.getLogger(__name__)

#: Backend names of :func:`map_episodes`.
BACKENDS: tuple[str, ...] = ("local", "ray")
#: Seconds to wait for a TCP connection to a Ray address before calling it unreachable.
CONNECT_TIMEOUT_S = 5.0

A = TypeVar("A")
R = TypeVar("R")


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ValueError("--backend ray needs Ray: pip install 'ray[default]'") from None
    return ray


def _probe(address: str) -> None:
    """Fail fast on an address nobody listens on (Ray itself retries for a long time).

    ``auto`` and addresses that are not ``host:port`` are left to Ray.
    """
    text = address.removeprefix("ray://")
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        return
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        raise ValueError(f"cannot reach the Ray cluster at {address!r}: {exc}; start one "
                         "with 'ray start --head' or check --address") from None


def check_backend(backend: str, address: str | None = None) -> None:
    """Check a backend before any work: known name; for ``ray``, Ray importable and the
    address (when given as ``host:port``) reachable.

    Raises:
        ValueError: One clear line: unknown backend (naming the valid ones), an address
            given to the local backend, Ray not installed, or the cluster unreachable.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
    if backend == "local":
        if address is not None:
            raise ValueError("--address needs --backend ray")
        return
    ray = _import_ray()
    if address is not None and not ray.is_initialized():
        _probe(address)


def init_ray(address: str | None, workers: int) -> bool:
    """Connect to (or start) Ray unless it is already initialised.

    Args:
        address: Cluster address; None starts a local instance with ``workers`` CPUs.
        workers: CPUs of a local instance.

    Returns:
        Whether this call initialised Ray (the caller then shuts it down).

    Raises:
        ValueError: Ray missing, or the cluster unreachable.
    """
    ray = _import_ray()
    if ray.is_initialized():
        return False
    try:
        if address is None:
            ray.init(num_cpus=workers, include_dashboard=False, logging_level=logging.WARNING)
        else:
            _probe(address)
            ray.init(address=address, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, TimeoutError) as exc:
        raise ValueError(f"cannot connect to Ray at {address or 'a new local instance'}: "
                         f"{exc}") from None
    return True


def _map_local(fn: Callable[[A], R], args_list: Sequence[A], workers: int) -> Iterator[R]:
    if workers == 1 or len(args_list) <= 1:
        for args in args_list:
            yield fn(args)
        return
    ctx = multiprocessing.get_context("spawn")  # no fork: pybullet clients are per process
    with cf.ProcessPoolExecutor(max_workers=min(workers, len(args_list)),
                                mp_context=ctx) as pool:
        futures = [pool.submit(fn, a) for a in args_list]
        try:
            for fut in cf.as_completed(futures):
                yield fut.result()
        except BaseException:
            for f in futures:
                f.cancel()  # finished episodes stay on disk for a resume
            raise


def _map_ray(fn: Callable[[A], R], args_list: Sequence[A], workers: int,
             address: str | None) -> Iterator[R]:
    if not args_list:
        return
    ray = _import_ray()
    started = init_ray(address, workers)
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = [remote.remote(a) for a in args_list]
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                yield ray.get(done[0])
        except BaseException:
            for ref in pending:
                ray.cancel(ref)  # finished episodes stay on disk for a resume
            raise
    finally:
        if started:
            ray.shutdown()


def map_episodes(fn: Callable[[A], R], args_list: Sequence[A], backend: str = "local",
                 workers: int = 2, address: str | None = None) -> Iterator[R]:
    """Call ``fn`` on every argument on a backend; yield the results as they finish.

    Args:
        fn: A module-level (importable, picklable) function of one argument.
        args_list: Its arguments, one call each.
        backend: ``local`` (worker processes) or ``ray`` (Ray tasks).
        workers: Local worker processes, or the CPUs of a Ray instance started here.
        address: Ray cluster address (``ray`` only); None: a local Ray instance, or the
            one this process already initialised.

    Yields:
        ``fn``'s results in completion order.

    Raises:
        ValueError: Unknown backend, Ray not installed or its cluster unreachable.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    # Checked here, not on the first result, so that a bad setting fails at once.
    check_backend(backend, address)
    if backend == "ray":
        return _map_ray(fn, args_list, workers, address)
    return _map_local(fn, args_list, workers)


__all__ = ["BACKENDS", "check_backend", "init_ray", "map_episodes"]
