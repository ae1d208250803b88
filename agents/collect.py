"""Collect camera frames with their simulator labels for perception (``bulletdrive collect``).

A policy (by default the expert, with Gaussian noise on its commands for diversity, as in
DART) drives episodes of one or more envs; every control step's camera frame is stored
with labels read from the simulator into a :mod:`perception.dataset` shard dataset.
Splits are by seed, never by frame. An interrupted collection resumes: episodes already
in complete shards are skipped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

import envs
from common.config import ConfigError, load_config, require, to_dict
from envs.driving_env import DrivingEnv
from envs.maps.road_map import RouteCommand
from envs.sim.scene import SemanticClass
from envs.traffic.signals import AMBER, GREEN, RED
from perception.dataset import LabelSpec, ShardWriter, split_by_seed
from planning.policies import POLICY_NAMES, make_policy

#: Vehicles further ahead than this do not count as the lead vehicle [m].
LEAD_RANGE_M = 80.0
#: A lane's signal is labelled when its stop line is nearer than this [m].
SIGNAL_RANGE_M = 60.0
#: ``signal_state`` classes.
SIGNAL_CLASSES = ("none", "green", "amber", "red")
#: Seed stride between envs, so that every episode of a dataset has its own seed.
ENV_SEED_STRIDE = 10_000
#: Collection seeds stay below this: the end of the train seed range (evaluation suites'
#: validation and test seeds start here).
TRAIN_SEED_END = 100_000


@dataclass(frozen=True)
class CollectConfig:
    """What to collect.

    Attributes:
        envs: Env ids to drive, each for ``episodes_per_env`` episodes.
        episodes_per_env: Episodes per env.
        first_seed: Seed of the first episode; env ``k`` uses
            ``first_seed + k * 10_000 + i`` (inside the train seed range of
            :mod:`evaluation.suites`, which validation and test suites never use).
        max_steps: Control steps per episode at most (frames per episode).
        policy: Driving policy (``expert``, ``random``, ``keep_lane``).
        steer_noise: Std of Gaussian noise added to the steer command (control mode).
        accel_noise: Std of Gaussian noise added to the accel command.
        val_fraction: Share of seeds in the validation split.
        frames_per_shard: Target frames per shard file.
        depth: Also store depth maps [m] as a label.
        semantic: Also store semantic segmentation as a label.
        overrides: Env config overrides (``key.sub=value``).
    """

    envs: tuple[str, ...] = ("Highway-v0", "Urban-v0")
    episodes_per_env: int = 10
    first_seed: int = 10_000
    max_steps: int = 400
    policy: str = "expert"
    steer_noise: float = 0.1
    accel_noise: float = 0.1
    val_fraction: float = 0.2
    frames_per_shard: int = 2000
    depth: bool = False
    semantic: bool = False
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(len(self.envs) > 0, "collect.envs must name at least one env")
        for env_id in self.envs:
            short = env_id.removeprefix("bulletdrive/")
            if f"bulletdrive/{short}" not in envs.ENV_IDS:
                raise ConfigError(f"collect.envs: unknown env id {env_id!r}; valid: "
                                  f"{', '.join(envs.ENV_IDS)}")
        require(self.policy in POLICY_NAMES,
                f"collect.policy: unknown policy {self.policy!r}; valid: "
                f"{', '.join(POLICY_NAMES)}")
        require(self.episodes_per_env >= 1 and self.max_steps >= 1,
                "collect.episodes_per_env and collect.max_steps must be >= 1")
        require(self.steer_noise >= 0 and self.accel_noise >= 0,
                "collect noise levels must be >= 0")
        require(0.0 < self.val_fraction < 1.0, "collect.val_fraction must be in (0, 1)")
        require(self.episodes_per_env <= ENV_SEED_STRIDE,
                f"collect.episodes_per_env must be <= {ENV_SEED_STRIDE}")
        require(self.first_seed + len(self.envs) * ENV_SEED_STRIDE <= TRAIN_SEED_END,
                f"collect seeds must stay below {TRAIN_SEED_END} (the train seed range)")


def load_collect_config(source: str | Path | None = None,
                        overrides: tuple[str, ...] | list[str] = ()) -> CollectConfig:
    """Load a :class:`CollectConfig` (default: ``configs/collect/default.yaml``)."""
    return load_config(CollectConfig, source or "default", overrides, group="collect")


def label_schema(cfg: CollectConfig, image_hw: tuple[int, int]) -> list[LabelSpec]:
    """The labels stored with every frame."""
    schema = [
        LabelSpec.regression("lane_offset_m"),
        LabelSpec.regression("heading_error_rad"),
        LabelSpec.regression("lead_distance_m"),
        LabelSpec.regression("lead_rel_speed_mps"),
        LabelSpec.regression("speed_mps"),
        LabelSpec.regression("steer_cmd"),
        LabelSpec.regression("accel_cmd"),
        LabelSpec.classification("route_command",
                                 [c.name.lower() for c in RouteCommand]),
        LabelSpec.classification("signal_state", SIGNAL_CLASSES),
    ]
    if cfg.depth:
        schema.append(LabelSpec.regression("depth", shape=image_hw))
    if cfg.semantic:
        schema.append(LabelSpec.classification(
            "semantic", [c.name.lower() for c in SemanticClass], shape=image_hw,
            dtype="uint8"))
    return schema


def frame_labels(env: DrivingEnv) -> dict[str, float]:
    """Scalar labels of the env's current state (NaN where undefined, e.g. no lead).

    ``lane_offset_m`` / ``heading_error_rad``: ego relative to its lane (left positive);
    ``lead_distance_m``: bumper-to-bumper gap to the nearest vehicle ahead in the ego's
    lane within 80 m, ``lead_rel_speed_mps`` its speed minus the ego's;
    ``route_command``: the command in force; ``signal_state``: the ego lane's signal
    when its stop line is within 60 m (``none`` otherwise).
    """
    st, lp, rm = env.state, env.lane_point, env.road_map
    out = {"lane_offset_m": math.nan, "heading_error_rad": math.nan,
           "lead_distance_m": math.nan, "lead_rel_speed_mps": math.nan,
           "speed_mps": float(st.speed_mps), "route_command": 0.0, "signal_state": 0.0}
    if env.route is not None:
        out["route_command"] = float(env.route.next_command(env.route_progress)[0])
    if lp is None or rm is None:
        return out
    lane = rm.lane(lp.lane)
    out["lane_offset_m"] = float(lp.d)
    out["heading_error_rad"] = float(np.angle(np.exp(1j * (st.yaw - float(
        lane.heading_at(lp.s))))))
    t = env.traffic
    k = rm.lane_index[lp.lane]
    on = t.active & (t.lane == k)
    if on.any():
        gap = t.s[on] - lp.s - (t.length[on] + env.config.vehicle.length_m) / 2.0
        ahead = (gap > -1.0) & (gap < LEAD_RANGE_M)
        if ahead.any():
            j = int(np.argmin(np.where(ahead, gap, np.inf)))
            out["lead_distance_m"] = float(max(gap[j], 0.0))
            out["lead_rel_speed_mps"] = float(t.v[on][j] - st.speed_mps)
    sig = int(env.signals.lane_signal[k])
    if sig >= 0 and lane.length - lp.s < SIGNAL_RANGE_M:
        state = int(env.signals.states(env.sim_time_s)[sig])
        out["signal_state"] = float({GREEN: 1, AMBER: 2, RED: 3}[state])
    return out


def _episode(env: DrivingEnv, cfg: CollectConfig, seed: int
             ) -> tuple[NDArray[np.uint8], dict[str, NDArray[Any]]]:
    """Drive one episode; return its frames and labels."""
    policy = make_policy(cfg.policy, seed=seed)
    policy.reset(seed)
    noise = np.random.default_rng(seed)
    obs, _ = env.reset(seed=seed)
    frames: list[NDArray[np.uint8]] = []
    rows: list[dict[str, float]] = []
    dense: dict[str, list[NDArray[Any]]] = {"depth": [], "semantic": []}
    for _ in range(cfg.max_steps):
        action = np.asarray(policy.act(obs, env), dtype=np.float32)
        labels = frame_labels(env)
        labels["steer_cmd"], labels["accel_cmd"] = float(action[0]), float(action[1])
        frames.append(obs["camera"])
        rows.append(labels)
        for key in dense:
            if key in obs:
                dense[key].append(obs[key])
        noisy = action + noise.normal(0.0, [cfg.steer_noise, cfg.accel_noise]).astype(np.float32)
        obs, _, terminated, truncated, _ = env.step(np.clip(noisy, -1.0, 1.0))
        if terminated or truncated:
            break
    out: dict[str, NDArray[Any]] = {}
    for name in rows[0]:
        values = np.array([r[name] for r in rows])
        out[name] = values.astype(np.int64 if name in ("route_command", "signal_state")
                                  else np.float32)
    for key, maps in dense.items():
        if maps:
            out[key] = np.stack(maps)
    return np.stack(frames), out


def collect(cfg: CollectConfig, out_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Collect a frame dataset into ``out_dir`` (resuming a previous run there).

    Returns:
        A summary: frames and episodes per split, episodes skipped as already collected.
    """
    from tqdm import tqdm

    overrides = list(cfg.overrides) + ["sensors.camera=true",
                                       f"sensors.depth={str(cfg.depth).lower()}",
                                       f"sensors.semantic={str(cfg.semantic).lower()}",
                                       "action.mode=control"]
    jobs = [(env_id, cfg.first_seed + k * ENV_SEED_STRIDE + i)
            for k, env_id in enumerate(cfg.envs) for i in range(cfg.episodes_per_env)]
    first = envs.make(cfg.envs[0], overrides=overrides)
    hw = (first.config.camera.height, first.config.camera.width)
    first.close()

    def split_of(seed: int) -> str:
        return split_by_seed(seed, cfg.val_fraction)

    writer = ShardWriter(out_dir, label_schema(cfg, hw), cfg.frames_per_shard, split_of,
                         resume=True, metadata={"collect": to_dict(cfg)})
    done = writer.completed_seeds()
    skipped = sum(seed in done for _, seed in jobs)
    env_cache: dict[str, DrivingEnv] = {}
    with writer, tqdm(total=len(jobs), initial=skipped, desc="collect", unit="ep",
                      disable=not progress) as bar:
        for env_id, seed in jobs:
            if seed in done:
                continue
            if env_id not in env_cache:
                env_cache[env_id] = envs.make(env_id, overrides=overrides)
            frames, labels = _episode(env_cache[env_id], cfg, seed)
            writer.add_episode(seed, frames, labels)
            bar.update(1)
    for env in env_cache.values():
        env.close()
    manifest = writer.manifest
    return {"out": str(out_dir), "frames": {s: manifest.num_frames(s) for s in manifest.splits()},
            "episodes": len(jobs), "skipped_already_collected": skipped}
