"""Episode recording: one row per control step, one Parquet file per episode.

:class:`RecordingWrapper` wraps the BARE :class:`envs.driving_env.DrivingEnv`, beneath any
``behavior`` / ``trajectory`` decision layer, so it sees every control step even when
the policy decides only every few steps::

    bare = envs.make("Highway-v0", overrides=[...])
    recorder = RecordingWrapper(bare)
    env = planning.action_modes.wrap_action_mode(recorder)   # decision layer on top
    obs, _ = env.reset(seed=seed)
    while not done:
        action = policy.act(obs, env)
        recorder.policy_action = action                      # before each outer step
        obs, reward, terminated, truncated, info = env.step(action)
    write_episode(path, recorder.rows, recorder.episode_metadata(env_id=..., agent=..., suite=...))

Columns of a row (SI units; see :data:`COLUMNS`):

* ``step`` (control steps since reset, 1 for the first row), ``decision`` (index of the
  outer policy decision the step belongs to, -1 when no decision was announced), and
  every column of :data:`evaluation.metrics.REQUIRED_COLUMNS`:
  ``t_s`` = ``step * dt`` (episode time at the END of the step; the signal clock offset
  of urban episodes is not included), ego pose and speed, ``accel_mps2`` (the env's
  finite difference of speed), ``lat_accel_mps2`` = ``speed * yaw_rate``,
  ``route_completion`` / ``route_progress_m`` / ``speed_limit_mps`` / ``wrong_way_m``
  from ``info``, and:

  - ``ttc_s``: time to collision with the nearest vehicle ahead on the ego's path (see
    :func:`time_to_collision`); ``inf`` when there is none or it is not closing in;
  - ``corner_outside_m``: largest distance of the 4 body corners outside the drivable
    area (see :func:`corner_outside_m`), 0 when all are inside;
  - ``events``: the step's event list as JSON text; ``terminated`` / ``truncated``.

* ``vx_mps``, ``vy_mps``, ``steer_rad`` (ego state), ``control_steer``,
  ``control_accel`` (the ``[steer, accel]`` command applied in the step, after the env's
  clip to [-1, 1]; what a replay feeds back), ``policy_action`` (JSON text of the outer
  policy's decision), ``reward``, ``lane`` / ``s_m`` / ``d_m`` (the ego's lane point;
  null off the map), ``nearest_vehicle_m`` (centre distance to the nearest active traffic
  vehicle, ``inf`` with none) and ``traffic_xy`` (active traffic positions ``[x0, y0, x1,
  y1, ...]``, to verify replays).

File format: Parquet written with pyarrow to a temporary name and renamed (an
interrupted run never leaves a partial file under the final name; temporary files start
with a dot). The schema metadata key ``bulletdrive`` holds JSON with
:data:`METADATA_KEYS` (``format_version`` :data:`FORMAT_VERSION`). :func:`load_episode`
and :func:`load_episodes` read them back, raising :class:`EpisodeFileError` for files
that are not episode files.
"""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from numpy.typing import NDArray

from common.config import to_dict
from common.io import atomic_path
from envs.driving_env import DrivingEnv
from envs.maps.road_map import RoadMap
from evaluation.metrics import REQUIRED_COLUMNS
from planning.safety import time_to_collision

#: Version of the episode file layout; readers reject files with a larger one.
FORMAT_VERSION = 1
#: Schema metadata key under which the episode metadata JSON is stored.
METADATA_KEY = b"bulletdrive"
#: Keys every episode's metadata has (``expert_progress_m`` may be null).
METADATA_KEYS: tuple[str, ...] = (
    "format_version", "package_version", "env_id", "action_mode", "config", "seed",
    "reset_options", "map_seed", "dt_s", "route_length_m", "expert_progress_m", "agent",
    "suite", "steps",
)

_FLOAT = pa.float64()
#: Column types of a recorded episode, in file order.
SCHEMA_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("step", pa.int64()),
    ("decision", pa.int64()),
    ("t_s", _FLOAT), ("x_m", _FLOAT), ("y_m", _FLOAT), ("yaw_rad", _FLOAT),
    ("speed_mps", _FLOAT), ("accel_mps2", _FLOAT), ("lat_accel_mps2", _FLOAT),
    ("yaw_rate_radps", _FLOAT), ("route_completion", _FLOAT), ("route_progress_m", _FLOAT),
    ("speed_limit_mps", _FLOAT), ("ttc_s", _FLOAT), ("corner_outside_m", _FLOAT),
    ("wrong_way_m", _FLOAT), ("events", pa.string()), ("terminated", pa.bool_()),
    ("truncated", pa.bool_()),
    ("vx_mps", _FLOAT), ("vy_mps", _FLOAT), ("steer_rad", _FLOAT),
    ("control_steer", _FLOAT), ("control_accel", _FLOAT), ("policy_action", pa.string()),
    ("reward", _FLOAT), ("lane", pa.string()), ("s_m", _FLOAT), ("d_m", _FLOAT),
    ("nearest_vehicle_m", _FLOAT), ("traffic_xy", pa.list_(_FLOAT)),
)
#: All recorded columns, in file order.
COLUMNS: tuple[str, ...] = tuple(name for name, _ in SCHEMA_FIELDS)
assert set(REQUIRED_COLUMNS) <= set(COLUMNS)


class EpisodeFileError(ValueError):
    """A file is not a readable bulletdrive episode (missing, not Parquet, truncated,
    without metadata, or from a newer format)."""


def package_version() -> str:
    """The installed bulletdrive version (``"unknown"`` when not installed)."""
    try:
        return importlib.metadata.version("bulletdrive")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def to_json_value(value: Any) -> Any:
    """Plain JSON data for an action or decision (numpy arrays and scalars included).

    Non-finite floats stay floats (``json.dumps`` writes ``NaN`` / ``Infinity``).
    """
    if isinstance(value, np.ndarray):
        return [to_json_value(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return repr(value)  # an exotic action type: keep something readable


# ---------------------------------------------------------------------- geometry
def body_corners(x: float, y: float, yaw: float, length_m: float,
                 width_m: float) -> NDArray[np.float64]:
    """World corners (4, 2) of a box centred at (x, y): front-left, rear-left, rear-right,
    front-right."""
    c, s = math.cos(yaw), math.sin(yaw)
    hl, hw = length_m / 2.0, width_m / 2.0
    local = np.array([[hl, hw], [-hl, hw], [-hl, -hw], [hl, -hw]])
    return local @ np.array([[c, s], [-s, c]]) + np.array([x, y])


class _Segments:
    """All lane centre-line segments of a map in flat arrays (for far-off-road points)."""

    def __init__(self, road_map: RoadMap) -> None:
        self.a = np.concatenate([ln.centre[:-1] for ln in road_map.lanes])
        self.ab = np.concatenate([np.diff(ln.centre, axis=0) for ln in road_map.lanes])
        # Half width at both ends of a segment, interpolated along it.
        self.h0 = np.concatenate([ln.width[:-1] / 2.0 for ln in road_map.lanes])
        self.h1 = np.concatenate([ln.width[1:] / 2.0 for ln in road_map.lanes])

    def outside(self, point: NDArray[np.float64]) -> float:
        """Distance of ``point`` beyond the nearest lane edge [m] (0 when inside)."""
        ap = point - self.a
        denom = np.maximum(np.einsum("ij,ij->i", self.ab, self.ab), 1e-12)
        t = np.clip(np.einsum("ij,ij->i", ap, self.ab) / denom, 0.0, 1.0)
        dist = np.hypot(*(ap - self.ab * t[:, None]).T)
        return float(max(np.min(dist - (self.h0 + t * (self.h1 - self.h0))), 0.0))


def corner_outside_m(road_map: RoadMap, corners: NDArray[np.float64],
                     segments: _Segments | None = None) -> float:
    """Largest distance of a body corner outside the drivable area [m].

    The drivable area is the union of the lanes (centre line +- half the lane width; paved
    shoulders, kerbs and verges are outside, as for the env's ``off_road`` event). Each
    corner is located with :meth:`envs.maps.road_map.RoadMap.locate`, which prefers a
    lane that contains the point: inside that lane the corner contributes 0, otherwise
    ``|d| - width / 2`` of the nearest lane. A corner that ``locate`` finds no lane for
    (more than about a lane width from every centre line) is measured against every lane
    segment of the map.

    Args:
        road_map: The map.
        corners: Corner points (K, 2) [m].
        segments: Cached segment arrays of ``road_map`` (built when None).

    Returns:
        The largest outside distance, 0 when every corner is on a lane.
    """
    worst = 0.0
    for corner in np.asarray(corners, dtype=np.float64):
        lp = road_map.locate(corner)
        if lp is None:
            segments = segments or _Segments(road_map)
            out = segments.outside(corner)
        else:
            out = abs(lp.d) - float(road_map.lane(lp.lane).width_at(lp.s)) / 2.0
        worst = max(worst, out)
    return worst


# ---------------------------------------------------------------------- the wrapper
class RecordingWrapper(gym.Wrapper[dict[str, NDArray[Any]], NDArray[np.float32],
                                   dict[str, NDArray[Any]], NDArray[np.float32]]):
    """Record one row per control step of a bare :class:`DrivingEnv`.

    Put it directly on the bare env and any decision layer on top of it. Before each
    outer step the driving loop sets :attr:`policy_action` to the policy's decision;
    every control step of that decision is recorded with it.

    Args:
        env: The bare driving env (``envs.make``), not wrapped.

    Attributes:
        rows: The rows of the current episode (cleared by ``reset``).
        reset_seed / reset_options: The current episode's seed (the env's drawn seed when
            reset without one) and reset options.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        if not isinstance(env, DrivingEnv):
            raise TypeError("RecordingWrapper must wrap the bare DrivingEnv (envs.make), "
                            f"beneath any action-mode wrapper; got {type(env).__name__}")
        self.driving: DrivingEnv = env
        self.rows: list[dict[str, Any]] = []
        self.reset_seed: int | None = None
        self.reset_options: dict[str, Any] = {}
        self.route_length_m = math.nan
        self._policy_action = "null"
        self._decision = -1
        self._segments: tuple[RoadMap, _Segments] | None = None

    @property
    def policy_action(self) -> str:
        """JSON text of the outer policy's current decision (``"null"`` before any)."""
        return self._policy_action

    @policy_action.setter
    def policy_action(self, action: Any) -> None:
        self._policy_action = json.dumps(to_json_value(action))
        self._decision += 1

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Reset the env and start a new recording."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.rows = []
        # Without a seed the env draws one; everything random derives from it, so the
        # drawn seed is what reproduces the episode.
        self.reset_seed = int(self.driving.episode_seed)
        self.reset_options = dict(options or {})
        self.route_length_m = float(info["route_length_m"])
        self._policy_action = "null"
        self._decision = -1
        return obs, info

    def step(self, action: NDArray[np.float32]) -> tuple[dict[str, NDArray[Any]], float,
                                                         bool, bool, dict[str, Any]]:
        """Step the env and record the step."""
        obs, raw_reward, terminated, truncated, info = self.env.step(action)
        reward = float(raw_reward)
        self.rows.append(self._row(reward, bool(terminated), bool(truncated), info))
        return obs, reward, terminated, truncated, info

    def _map_segments(self, road_map: RoadMap) -> _Segments:
        # The segment arrays are only needed far off the road; build them once per map.
        if self._segments is None or self._segments[0] is not road_map:
            self._segments = (road_map, _Segments(road_map))
        return self._segments[1]

    def _row(self, reward: float, terminated: bool, truncated: bool,
             info: Mapping[str, Any]) -> dict[str, Any]:
        env = self.driving
        st = env.state
        rm = env.road_map
        assert rm is not None
        veh = env.config.vehicle
        corners = body_corners(st.x, st.y, st.yaw, veh.length_m, veh.width_m)
        outside = corner_outside_m(rm, corners, self._map_segments(rm))
        ttc, nearest = time_to_collision(env)
        t = env.traffic
        lp = env.lane_point
        return {
            "step": int(info["step"]),
            "decision": self._decision,
            "t_s": int(info["step"]) * env.dt,
            "x_m": st.x, "y_m": st.y, "yaw_rad": st.yaw,
            "speed_mps": st.speed_mps,
            "accel_mps2": float(env.accel_mps2),
            "lat_accel_mps2": st.speed_mps * st.yaw_rate_radps,
            "yaw_rate_radps": st.yaw_rate_radps,
            "route_completion": float(info["route_completion"]),
            "route_progress_m": float(info["route_progress_m"]),
            "speed_limit_mps": float(info["speed_limit_mps"]),
            "ttc_s": ttc,
            "corner_outside_m": outside,
            "wrong_way_m": float(info["wrong_way_m"]),
            "events": json.dumps(to_json_value(info["events"])),
            "terminated": terminated,
            "truncated": truncated,
            "vx_mps": st.vx, "vy_mps": st.vy, "steer_rad": st.steer_rad,
            "control_steer": float(st.steer_cmd), "control_accel": float(st.accel_cmd),
            "policy_action": self._policy_action,
            "reward": reward,
            "lane": None if lp is None else lp.lane,
            "s_m": None if lp is None else float(lp.s),
            "d_m": None if lp is None else float(lp.d),
            "nearest_vehicle_m": nearest,
            "traffic_xy": np.column_stack([t.x[t.active], t.y[t.active]]).ravel().tolist(),
        }

    def episode_metadata(self, *, env_id: str, agent: str, suite: str,
                 expert_progress_m: float | None = None,
                 extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """Episode metadata for :func:`write_episode` (call after the episode).

        Args:
            env_id: The env id the episode ran in.
            agent: Agent name.
            suite: Suite name.
            expert_progress_m: The expert's route progress on this seed [m], or None.
            extra: Further JSON-able entries (kept beside :data:`METADATA_KEYS`).
        """
        env = self.driving
        meta: dict[str, Any] = {
            "format_version": FORMAT_VERSION,
            "package_version": package_version(),
            "env_id": env_id,
            "action_mode": env.config.action.mode,
            "config": to_dict(env.config),
            "seed": self.reset_seed,
            "reset_options": to_json_value(self.reset_options),
            "map_seed": int(env.map_seed),
            "dt_s": float(env.dt),
            "route_length_m": self.route_length_m,
            "expert_progress_m": expert_progress_m,
            "agent": agent,
            "suite": suite,
            "steps": len(self.rows),
        }
        meta.update(to_json_value(dict(extra or {})))
        return meta


# ---------------------------------------------------------------------- files
def _table(rows: Sequence[Mapping[str, Any]], metadata: Mapping[str, Any]) -> pa.Table:
    if not rows:
        raise ValueError("an episode needs at least one recorded step; got none")
    missing = [c for c in COLUMNS if c not in rows[0]]
    if missing:
        raise ValueError(f"episode rows lack column(s) {', '.join(missing)}; recorded "
                         f"columns: {', '.join(COLUMNS)}")
    extra = [c for c in rows[0] if c not in COLUMNS]
    arrays = [pa.array([r[name] for r in rows], type=typ) for name, typ in SCHEMA_FIELDS]
    fields = [pa.field(name, typ) for name, typ in SCHEMA_FIELDS]
    for name in extra:  # caller's additional columns: types inferred
        arr = pa.array([r.get(name) for r in rows])
        arrays.append(arr)
        fields.append(pa.field(name, arr.type))
    text = json.dumps(to_json_value(dict(metadata)))
    schema = pa.schema(fields, metadata={METADATA_KEY: text.encode()})
    return pa.Table.from_arrays(arrays, schema=schema)


def write_episode(path: str | Path, rows: Sequence[Mapping[str, Any]],
                  metadata: Mapping[str, Any]) -> Path:
    """Write one episode as a Parquet file, atomically.

    Args:
        path: Target file (``.parquet``); its folder is created.
        rows: One mapping per control step with (at least) :data:`COLUMNS`.
        metadata: Episode metadata with :data:`METADATA_KEYS` (e.g. from
            :meth:`RecordingWrapper.episode_metadata`); ``format_version`` and
            ``package_version`` are filled in when absent.

    Returns:
        The written path.

    Raises:
        ValueError: No rows, missing columns or metadata keys.
    """
    meta = {"format_version": FORMAT_VERSION, "package_version": package_version(),
            **dict(metadata)}
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise ValueError(f"episode metadata lacks key(s) {', '.join(missing)}; required: "
                         f"{', '.join(METADATA_KEYS)}")
    table = _table(rows, meta)
    target = Path(path)
    with atomic_path(target) as tmp:
        pq.write_table(table, tmp)
    return target


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The metadata of an episode file, without reading its rows.

    Raises:
        EpisodeFileError: As :func:`load_episode`.
    """
    p = _existing(path)
    try:
        schema = pq.read_schema(p)
    except (pa.ArrowException, OSError) as exc:
        raise EpisodeFileError(f"episode file '{p}' is not a readable Parquet file "
                               f"(truncated or corrupt?): {exc}") from None
    return _metadata(p, schema)


def _existing(path: str | Path) -> Path:
    p = Path(path)
    if not p.is_file():
        raise EpisodeFileError(f"episode file '{p}' does not exist")
    return p


def _metadata(path: Path, schema: pa.Schema) -> dict[str, Any]:
    raw = (schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise EpisodeFileError(f"'{path}' is a Parquet file without bulletdrive episode "
                               "metadata (not written by write_episode)")
    try:
        meta = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EpisodeFileError(f"episode file '{path}': metadata is not valid JSON ({exc})"
                               ) from None
    if not isinstance(meta, dict):
        raise EpisodeFileError(f"episode file '{path}': metadata must be a JSON object")
    version = meta.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise EpisodeFileError(f"episode file '{path}': metadata has no integer "
                               f"format_version (got {version!r})")
    if version > FORMAT_VERSION:
        raise EpisodeFileError(
            f"episode file '{path}' has format version {version}, newer than this "
            f"bulletdrive ({package_version()}) reads (<= {FORMAT_VERSION}); upgrade "
            "bulletdrive to read it")
    missing = [k for k in METADATA_KEYS if k not in meta]
    if missing:
        raise EpisodeFileError(f"episode file '{path}': metadata lacks key(s) "
                               f"{', '.join(missing)}")
    return meta


def load_episode(path: str | Path) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Read one episode file.

    Args:
        path: A file written by :func:`write_episode`.

    Returns:
        ``(rows, metadata)``: one DataFrame row per control step (columns
        :data:`COLUMNS`; ``events`` and ``policy_action`` as JSON text, ``traffic_xy`` as
        arrays) and the metadata dict.

    Raises:
        EpisodeFileError: The file is missing, not Parquet, truncated, lacks the
            metadata or columns, or has a newer format version.
    """
    p = _existing(path)
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as exc:
        raise EpisodeFileError(f"episode file '{p}' is not a readable Parquet file "
                               f"(truncated or corrupt?): {exc}") from None
    meta = _metadata(p, table.schema)
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise EpisodeFileError(f"episode file '{p}' lacks column(s) {', '.join(missing)}")
    if table.num_rows == 0:
        raise EpisodeFileError(f"episode file '{p}' has no rows")
    return table.to_pandas(), meta


def episode_files(folder: str | Path) -> list[Path]:
    """Episode files in ``folder`` (or its ``episodes/`` sub-folder), sorted; temporary
    files of interrupted writes (names starting with a dot) are skipped."""
    root = Path(folder)
    if (root / "episodes").is_dir():
        root = root / "episodes"
    if not root.is_dir():
        raise EpisodeFileError(f"episode folder '{folder}' does not exist")
    return sorted(p for p in root.glob("*.parquet") if not p.name.startswith("."))


def load_episodes(folder: str | Path) -> pd.DataFrame:
    """All episodes of a folder as one table.

    Args:
        folder: A folder of episode files, or an evaluation output folder holding
            ``episodes/``.

    Returns:
        The rows of every episode, concatenated in file-name order, with the columns
        ``episode`` (file stem), ``seed``, ``agent`` and ``suite`` in front.

    Raises:
        EpisodeFileError: No such folder, no episode files, or a bad file (named).
    """
    files = episode_files(folder)
    if not files:
        raise EpisodeFileError(f"no episode files (*.parquet) in '{folder}'")
    frames = []
    for path in files:
        rows, meta = load_episode(path)
        rows.insert(0, "episode", path.stem)
        rows.insert(1, "seed", meta["seed"])
        rows.insert(2, "agent", meta["agent"])
        rows.insert(3, "suite", meta["suite"])
        frames.append(rows)
    return pd.concat(frames, ignore_index=True)


__all__ = [
    "COLUMNS",
    "FORMAT_VERSION",
    "METADATA_KEYS",
    "EpisodeFileError",
    "RecordingWrapper",
    "body_corners",
    "corner_outside_m",
    "episode_files",
    "load_episode",
    "load_episodes",
    "package_version",
    "read_metadata",
    "time_to_collision",
    "to_json_value",
    "write_episode",
]
