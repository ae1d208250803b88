"""Memory for the frozen observation path: the policy sees its last few embeddings.

One forward camera frame does not show a car the ego has just overtaken (it is beside or
behind), nor how fast the lead closes in. With ``history.frames = K`` and
``history.stride = S``, the ``embedding`` a policy sees is the concatenation of the
embeddings of decisions ``t, t-S, ..., t-(K-1)S``, newest first, shape ``(K * D,)``.
At an episode's first decision the past is that first embedding repeated (as
Atari-style frame stacks start), so nothing leaks from the previous episode.

:class:`EmbeddingHistory` holds the last ``(K-1)S + 1`` embeddings of each of N envs.
The vectorised training envs use it through :class:`EmbeddingHistoryVecEnv`; behaviour
cloning and loaded agents (one env at a time) use it directly with N = 1, so all three
build the same input from the same frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvObs,
    VecEnvStepReturn,
    VecEnvWrapper,
)

from agents.config import HistoryConfig

#: The observation key that gets the history.
EMBEDDING_KEY = "embedding"


class EmbeddingHistory:
    """The last embeddings of N envs, newest first.

    Args:
        num_envs: N.
        dim: Embedding size D.
        cfg: Frames and stride.

    Attributes:
        buffer: float32 ``(N, span, D)``; ``buffer[i, 0]`` is env i's newest embedding.
    """

    def __init__(self, num_envs: int, dim: int, cfg: HistoryConfig) -> None:
        self.cfg = cfg
        self.dim = dim
        self.buffer = np.zeros((num_envs, cfg.span, dim), np.float32)

    def start(self, embeddings: np.ndarray, envs: np.ndarray | None = None) -> None:
        """Start new episodes: fill the given envs' (default: all) memories with their
        first embedding ``(len(envs), D)``."""
        rows = np.arange(len(self.buffer)) if envs is None else np.asarray(envs)
        self.buffer[rows] = np.asarray(embeddings, np.float32)[:, None, :]

    def push(self, embeddings: np.ndarray, starts: np.ndarray | None = None) -> None:
        """Add every env's newest embedding ``(N, D)``; envs flagged in ``starts`` (bool
        ``(N,)``) begin a new episode with it instead."""
        self.buffer[:, 1:] = self.buffer[:, :-1].copy()
        self.buffer[:, 0] = embeddings
        if starts is not None and np.any(starts):
            self.start(np.asarray(embeddings)[starts], np.flatnonzero(starts))

    def stacked(self) -> np.ndarray:
        """The policy inputs ``(N, frames * D)``."""
        picked = self.buffer[:, ::self.cfg.stride]
        return picked.reshape(len(self.buffer), -1).copy()

    def stacked_with(self, env: int, embedding: np.ndarray) -> np.ndarray:
        """Env ``env``'s input ``(frames * D,)`` if ``embedding`` came next, without
        storing it (an ended episode's last observation)."""
        ring = np.concatenate([np.asarray(embedding, np.float32)[None],
                               self.buffer[env, :-1]])
        return ring[::self.cfg.stride].reshape(-1)


class EpisodeHistory:
    """The history of one env whose observations arrive one at a time (behaviour
    cloning, loaded agents): call :meth:`start_episode` at each reset and the instance
    once per decision.

    Args:
        dim: Embedding size D.
        cfg: Frames and stride.
    """

    def __init__(self, dim: int, cfg: HistoryConfig) -> None:
        self.history = EmbeddingHistory(1, dim, cfg)
        self._new_episode = True

    def start_episode(self) -> None:
        """The next embedding is an episode's first."""
        self._new_episode = True

    def __call__(self, embedding: np.ndarray) -> np.ndarray:
        """The policy input ``(frames * D,)`` for the next embedding ``(D,)``."""
        if self._new_episode:
            self.history.start(embedding[None])
        else:
            self.history.push(embedding[None])
        self._new_episode = False
        return self.history.stacked()[0]


def stacked_space(dim: int, cfg: HistoryConfig) -> spaces.Box:
    """The ``embedding`` space with a history: ``Box((frames * D,))``."""
    return spaces.Box(-np.inf, np.inf, (cfg.frames * dim,), np.float32)


class EmbeddingHistoryVecEnv(VecEnvWrapper):
    """Replace the ``embedding`` of a VecEnv's Dict observations with the last
    ``frames`` embeddings (see the module docstring); ended episodes' terminal
    observations get their own episode's history.

    Args:
        venv: A VecEnv with a ``(D,)`` ``embedding`` key, e.g.
            :class:`agents.embedding_vec_env.EmbeddingVecEnv`.
        cfg: Frames and stride.
    """

    def __init__(self, venv: VecEnv, cfg: HistoryConfig) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or EMBEDDING_KEY not in space.spaces:
            raise ValueError(f"EmbeddingHistoryVecEnv needs a Dict observation space with an "
                             f"'{EMBEDDING_KEY}' key, got {space}")
        shape = space.spaces[EMBEDDING_KEY].shape
        assert shape is not None and len(shape) == 1
        self.history = EmbeddingHistory(venv.num_envs, int(shape[0]), cfg)
        parts = dict(space.spaces)
        parts[EMBEDDING_KEY] = stacked_space(int(shape[0]), cfg)
        super().__init__(venv, observation_space=spaces.Dict(parts))

    def reset(self) -> VecEnvObs:
        """Reset the envs; every memory starts from its first embedding."""
        obs = self.venv.reset()
        assert isinstance(obs, dict)
        self.history.start(obs[EMBEDDING_KEY])
        return {**obs, EMBEDDING_KEY: self.history.stacked()}

    def step_wait(self) -> VecEnvStepReturn:
        """Step the envs and stack the embeddings (terminal observations included)."""
        obs, rewards, dones, infos = self.venv.step_wait()
        assert isinstance(obs, dict)
        for i, info in enumerate(infos):
            last: dict[str, Any] | None = info.get("terminal_observation")
            if last is not None:
                info["terminal_observation"] = {
                    **last, EMBEDDING_KEY: self.history.stacked_with(i, last[EMBEDDING_KEY])}
        self.history.push(obs[EMBEDDING_KEY], starts=np.asarray(dones, bool))
        return {**obs, EMBEDDING_KEY: self.history.stacked()}, rewards, dones, infos


__all__ = ["EmbeddingHistory", "EmbeddingHistoryVecEnv", "EpisodeHistory", "stacked_space"]
