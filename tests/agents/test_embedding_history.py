"""Embedding history: the stacked inputs in closed form, the VecEnv wrapper at episode
boundaries, and the same memory in training, behaviour cloning, resume and loaded agents."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from safetensors.torch import load_file
from stable_baselines3.common.vec_env import DummyVecEnv

import envs  # noqa: F401  (registers the ids)
from agents.bc import ObservationPath
from agents.config import HistoryConfig, TrainConfig, load_train_config
from agents.embedding_history import EmbeddingHistory, EmbeddingHistoryVecEnv
from agents.load import load_agent
from agents.train import train
from common.config import ConfigError
from perception.checkpoint import save_encoder
from perception.encoders import EncoderConfig, build_encoder


def _emb(value: float, dim: int = 2) -> np.ndarray:
    return np.full(dim, value, np.float32)


def test_stacked_inputs_are_the_embeddings_stride_apart_newest_first() -> None:
    cfg = HistoryConfig(frames=3, stride=2)
    assert cfg.span == 5
    memory = EmbeddingHistory(2, 2, cfg)
    memory.start(np.stack([_emb(0), _emb(100)]))
    # At the start the past is the first embedding repeated.
    np.testing.assert_array_equal(memory.stacked()[0], np.zeros(6))
    for t in range(1, 6):
        memory.push(np.stack([_emb(t), _emb(100 + t)]))
    # Decision 5: embeddings of decisions 5, 3, 1.
    np.testing.assert_array_equal(memory.stacked()[0], [5, 5, 3, 3, 1, 1])
    np.testing.assert_array_equal(memory.stacked()[1], [105, 105, 103, 103, 101, 101])
    # Decision 6 would be 6, 4, 2, without changing the memory.
    np.testing.assert_array_equal(memory.stacked_with(0, _emb(6)), [6, 6, 4, 4, 2, 2])
    np.testing.assert_array_equal(memory.stacked()[0], [5, 5, 3, 3, 1, 1])
    # Env 1 starts a new episode: its past is forgotten, env 0's is not.
    memory.push(np.stack([_emb(6), _emb(200)]), starts=np.array([False, True]))
    np.testing.assert_array_equal(memory.stacked()[0], [6, 6, 4, 4, 2, 2])
    np.testing.assert_array_equal(memory.stacked()[1], [200] * 6)
    memory.push(np.stack([_emb(7), _emb(201)]))
    np.testing.assert_array_equal(memory.stacked()[1], [201, 201, 200, 200, 200, 200])


class _CountingEnv(gym.Env[Any, Any]):
    """Embedding = (episode, decision); episodes last three decisions."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict({
            "embedding": spaces.Box(-np.inf, np.inf, (2,), np.float32),
            "measurements": spaces.Box(-1, 1, (1,), np.float32)})
        self.action_space = spaces.Discrete(2)
        self.episode, self.t = -1, 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"embedding": np.array([self.episode, self.t], np.float32),
                "measurements": np.zeros(1, np.float32)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        super().reset(seed=seed)
        self.episode, self.t = self.episode + 1, 0
        return self._obs(), {}

    def step(self, action: int) -> tuple[dict[str, np.ndarray], float, bool, bool,
                                         dict[str, Any]]:
        self.t += 1
        return self._obs(), 0.0, False, self.t == 3, {}


def test_vec_env_wrapper_stacks_within_episodes_and_for_terminal_observations() -> None:
    venv = EmbeddingHistoryVecEnv(DummyVecEnv([_CountingEnv]), HistoryConfig(frames=2))
    assert venv.observation_space["embedding"].shape == (4,)  # type: ignore[index]
    obs = venv.reset()
    assert isinstance(obs, dict)
    np.testing.assert_array_equal(obs["embedding"][0], [0, 0, 0, 0])
    seen = []
    for _ in range(4):
        venv.step_async(np.zeros(1, int))
        obs, _, dones, infos = venv.step_wait()
        assert isinstance(obs, dict)
        seen.append(obs["embedding"][0].tolist())
        if dones[0]:
            # The ended episode's last observation carries that episode's past.
            np.testing.assert_array_equal(infos[0]["terminal_observation"]["embedding"],
                                          [0, 3, 0, 2])
            assert "measurements" in infos[0]["terminal_observation"]
    assert seen == [[0, 1, 0, 0], [0, 2, 0, 1], [1, 0, 1, 0], [1, 1, 1, 0]]


def test_history_config_is_checked() -> None:
    with pytest.raises(ConfigError, match="history.frames and history.stride must be >= 1"):
        load_train_config(overrides=["history.frames=0"])
    with pytest.raises(ConfigError, match="history.frames > 1 works with obs 'frozen' only"):
        TrainConfig(obs="scratch", history=HistoryConfig(frames=2))


def test_memory_through_bc_ppo_resume_and_a_loaded_agent(tmp_path: Path) -> None:
    enc = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                       EncoderConfig("nature_cnn"))
    common = [f"encoder={enc}", "history.frames=3", "history.stride=2",
              "env_overrides=[traffic.num_vehicles=4]"]
    bc = train(load_train_config(overrides=[
        *common, "algo=bc", "bc.episodes=1", "bc.max_steps=12", "bc.epochs=1"]),
        tmp_path / "bc", progress=False)
    tiny = [*common, "ppo.n_steps=16", "ppo.batch_size=16", "ppo.n_epochs=1", "num_envs=1",
            "checkpoint_every_steps=1", f"init_from={bc.agent_dir}"]
    full = load_train_config(overrides=[*tiny, "total_timesteps=48"])
    train(full, tmp_path / "a", resume=False, progress=False)
    train(load_train_config(overrides=[*tiny, "total_timesteps=16"]), tmp_path / "b",
          resume=False, progress=False)
    # The checkpoint carries the past embeddings of the episode in progress.
    saved = load_file(str(tmp_path / "b" / "checkpoint" / "train_state.safetensors"))
    assert saved["history"].shape[:2] == (1, 5)
    train(full, tmp_path / "b", resume=True, progress=False)
    a = load_file(str(tmp_path / "a" / "final" / "policy.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "policy.safetensors"))
    for key in a:
        assert bool((a[key] == b[key]).all()), key
    meta = json.loads((tmp_path / "a" / "final" / "agent.json").read_text())
    dim = int(saved["history"].shape[2])
    assert meta["observation_space"]["spaces"]["embedding"]["shape"] == [3 * dim]

    # A loaded agent builds the same inputs as behaviour cloning's observation path.
    agent = load_agent(tmp_path / "a" / "final")
    assert agent.encoder is not None and agent.normalization is not None
    d = agent.encoder.embed_dim
    stats = agent.normalization["obs"]["embedding"]
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=4"])
    assert isinstance(env.observation_space, spaces.Dict)
    path = ObservationPath(full, env.observation_space, agent.encoder.device)
    for episode in range(2):
        obs, _ = env.reset(seed=200_000 + episode)
        agent.reset(200_000 + episode)
        path.start_episode()
        firsts = []
        for _ in range(4):
            mine = agent.observation(obs)
            raw = path(obs)["embedding"]
            firsts.append(raw[:d])
            expected = np.clip((raw - np.asarray(stats["mean"])) / np.sqrt(
                np.asarray(stats["var"]) + agent.normalization["epsilon"]), -10, 10)
            np.testing.assert_allclose(mine["embedding"][0], expected, rtol=1e-5, atol=1e-5)
            action, _ = agent.policy.predict(mine, deterministic=True)
            assert env.action_space.contains(int(action[0]))
            obs, *_ = env.step(int(action[0]))
        # Decision 3 sees decisions 3, 1 and (before the episode's start) 0.
        np.testing.assert_array_equal(raw[d:2 * d], firsts[1])
        np.testing.assert_array_equal(raw[2 * d:], firsts[0])
    env.close()
