"""Run an agent on a suite: record every episode, score it from the recordings, report.

* :func:`resolve_agent` turns a built-in policy name (``expert``, ``random``,
  ``keep_lane``) or the path of a saved agent into an :class:`AgentSpec`, a picklable
  factory of policies, so worker processes build their own.
* :func:`run_episode` drives one seed of a suite and writes its Parquet recording
  (:mod:`evaluation.recording`): the recorder sits on the bare env beneath the suite's
  action-mode layer, so there is one row per control step in every mode.
* :func:`evaluate` runs all seeds of a suite (in parallel worker processes), resumes an
  interrupted evaluation, recomputes the metrics from the recorded tables alone and
  writes the report (:mod:`evaluation.report`).

Output folder of :func:`evaluate`::

    out/episodes/seed-<seed>.parquet   one recording per episode
    out/expert_progress.json           the expert's route progress per seed (cache)
    out/metrics.json, metrics.md, report.html, plots/*.png

Built-in policies are privileged (they read the simulator state, never the camera), so
their episodes run with ``sensors.camera=false``: rendering does not change the
dynamics, and a replay can switch the camera back on for a video.

nuPlan's ego-progress term compares the agent's route progress with the expert's on the
same seed: the expert drives each seed once in ``control`` mode with the camera off,
and the figure is cached in ``expert_progress.json`` (keyed by seed and a fingerprint
of the env settings). When the agent is the expert in ``control`` mode its own progress
is used.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym

import envs
from common.io import atomic_write_text
from envs.driving_env import DrivingEnv
from evaluation.distributed import check_backend, map_episodes
from evaluation.metrics import EpisodeMetrics, episode_metrics
from evaluation.recording import (
    EpisodeFileError,
    RecordingWrapper,
    load_episode,
    package_version,
    write_episode,
)
from evaluation.report import EvalResult, build_result, write_report
from evaluation.statistics import DEFAULT_REPS
from evaluation.suites import SuiteConfig, load_suite
from planning.action_modes import wrap_action_mode
from planning.policies import POLICY_NAMES, Policy, make_policy

log = logging.getLogger(__name__)

#: File caching the expert's route progress per seed, in the output folder.
EXPERT_CACHE = "expert_progress.json"
#: Sub-folder of the output folder holding the episode recordings.
EPISODES_DIR = "episodes"
#: Env override that switches the RGB camera off.
CAMERA_OFF = "sensors.camera=false"


# ---------------------------------------------------------------------- agents
@dataclass(frozen=True)
class AgentSpec:
    """A picklable factory of policies: a built-in name, a saved agent's path, or any
    picklable callable ``factory(seed) -> Policy`` (e.g. a scripted test driver).

    Calling it builds a fresh policy (each worker process builds its own).

    Attributes:
        name: Agent name in reports (the built-in name, or the path as given).
        path: Saved agent directory (for ``agents.load.load_agent``).
        factory: Custom policy factory (module-level, so that workers can import it).
        camera: Whether the agent needs camera frames; None decides by kind (built-ins
            never look at them; saved and custom agents get them).
        action_mode: The action mode the agent acts in, when known; a suite with another
            mode is refused.
        env_overrides: Env overrides of the agent's observation interface (applied after
            the suite's), e.g. ``sensors.state=true`` for a privileged agent.
    """

    name: str
    path: str | None = None
    factory: Callable[[int | None], Policy] | None = None
    camera: bool | None = None
    action_mode: str | None = None
    env_overrides: tuple[str, ...] = ()

    @property
    def builtin(self) -> bool:
        """Whether this is a built-in policy of :mod:`planning.policies`."""
        return self.path is None and self.factory is None

    @property
    def uses_camera(self) -> bool:
        """Whether the agent's episodes render the camera."""
        return (not self.builtin) if self.camera is None else self.camera

    def __call__(self, seed: int | None = None) -> Policy:
        """A new policy; ``seed`` seeds a random policy.

        Raises:
            ValueError: A saved agent that cannot be loaded (naming the path).
        """
        if self.factory is not None:
            return self.factory(seed)
        if self.path is not None:
            return _load_saved_agent(self.path)
        return make_policy(self.name, seed)


def _load_saved_agent(path: str) -> Policy:
    """Load a saved agent with ``agents.load.load_agent``, imported only when needed."""
    try:
        from agents.load import load_agent
    except ImportError as exc:
        raise ValueError(f"cannot load agent from {path}: agents.load is not available "
                         f"({exc})") from None
    try:
        policy: Policy = load_agent(path)
    except Exception as exc:
        # A user's file may fail anywhere inside the loader; report it as one clear error
        # naming the path (the cause stays chained for debugging).
        raise ValueError(f"cannot load agent from {path}: {exc}") from exc
    return policy


#: Prefixes of a saved agent's training env overrides that shape its observations (the
#: suite decides everything else: world, traffic, visual conditions).
OBSERVATION_KEYS: tuple[str, ...] = ("sensors.", "camera.")


def _saved_agent_spec(path: Path, name: str) -> AgentSpec:
    """An :class:`AgentSpec` for a saved agent, with its action mode and observation
    settings read from its description (``agents.load.read_agent_meta``)."""
    try:
        from agents.load import read_agent_meta
    except ImportError as exc:
        raise ValueError(f"cannot load agent from {path}: agents.load is not available "
                         f"({exc})") from None
    try:
        meta = read_agent_meta(path)
    except Exception as exc:
        raise ValueError(f"cannot load agent from {path}: {exc}") from exc
    config = meta.get("config")
    if not isinstance(config, dict):
        config = {}
    trained = [str(o) for o in config.get("env_overrides", ()) if str(o).startswith(
        OBSERVATION_KEYS)]
    privileged = meta.get("obs") == "privileged"
    if privileged:  # the state vector instead of camera frames, as in training
        trained += ["sensors.state=true", CAMERA_OFF]
    mode = meta.get("action_mode")
    return AgentSpec(name, str(path.resolve()), camera=not privileged,
                     action_mode=mode if isinstance(mode, str) else None,
                     env_overrides=tuple(trained))


def resolve_agent(name_or_path: str | Path | AgentSpec) -> AgentSpec:
    """The agent factory for a built-in policy name or a saved agent's path.

    Args:
        name_or_path: ``expert``, ``random``, ``keep_lane``, or an existing agent
            directory written by the training code (loaded with
            ``agents.load.load_agent``; its action mode and observation settings come
            from its description).

    Returns:
        A picklable :class:`AgentSpec`.

    Raises:
        ValueError: Neither a built-in name nor an existing path (the message lists the
            names), or a path that is not a loadable agent.
    """
    if isinstance(name_or_path, AgentSpec):
        return name_or_path
    text = str(name_or_path)
    if text in POLICY_NAMES:
        return AgentSpec(text)
    path = Path(text)
    if path.exists():
        return _saved_agent_spec(path, str(path))
    raise ValueError(f"unknown agent {text!r}: not a built-in policy and no such file; valid "
                     f"names: {', '.join(POLICY_NAMES)}, or give the path of a saved agent")


def _suite(suite: SuiteConfig | str | Path) -> SuiteConfig:
    return suite if isinstance(suite, SuiteConfig) else load_suite(suite)


def _agent_mode(spec: AgentSpec, policy: Policy | None = None) -> str | None:
    """The action mode an agent acts in, when it says so."""
    if spec.action_mode is not None:
        return spec.action_mode
    mode = getattr(policy, "action_mode", None)
    return mode if isinstance(mode, str) else None


def check_action_mode(spec: AgentSpec, suite: SuiteConfig, policy: Policy | None = None
                      ) -> None:
    """Refuse a suite whose action mode is not the agent's.

    Raises:
        ValueError: Naming both modes and the suite override that fixes it.
    """
    mode = _agent_mode(spec, policy)
    if mode is not None and mode != suite.action_mode:
        raise ValueError(f"agent '{spec.name}' acts in the '{mode}' action mode but suite "
                         f"'{suite.name}' uses '{suite.action_mode}'; set the suite's "
                         f"action_mode (e.g. --set action_mode={mode})")


# ---------------------------------------------------------------------- one episode
@dataclass(frozen=True)
class EpisodeResult:
    """What :func:`run_episode` did: the seed, the file and the episode's metrics."""

    seed: int
    path: Path
    steps: int
    metrics: EpisodeMetrics


def run_overrides(agent: AgentSpec, suite: SuiteConfig,
                  extra: Sequence[str] = ()) -> list[str]:
    """Env overrides of an agent's episodes: the suite's, camera off for camera-free
    agents, the agent's observation settings, then ``extra``."""
    out = list(suite.env_overrides())
    if not agent.uses_camera:
        out.append(CAMERA_OFF)
    out.extend(agent.env_overrides)
    out.extend(extra)
    return out


def _drive(env: Any, recorder: RecordingWrapper | None, policy: Policy, seed: int,
           options: Mapping[str, Any] | None) -> float:
    """Drive one episode to its end; returns the largest route progress [m]."""
    policy.reset(seed)
    obs, info = env.reset(seed=seed, options=dict(options) if options else None)
    best = float(info["route_progress_m"])
    done = False
    while not done:
        action = policy.act(obs, env)
        if recorder is not None:
            recorder.policy_action = action
        obs, _, terminated, truncated, info = env.step(action)
        best = max(best, float(info["route_progress_m"]))
        done = bool(terminated or truncated)
    return best


def start_episode(spec: AgentSpec, suite: SuiteConfig, seed: int,
                  env_overrides: Sequence[str]) -> tuple[Policy, gym.Env[Any, Any]]:
    """The agent's policy for ``seed`` and the bare env of one of ``suite``'s episodes
    (``env_overrides`` from :func:`run_overrides`), after checking the action modes.

    Raises:
        ValueError: An agent whose action mode is not the suite's, or that cannot load.
    """
    check_action_mode(spec, suite)
    policy = spec(seed)
    check_action_mode(spec, suite, policy)
    bare = envs.make(suite.env_id, overrides=[*env_overrides,
                                              f"action.mode={suite.action_mode}"])
    return policy, bare


def run_episode(agent: AgentSpec | str, suite: SuiteConfig | str, seed: int,
                out_path: str | Path, record_expert_progress: bool = True, *,
                options: Mapping[str, Any] | None = None, overrides: Sequence[str] = (),
                cache_dir: str | Path | None = None) -> EpisodeResult:
    """Drive one seed of a suite with an agent and write its recording.

    Args:
        agent: Agent factory (or a name / path for :func:`resolve_agent`).
        suite: The suite (or its name / YAML path).
        seed: Episode seed (normally one of ``suite.episode_seeds()``).
        out_path: The Parquet file to write (atomically).
        record_expert_progress: Store the expert's route progress on this seed in the
            metadata (for nuPlan's progress term); computed once per seed and cached in
            ``cache_dir``.
        options: Reset options (``start_lane``, ...), recorded in the metadata.
        overrides: Further env overrides (after the suite's).
        cache_dir: Folder of ``expert_progress.json`` (default: ``out_path``'s folder's
            parent when that folder is ``episodes/``, else ``out_path``'s folder).

    Returns:
        The seed, the file, the number of control steps and the episode's metrics.

    Raises:
        ValueError: Unknown agent, bad suite override, or an agent whose action mode does
            not match the suite's.
    """
    spec = resolve_agent(agent)
    cfg = _suite(suite)
    out = Path(out_path)
    env_overrides = run_overrides(spec, cfg, overrides)
    policy, bare = start_episode(spec, cfg, seed, env_overrides)
    try:
        recorder = RecordingWrapper(bare)
        env = wrap_action_mode(recorder)
        own_progress = _drive(env, recorder, policy, seed, options)
    finally:
        bare.close()
    expert: float | None = None
    if record_expert_progress:
        if spec.builtin and spec.name == "expert" and cfg.action_mode == "control":
            expert = own_progress  # the expert's own run is the reference
        else:
            folder = Path(cache_dir) if cache_dir is not None else _default_cache_dir(out)
            expert = cached_expert_progress(cfg, seed, folder, options, overrides)
    meta = recorder.episode_metadata(
        env_id=cfg.env_id, agent=spec.name, suite=cfg.name, expert_progress_m=expert,
        extra={"env_overrides": env_overrides, "agent_path": spec.path})
    write_episode(out, recorder.rows, meta)
    metrics = episode_metrics(recorder.rows, dt_s=meta["dt_s"],
                              route_length_m=meta["route_length_m"], expert_progress_m=expert)
    return EpisodeResult(seed, out, len(recorder.rows), metrics)


def _default_cache_dir(out_path: Path) -> Path:
    folder = out_path.parent
    return folder.parent if folder.name == EPISODES_DIR else folder


# ---------------------------------------------------------------------- expert progress
def expert_overrides(suite: SuiteConfig, extra: Sequence[str] = ()) -> list[str]:
    """Env overrides of the reference expert runs: the suite's and ``extra`` (the same
    world as the agent's), control mode, camera off."""
    return [*suite.env_overrides(), *extra, "action.mode=control", CAMERA_OFF]


def expert_progress(suite: SuiteConfig, seed: int, options: Mapping[str, Any] | None = None,
                    overrides: Sequence[str] = ()) -> float:
    """Route progress [m] of the rule-based expert on one seed of a suite (control mode,
    camera off, no recording); ``overrides`` go after the suite's."""
    env: DrivingEnv = envs.make(suite.env_id, overrides=expert_overrides(suite, overrides))
    try:
        return _drive(env, None, make_policy("expert", seed), seed, options)
    finally:
        env.close()


def _fingerprint(suite: SuiteConfig, options: Mapping[str, Any] | None,
                 overrides: Sequence[str]) -> str:
    """What the expert's progress depends on: env, settings, options and code version."""
    text = json.dumps({"env_id": suite.env_id,
                       "overrides": expert_overrides(suite, overrides),
                       "options": dict(options or {}), "version": package_version()},
                      sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """An exclusive lock on the folder's expert cache (worker processes share it)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / f".{EXPERT_CACHE}.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _read_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # missing or damaged cache: recompute what is needed
    return data if isinstance(data, dict) else {}


def cached_expert_progress(suite: SuiteConfig, seed: int, folder: str | Path,
                           options: Mapping[str, Any] | None = None,
                           overrides: Sequence[str] = ()) -> float:
    """:func:`expert_progress`, cached per seed in ``folder/expert_progress.json``.

    An entry whose env settings differ from ``suite``'s (another fingerprint) is
    recomputed. The cache is updated under a file lock and written atomically.
    """
    path = Path(folder) / EXPERT_CACHE
    key, fp = str(seed), _fingerprint(suite, options, overrides)
    with _locked(path.parent):
        entry = _read_cache(path).get(key)
    if isinstance(entry, dict) and entry.get("fingerprint") == fp \
            and isinstance(entry.get("expert_progress_m"), int | float):
        return float(entry["expert_progress_m"])
    value = expert_progress(suite, seed, options, overrides)  # outside the lock: slow
    with _locked(path.parent):
        data = _read_cache(path)
        data[key] = {"expert_progress_m": value, "fingerprint": fp}
        atomic_write_text(path, json.dumps(dict(sorted(data.items())), indent=1) + "\n")
    return value


# ---------------------------------------------------------------------- a whole suite
@dataclass(frozen=True)
class _Task:
    agent: AgentSpec
    suite: SuiteConfig
    seed: int
    path: Path
    cache_dir: Path
    overrides: tuple[str, ...] = field(default_factory=tuple)


def _run_task(task: _Task) -> EpisodeResult:
    """Worker entry point (module level so that spawned processes can import it)."""
    return run_episode(task.agent, task.suite, task.seed, task.path,
                       overrides=task.overrides, cache_dir=task.cache_dir)


def episode_path(out_dir: str | Path, seed: int) -> Path:
    """Where :func:`evaluate` records the episode of ``seed``."""
    return Path(out_dir) / EPISODES_DIR / f"seed-{seed}.parquet"


def metrics_from_file(path: str | Path) -> EpisodeMetrics:
    """The metrics of a recorded episode, from its table and metadata alone."""
    rows, meta = load_episode(path)
    return episode_metrics(rows, dt_s=float(meta["dt_s"]),
                           route_length_m=float(meta["route_length_m"]),
                           expert_progress_m=meta["expert_progress_m"])


def _check_same_run(path: Path, meta: Mapping[str, Any], agent: AgentSpec, suite: SuiteConfig,
                    env_overrides: Sequence[str]) -> None:
    """Refuse to mix episodes of different agents or env settings in one folder."""
    ours = {"agent": agent.name, "suite": suite.name, "env_id": suite.env_id,
            "action_mode": suite.action_mode, "env_overrides": list(env_overrides)}
    theirs = {k: meta.get(k) for k in ours}
    if theirs != ours:
        diff = ", ".join(f"{k}: {theirs[k]!r} vs {ours[k]!r}" for k in ours
                         if theirs[k] != ours[k])
        raise ValueError(f"'{path}' was recorded by another run ({diff}); evaluate into a "
                         "new output folder or delete the old one")


def _pending(agent: AgentSpec, suite: SuiteConfig, out_dir: Path, overrides: Sequence[str]
             ) -> tuple[list[int], dict[int, EpisodeMetrics]]:
    """Seeds still to run and the metrics of the episodes already recorded."""
    env_overrides = run_overrides(agent, suite, overrides)
    todo: list[int] = []
    done: dict[int, EpisodeMetrics] = {}
    for seed in suite.episode_seeds():
        path = episode_path(out_dir, seed)
        if not path.exists():
            todo.append(seed)
            continue
        try:
            rows, meta = load_episode(path)
        except EpisodeFileError as exc:
            log.warning("re-running seed %d: %s", seed, exc)
            path.unlink()
            todo.append(seed)
            continue
        _check_same_run(path, meta, agent, suite, env_overrides)
        done[seed] = episode_metrics(rows, dt_s=float(meta["dt_s"]),
                                     route_length_m=float(meta["route_length_m"]),
                                     expert_progress_m=meta["expert_progress_m"])
    return todo, done


def _clean_temporaries(out_dir: Path) -> None:
    """Remove temporary files that an interrupted run left (they are never renamed)."""
    folder = out_dir / EPISODES_DIR
    if folder.is_dir():
        for tmp in folder.glob(".*.tmp*"):
            with contextlib.suppress(OSError):
                tmp.unlink()


class _Progress:
    """A tqdm bar with live success and collision counts (or nothing when quiet)."""

    def __init__(self, total: int, label: str, enabled: bool,
                 done: Mapping[int, EpisodeMetrics]) -> None:
        self.success = sum(bool(m["success"]) for m in done.values())
        self.collisions = sum(_collided(m) for m in done.values())
        self.bar: Any = None
        if enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=total, initial=len(done), desc=label, unit="ep",
                            dynamic_ncols=True)
            self._postfix()

    def _postfix(self) -> None:
        if self.bar is not None:
            self.bar.set_postfix(success=self.success, collisions=self.collisions)

    def add(self, metrics: EpisodeMetrics) -> None:
        self.success += bool(metrics["success"])
        self.collisions += _collided(metrics)
        if self.bar is not None:
            self.bar.update(1)
            self._postfix()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _collided(m: Mapping[str, Any]) -> int:
    return int(m["collisions_vehicle"] + m["collisions_pedestrian"] + m["collisions_static"] > 0)


def evaluate(agent: AgentSpec | str | Path, suite: SuiteConfig | str | Path,
             out_dir: str | Path, workers: int = 2, progress: bool = True, *,
             overrides: Sequence[str] = (), reps: int = DEFAULT_REPS,
             video_links: Mapping[str, str] | None = None,
             failure_videos: bool = True, backend: str = "local",
             address: str | None = None) -> EvalResult:
    """Evaluate an agent on every seed of a suite and write the report.

    Episodes already recorded in ``out_dir`` (by the same agent with the same env
    settings) are kept: an interrupted evaluation resumes where it stopped, and a file
    that does not load (e.g. damaged) is recorded again. The metrics are recomputed from
    the recorded tables, so the report depends only on the files.

    Args:
        agent: Agent factory, built-in name or saved agent path.
        suite: Suite, or its name / YAML path.
        out_dir: Output folder (created).
        workers: Parallel worker processes (spawned); 1 runs in this process.
        progress: Show a progress bar with live success and collision counts.
        overrides: Further env overrides for every episode (after the suite's).
        reps: Bootstrap resamples of the confidence intervals.
        failure_videos: Render a replay video of every episode that did not succeed and
            link it from the HTML report.
        video_links: Optional per-episode video URLs (episode name -> URL) for the HTML
            report.
        backend: ``local`` (worker processes) or ``ray`` (Ray tasks running the same
            :func:`run_episode`; see :mod:`evaluation.distributed`).
        address: Ray cluster address (``ray`` only; None: a local Ray instance).

    Returns:
        The per-episode metrics and aggregates (also written to ``out_dir``).

    Raises:
        ValueError: Unknown agent or suite, bad settings, or ``out_dir`` holding episodes
            of another run.
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    check_backend(backend, address)
    spec = resolve_agent(agent)
    cfg = _suite(suite)
    check_action_mode(spec, cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _clean_temporaries(out)
    todo, done = _pending(spec, cfg, out, overrides)
    seeds = cfg.episode_seeds()
    bar = _Progress(len(seeds), f"{spec.name} on {cfg.name}", progress, done)
    tasks = [_Task(spec, cfg, s, episode_path(out, s), out, tuple(overrides)) for s in todo]
    try:
        for done_episode in map_episodes(_run_task, tasks, backend, workers, address):
            bar.add(done_episode.metrics)
    finally:
        bar.close()
    # The report is computed from the files alone, whatever produced them.
    episodes = [(s, episode_path(out, s).stem, metrics_from_file(episode_path(out, s)))
                for s in seeds]
    result = build_result(spec.name, cfg, out, episodes, reps=reps)
    links = dict(video_links or {})
    if failure_videos:
        # Each failed episode gets a replay video (re-simulated from its recording),
        # linked from the HTML report; kept on a resume.
        from evaluation.replay import render_episode

        for seed, name, metrics in episodes:
            if not metrics.get("success"):
                target = out / "videos" / f"{name}.mp4"
                if not target.exists():
                    render_episode(episode_path(out, seed), target)
                links.setdefault(name, f"videos/{name}.mp4")
    write_report(result, video_links=links)
    return result


__all__ = [
    "CAMERA_OFF",
    "EPISODES_DIR",
    "EXPERT_CACHE",
    "AgentSpec",
    "EpisodeResult",
    "cached_expert_progress",
    "check_action_mode",
    "episode_path",
    "evaluate",
    "expert_progress",
    "metrics_from_file",
    "resolve_agent",
    "run_episode",
    "run_overrides",
    "start_episode",
]
