"""Training envs: the driving env in its action mode, with train-range episode seeds and
an action log that lets a run rebuild every env's exact state after an interruption."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any, SupportsFloat, TypedDict

import gymnasium as gym
import numpy as np
from stable_baselines3.common.monitor import Monitor

from agents.config import TRAIN_SEED_RANGE, ShapingConfig, TrainConfig
from agents.expert_labels import ExpertLabels
from agents.shaping import TTCPenalty
from planning.lane_gaps import LaneGaps
from planning.make import make_env


class TrainSeeds(gym.Wrapper[Any, Any, Any, Any]):
    """Episodes reset without a seed draw one from the train range (with their own
    generator), so training never meets a validation or test seed or map.

    ``reset(seed=s)`` starts episode ``s`` and re-seeds the generator from ``s``.
    """

    def __init__(self, env: gym.Env[Any, Any], seed_range: tuple[int, int] = TRAIN_SEED_RANGE
                 ) -> None:
        super().__init__(env)
        self.seed_range = seed_range
        self.rng = np.random.default_rng(seed_range[0])

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Reset with ``seed`` or a drawn train seed."""
        if seed is None:
            seed = int(self.rng.integers(*self.seed_range))
        else:
            lo, hi = self.seed_range
            seed = lo + int(seed) % (hi - lo)
            self.rng = np.random.default_rng(seed)
        return self.env.reset(seed=seed, options=options)


class ActionLog(gym.Wrapper[Any, Any, Any, Any]):
    """Remembers the current episode's seed and actions; :meth:`restore` re-simulates
    them (the world is deterministic given seed and actions), which is how a resumed run
    gets every env back to the exact state it had at the checkpoint."""

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        self.episode_seed: int | None = None
        self.actions: list[Any] = []

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Reset and start a new log."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.episode_seed = int(getattr(self.env.unwrapped, "episode_seed", -1))
        self.actions = []
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step and log the action."""
        self.actions.append(np.asarray(action).tolist())
        return self.env.step(action)

    def snapshot(self) -> dict[str, Any]:
        """The episode seed, the actions so far and the seed generator's state."""
        seeds = self.env if isinstance(self.env, TrainSeeds) else None
        return {"episode_seed": self.episode_seed, "actions": list(self.actions),
                "rng": None if seeds is None else seeds.rng.bit_generator.state}

    def restore(self, snap: dict[str, Any]) -> Any:
        """Re-simulate a :meth:`snapshot`; returns the last observation."""
        base = self.env.env if isinstance(self.env, TrainSeeds) else self.env
        obs, _ = base.reset(seed=snap["episode_seed"])
        self.episode_seed = snap["episode_seed"]
        self.actions = []
        for action in snap["actions"]:
            obs, *_ = self.step(np.asarray(action))
        if isinstance(self.env, TrainSeeds) and snap.get("rng") is not None:
            self.env.rng.bit_generator.state = snap["rng"]
        return obs


#: The vector observations a policy sees next to its image features, when the env has
#: them: ``measurements`` (always), ``decision`` (the ``behavior`` layer's target speed and
#: lane), ``lidar`` (ranges, with ``sensors.lidar=true`` in ``env_overrides``: a camera +
#: lidar agent), ``lane_gaps`` (with ``lane_gaps: true``, :mod:`planning.lane_gaps`) and
#: ``state`` (privileged path).
VECTOR_KEYS = ("measurements", "decision", "lidar", "lane_gaps", "state")


def env_overrides(cfg: TrainConfig) -> list[str]:
    """Env overrides for the run's observation path."""
    extra = list(cfg.env_overrides)
    if cfg.obs == "privileged":
        extra += ["sensors.state=true", "sensors.camera=false"]
    elif cfg.algo == "ppo" and cfg.ppo.privileged_critic:
        extra += ["sensors.state=true"]  # for the critic only
    return extra


def build_env(env_id: str, action_mode: str, overrides: Sequence[str], *,
              shaping: ShapingConfig | None = None, lane_gaps: bool = False,
              expert_labels: bool = False, lane_presence: bool = False,
              lane_rear_closing: bool = False) -> gym.Env[Any, Any]:
    """One training env: driving env + action mode + lane gaps (when on; with the
    neighbour lanes' presence when ``lane_presence`` and the closing speeds of the cars
    behind in them when ``lane_rear_closing``) + the expert's action in each
    observation (when on, for guided PPO) + reward shaping (when on) + episode
    statistics (SB3 ``Monitor``: reward and length in TensorBoard) + train seeds + action
    log."""
    env = make_env(env_id, action_mode=action_mode, overrides=list(overrides))
    if lane_gaps:
        env = LaneGaps(env, presence=lane_presence, rear_closing=lane_rear_closing)
    if expert_labels:
        env = ExpertLabels(env)
    if shaping is not None and shaping.ttc_weight > 0:
        env = TTCPenalty(env, shaping)
    return ActionLog(TrainSeeds(Monitor(env)))


class LaneOptions(TypedDict):
    """:func:`build_env`'s lane-gap keywords."""

    lane_gaps: bool
    lane_presence: bool
    lane_rear_closing: bool


def lane_options(cfg: TrainConfig) -> LaneOptions:
    """:func:`build_env`'s lane-gap keywords from a run's config (one place to add an
    option)."""
    return LaneOptions(lane_gaps=cfg.lane_gaps, lane_presence=cfg.lane_presence,
                       lane_rear_closing=cfg.lane_rear_closing)


def env_fns(cfg: TrainConfig) -> list[Callable[[], gym.Env[Any, Any]]]:
    """Picklable env factories for a vectorised env."""
    return [functools.partial(build_env, cfg.env_id, cfg.action_mode, env_overrides(cfg),
                              shaping=cfg.shaping, expert_labels=cfg.expert_guided,
                              **lane_options(cfg))
            for _ in range(cfg.num_envs)]
