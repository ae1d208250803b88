"""Replay recorded episodes: verify them by re-simulation and render them to video.

An episode file (:mod:`evaluation.recording`) holds the env id, the full env config, the
seed and reset options in its metadata and, per control step, the ``[steer, accel]``
command applied to the bare env (``control_steer`` / ``control_accel``). The bare world is
deterministic given those, so re-simulating it reproduces every state:

* :func:`verify_episode` rebuilds the bare env, resets it with the recorded seed and
  options, feeds back each row's control command and compares the ego state (``x_m``,
  ``y_m``, ``yaw_rad``, ``speed_mps``) and ``traffic_xy`` with the recorded row.
* :func:`render_episode` re-simulates likewise and writes an MP4: the camera image as the
  policy saw it (scaled up), a bird's-eye view, and a text band with the step's time,
  speed, policy action, reward and events; collision steps get a red border.
* :func:`frame_png` writes one such frame as PNG (for documentation).

Step numbering: a row's ``step`` is the number of control steps since reset (1 for the
first row) and its state is the state AFTER that step's command was applied. A replay
therefore reports a tampered or lost command of step ``k`` as a divergence at step ``k``
(the first state computed from it), and ``start`` / ``end`` / ``step`` arguments of the
rendering functions are these ``step`` values.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from numpy.typing import NDArray

import envs
from common.io import atomic_path
from envs.driving_env import DrivingEnv
from envs.events import COLLISION
from evaluation.recording import EpisodeFileError, load_episode, package_version

#: Tolerance used when the episode was recorded by another bulletdrive version, whose
#: numerics may differ in the last bits (same version, same machine: bit-identical).
CROSS_VERSION_TOLERANCE = 1e-6
#: Ego state columns compared by :func:`verify_episode`, with the env attribute of each.
STATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("x_m", "x"), ("y_m", "y"), ("yaw_rad", "yaw"), ("speed_mps", "speed_mps"))
#: Side of the camera and bird's-eye panels of a rendered frame [px].
PANEL_PX = 336
#: Bird's-eye view scale of a rendered frame [m/px].
BEV_METRES_PER_PX = 0.35
#: Height of the text band under the panels [px].
BAND_PX = 72
#: Width of the red border of collision frames [px].
BORDER_PX = 8
#: Video codecs tried in order: H.264 plays everywhere, but OpenCV builds without an
#: H.264 encoder only have MPEG-4 part 2.
FOURCCS = ("avc1", "mp4v")


@dataclass(frozen=True)
class VerifyResult:
    """Outcome of :func:`verify_episode`.

    Attributes:
        path: The episode file.
        ok: True when every compared value matched within ``tolerance``.
        steps: Rows re-simulated and compared (all rows when ``ok``; up to and including
            the divergent one otherwise).
        total_steps: Rows in the file.
        first_divergent_step: ``step`` of the first row whose state differs (the state
            after that step's command), or None.
        column: The first differing column of that row (``x_m``, ..., ``traffic_xy``,
            ``terminated``), or None.
        recorded: The recorded value of that column, or None.
        replayed: The re-simulated value, or None.
        max_abs_error: Largest absolute difference over all compared values (``inf``
            when ``traffic_xy`` changed length or termination differs).
        tolerance: The tolerance applied.
        note: Why the tolerance is not the requested one (another package version), or
            an empty string.
        recorded_version: bulletdrive version that recorded the episode.
        replay_version: bulletdrive version that replayed it.
        seconds: Wall time of the re-simulation [s].
    """

    path: Path
    ok: bool
    steps: int
    total_steps: int
    first_divergent_step: int | None
    column: str | None
    recorded: Any
    replayed: Any
    max_abs_error: float
    tolerance: float
    note: str
    recorded_version: str
    replay_version: str
    seconds: float

    def summary(self) -> str:
        """A short human-readable report (one line, two with a tolerance note)."""
        if self.ok:
            text = (f"OK: {self.path} reproduced {self.steps}/{self.total_steps} steps "
                    f"(max abs error {self.max_abs_error:.3g}, tolerance {self.tolerance:g}, "
                    f"{self.seconds:.2f} s)")
        else:
            text = (f"DIVERGED: {self.path} at step {self.first_divergent_step} "
                    f"column {self.column}: recorded {_short(self.recorded)}, replayed "
                    f"{_short(self.replayed)} (tolerance {self.tolerance:g}; "
                    f"{self.steps - 1}/{self.total_steps} steps matched)")
        return text + (f"\nnote: {self.note}" if self.note else "")


@dataclass
class _Mismatch:
    """Comparison of one row: first column beyond tolerance (if any), largest error."""

    column: str | None = None
    recorded: Any = None
    replayed: Any = None
    max_abs_error: float = 0.0
    diverged: bool = field(default=False)


def _short(value: Any) -> str:
    if isinstance(value, list) and len(value) > 6:
        return f"[{', '.join(f'{v:.6g}' for v in value[:6])}, ...] ({len(value)} values)"
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _differs(recorded: float, replayed: float, tolerance: float) -> bool:
    # Both NaN counts as equal; otherwise exact (tolerance 0) or within tolerance.
    if math.isnan(recorded) and math.isnan(replayed):
        return False
    return not abs(recorded - replayed) <= tolerance


def _compare(row: Mapping[str, Any], env: DrivingEnv, terminated: bool, truncated: bool,
             tolerance: float) -> _Mismatch:
    """Compare one recorded row with the re-simulated env after the same step."""
    out = _Mismatch()

    def note(column: str, recorded: Any, replayed: Any, error: float, bad: bool) -> None:
        out.max_abs_error = max(out.max_abs_error, error)
        if bad and not out.diverged:
            out.diverged = True
            out.column, out.recorded, out.replayed = column, recorded, replayed

    st = env.state
    for column, attr in STATE_COLUMNS:
        rec, rep = float(row[column]), float(getattr(st, attr))
        err = 0.0 if math.isnan(rec) and math.isnan(rep) else abs(rec - rep)
        note(column, rec, rep, err, _differs(rec, rep, tolerance))
    t = env.traffic
    rep_xy = np.column_stack([t.x[t.active], t.y[t.active]]).ravel().astype(np.float64)
    rec_xy = np.asarray(row["traffic_xy"], dtype=np.float64).ravel()
    if rec_xy.shape != rep_xy.shape:  # a vehicle appeared or left in one run only
        note("traffic_xy", rec_xy.tolist(), rep_xy.tolist(), math.inf, True)
    elif len(rec_xy):
        err_xy = np.abs(rec_xy - rep_xy)
        note("traffic_xy", rec_xy.tolist(), rep_xy.tolist(), float(np.nanmax(err_xy)),
             bool(np.any(err_xy > tolerance)))
    for column, value in (("terminated", terminated), ("truncated", truncated)):
        if bool(row[column]) != value:
            note(column, bool(row[column]), value, math.inf, True)
    return out


def _tolerance(meta: Mapping[str, Any], tolerance: float) -> tuple[float, str]:
    """The tolerance to apply and, when it was raised for another version, why."""
    if tolerance < 0 or not math.isfinite(tolerance):
        raise ValueError(f"tolerance must be a finite number >= 0, got {tolerance}")
    recorded, current = str(meta["package_version"]), package_version()
    if recorded != current and tolerance < CROSS_VERSION_TOLERANCE:
        return CROSS_VERSION_TOLERANCE, (
            f"recorded by bulletdrive {recorded}, replayed by {current}: compared with "
            f"tolerance {CROSS_VERSION_TOLERANCE:g} instead of {tolerance:g} (bit-identical "
            "replays are only expected with the same version on the same machine)")
    return tolerance, ""


def _make_env(meta: Mapping[str, Any], path: Path, camera: bool = False) -> DrivingEnv:
    """The bare env of a recording (optionally with the RGB camera switched on)."""
    config = json.loads(json.dumps(meta["config"]))  # a private deep copy
    if camera:
        config.setdefault("sensors", {})["camera"] = True
    try:
        return envs.make(str(meta["env_id"]), config=config)
    except (ValueError, TypeError, KeyError) as exc:
        raise EpisodeFileError(f"episode file '{path}': cannot rebuild its env "
                               f"{meta['env_id']!r} from the recorded config: {exc}") from None


def _reset(env: DrivingEnv, meta: Mapping[str, Any]) -> dict[str, NDArray[Any]]:
    options = meta.get("reset_options") or None
    obs, _ = env.reset(seed=int(meta["seed"]), options=dict(options) if options else None)
    return obs


@dataclass
class _Step:
    """One re-simulated control step and its recorded row."""

    row: dict[str, Any]
    obs: dict[str, NDArray[Any]]
    mismatch: _Mismatch


def _resimulate(rows: pd.DataFrame, meta: Mapping[str, Any], env: DrivingEnv,
                tolerance: float) -> Iterator[_Step]:
    """Reset ``env`` as recorded and step it with each row's control command."""
    _reset(env, meta)
    for row in rows.to_dict("records"):
        action = np.array([row["control_steer"], row["control_accel"]], dtype=np.float64)
        obs, _, terminated, truncated, _ = env.step(action)
        yield _Step(row, obs, _compare(row, env, bool(terminated), bool(truncated), tolerance))


def _verify_result(path: Path, bad: tuple[int, Any] | None, steps: int, total: int,
                   max_err: float, tol: float, note: str, meta: dict[str, Any],
                   t0: float) -> VerifyResult:
    """Assemble a :class:`VerifyResult` from a re-simulation's outcome."""
    return VerifyResult(
        path=path, ok=bad is None, steps=steps, total_steps=total,
        first_divergent_step=None if bad is None else bad[0],
        column=None if bad is None else bad[1].column,
        recorded=None if bad is None else bad[1].recorded,
        replayed=None if bad is None else bad[1].replayed,
        max_abs_error=max_err, tolerance=tol, note=note,
        recorded_version=str(meta["package_version"]), replay_version=package_version(),
        seconds=time.perf_counter() - t0)


def verify_episode(path: str | Path, tolerance: float = 0.0) -> VerifyResult:
    """Re-simulate an episode from its seed, config and control commands; compare states.

    The comparison stops at the first divergent row (later states follow from a
    different history and say nothing more).

    Args:
        path: An episode file (:func:`evaluation.recording.write_episode`).
        tolerance: Largest accepted absolute difference of a compared value (0: bit
            identical). Raised to :data:`CROSS_VERSION_TOLERANCE` when the episode was
            recorded by another bulletdrive version (stated in ``note``).

    Returns:
        The :class:`VerifyResult`.

    Raises:
        EpisodeFileError: Not a readable episode file, or its env cannot be rebuilt.
        ValueError: A negative or non-finite tolerance.
    """
    p = Path(path)
    rows, meta = load_episode(p)
    tol, note = _tolerance(meta, tolerance)
    t0 = time.perf_counter()
    env = _make_env(meta, p)
    steps, max_err = 0, 0.0
    bad: tuple[int, _Mismatch] | None = None
    try:
        for item in _resimulate(rows, meta, env, tol):
            steps += 1
            max_err = max(max_err, item.mismatch.max_abs_error)
            if item.mismatch.diverged:
                bad = (int(item.row["step"]), item.mismatch)
                break
    finally:
        env.close()
    return _verify_result(p, bad, steps, len(rows), max_err, tol, note, meta, t0)


# ---------------------------------------------------------------------- rendering
def _window(rows: pd.DataFrame, start: int | None, end: int | None) -> tuple[int, int]:
    """Validated inclusive ``step`` range of a rendering."""
    first, last = int(rows["step"].iloc[0]), int(rows["step"].iloc[-1])
    lo = first if start is None else int(start)
    hi = last if end is None else int(end)
    if not first <= lo <= hi <= last:
        raise ValueError(f"step window [{lo}, {hi}] is not inside the episode's steps "
                         f"[{first}, {last}] (start <= end, both inclusive)")
    return lo, hi


def _text(img: NDArray[np.uint8], text: str, x: int, y: int,
          colour: tuple[int, int, int] = (235, 235, 235)) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.45, colour, 1, cv2.LINE_AA)


def _events_text(events_json: str) -> tuple[str, bool]:
    """Event types of a step as text, and whether one is a collision."""
    events = json.loads(events_json) if events_json else []
    kinds = [str(e.get("type", e)) if isinstance(e, dict) else str(e) for e in events]
    return (", ".join(kinds) if kinds else "-"), COLLISION in kinds


def _compose(item: _Step, env: DrivingEnv, policy_camera: bool) -> NDArray[np.uint8]:
    """One RGB video frame: camera | bird's-eye view, text band below."""
    row = item.row
    camera = item.obs.get("camera")
    cam: NDArray[np.uint8]
    if camera is None:
        cam = np.full((PANEL_PX, PANEL_PX, 3), 40, np.uint8)
        _text(cam, "no camera", 120, PANEL_PX // 2)
    else:
        # Nearest neighbour keeps the policy's pixels visible as pixels.
        cam = np.asarray(cv2.resize(camera, (PANEL_PX, PANEL_PX),
                                    interpolation=cv2.INTER_NEAREST), dtype=np.uint8)
        if not policy_camera:
            _text(cam, "camera (not a policy input)", 8, 18, (255, 220, 60))
    bev = env.bev(PANEL_PX, BEV_METRES_PER_PX)
    band = np.full((BAND_PX, 2 * PANEL_PX, 3), 25, np.uint8)
    events, collision = _events_text(str(row["events"]))
    _text(band, f"step {int(row['step'])}  t {float(row['t_s']):6.2f} s  "
                f"speed {float(row['speed_mps']):5.2f} m/s  reward {float(row['reward']):+.3f}",
          8, 20)
    action = str(row["policy_action"])
    _text(band, f"action {action if len(action) <= 80 else action[:77] + '...'}", 8, 42)
    _text(band, f"events {events}", 8, 64, (255, 90, 90) if collision else (235, 235, 235))
    if item.mismatch.diverged:
        _text(band, "REPLAY DIVERGED", 2 * PANEL_PX - 150, 64, (255, 60, 60))
    frame = np.concatenate([np.concatenate([cam, bev], axis=1), band], axis=0)
    if collision:
        cv2.rectangle(frame, (0, 0), (frame.shape[1] - 1, frame.shape[0] - 1), (230, 20, 20),
                      BORDER_PX)
    return np.ascontiguousarray(frame, dtype=np.uint8)


def _frames(path: Path, start: int | None, end: int | None
            ) -> tuple[Iterator[NDArray[np.uint8]], int, float, DrivingEnv]:
    """Frames of the steps ``[start, end]``; the count, the recorded fps and the env
    (close it when done)."""
    rows, meta = load_episode(path)
    lo, hi = _window(rows, start, end)
    policy_camera = bool(meta["config"].get("sensors", {}).get("camera", False))
    # Without a recorded camera one is switched on for viewing; it only renders, so
    # the dynamics stay as recorded (every frame is still checked against the file).
    env = _make_env(meta, path, camera=True)
    tol, _ = _tolerance(meta, 0.0)
    rows = rows[rows["step"] <= hi]

    def frames() -> Iterator[NDArray[np.uint8]]:
        warned = False
        for item in _resimulate(rows, meta, env, tol):
            if item.mismatch.diverged and not warned:
                warned = True
                warnings.warn(f"{path}: replay diverged from the recording at step "
                              f"{int(item.row['step'])} ({item.mismatch.column}); frames "
                              "from there on show the re-simulation", stacklevel=3)
            if int(item.row["step"]) >= lo:
                yield _compose(item, env, policy_camera)

    return frames(), hi - lo + 1, 1.0 / float(meta["dt_s"]), env


def _open_writer(path: Path, fps: float, size: tuple[int, int]) -> cv2.VideoWriter:
    """A VideoWriter with the first codec of :data:`FOURCCS` that opens."""
    for code in FOURCCS:
        # ffmpeg reports a missing H.264 encoder on stderr; the fallback covers it.
        with _quiet_opencv():
            writer = cv2.VideoWriter(str(path), cv2.VideoWriter.fourcc(*code), fps, size)
        if writer.isOpened():
            return writer
        writer.release()
    raise OSError(f"OpenCV cannot open a video writer for '{path}' with codecs "
                  f"{', '.join(FOURCCS)}")


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """Silence OpenCV's and ffmpeg's stderr chatter (ffmpeg logs below OpenCV's log
    level, so the file descriptor itself is redirected for the moment)."""
    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    saved = os.dup(2)
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        cv2.utils.logging.setLogLevel(level)


def render_episode(path: str | Path, out_mp4: str | Path, start: int | None = None,
                   end: int | None = None, fps: float | None = None) -> Path:
    """Re-simulate an episode and write it as a side-by-side MP4 video.

    Each frame shows the camera image as the policy saw it (corruptions included, scaled
    up with nearest neighbour; when the recorded config had no camera one is switched on
    for viewing and labelled so), the bird's-eye view and a band with time, speed,
    policy action, reward and events of the step; collision steps have a red border.
    H.264 (``avc1``) is tried first, MPEG-4 (``mp4v``) when OpenCV cannot encode H.264.
    The file is written to a temporary name and renamed.

    Args:
        path: An episode file.
        out_mp4: The video to write.
        start: First rendered ``step`` (inclusive; default the first).
        end: Last rendered ``step`` (inclusive; default the last).
        fps: Frame rate (default the control rate, i.e. real time).

    Returns:
        The written path. It has ``end - start + 1`` frames of
        ``2 * PANEL_PX`` x ``PANEL_PX + BAND_PX`` pixels.

    Raises:
        EpisodeFileError: Not a readable episode file.
        ValueError: A window outside the episode, or a non-positive fps.
        OSError: No video writer could be opened.
    """
    if fps is not None and not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {fps}")
    p, target = Path(path), Path(out_mp4)
    frames, _, rate, env = _frames(p, start, end)
    size = (2 * PANEL_PX, PANEL_PX + BAND_PX)
    try:
        with atomic_path(target) as tmp:
            writer = _open_writer(tmp, float(fps or rate), size)
            try:
                for frame in frames:
                    writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
            finally:
                writer.release()
    finally:
        env.close()
    return target


def frame_png(path: str | Path, step: int, out_png: str | Path) -> Path:
    """Write the rendered frame of one control step (as in :func:`render_episode`) as PNG.

    Args:
        path: An episode file.
        step: The ``step`` to show.
        out_png: The PNG to write (atomically).

    Returns:
        The written path.
    """
    from envs.snapshot import write_png

    frames, _, _, env = _frames(Path(path), step, step)
    try:
        frame = next(frames)
    finally:
        env.close()
    return write_png(Path(out_png), frame)


# ---------------------------------------------------------------------- GUI
def gui_episode(path: str | Path, realtime: bool = True,
                step_by_step: bool = False) -> VerifyResult:
    """Replay an episode in pybullet's GUI window (needs a display), then verify it.

    Args:
        path: An episode file.
        realtime: Sleep so that the replay runs at the recorded control rate.
        step_by_step: Advance one control step per press of ``n`` in the GUI window
            (``c`` continues in real time).

    Returns:
        The verification of the replayed episode.

    Raises:
        OSError: No display ($DISPLAY unset) or the GUI cannot be opened.
        EpisodeFileError: Not a readable episode file.
    """
    import pybullet as p

    import envs.driving_env as driving_env

    if not os.environ.get("DISPLAY"):
        raise OSError("--gui needs a display, but $DISPLAY is not set (headless machine); "
                      "use --video OUT.mp4 instead")
    pth = Path(path)
    rows, meta = load_episode(pth)
    tol, note = _tolerance(meta, 0.0)
    real_connect = p.connect

    def gui_connect(*_: Any, **__: Any) -> int:
        client = int(real_connect(p.GUI))
        if client < 0:
            raise OSError("pybullet could not open its GUI window")
        return client

    # The env always connects in DIRECT mode; swap the connection mode only while
    # this one env is built (its physics is the same in either mode).
    driving_env.p.connect = gui_connect
    try:
        env = _make_env(meta, pth)
    finally:
        driving_env.p.connect = real_connect
    t0 = time.perf_counter()
    steps, max_err, bad = 0, 0.0, None
    try:
        for item in _resimulate(rows, meta, env, tol):
            steps += 1
            max_err = max(max_err, item.mismatch.max_abs_error)
            st = env.state
            p.resetDebugVisualizerCamera(12.0, math.degrees(st.yaw) - 90.0, -25.0,
                                         [st.x, st.y, 0.0], physicsClientId=env.client)
            if item.mismatch.diverged and bad is None:
                bad = (int(item.row["step"]), item.mismatch)
            while step_by_step:  # wait for a key in the GUI window
                keys = p.getKeyboardEvents(physicsClientId=env.client)
                if keys.get(ord("n"), 0) & p.KEY_WAS_TRIGGERED:
                    break
                if keys.get(ord("c"), 0) & p.KEY_WAS_TRIGGERED:
                    step_by_step = False
                time.sleep(0.02)
            if realtime and not step_by_step:
                time.sleep(env.dt)
    finally:
        env.close()
    return _verify_result(pth, bad, steps, len(rows), max_err, tol, note, meta, t0)


__all__ = [
    "CROSS_VERSION_TOLERANCE",
    "STATE_COLUMNS",
    "VerifyResult",
    "frame_png",
    "gui_episode",
    "render_episode",
    "verify_episode",
]
