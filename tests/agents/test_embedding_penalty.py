"""The embedding penalty: it finds the embedding's columns behind either extractor, its
gradient hook is the gradient of the L2 term, and a fresh PPO actor starts blind to the
embedding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from agents.config import load_train_config
from agents.embedding_penalty import (
    add_embedding_l2_gradient,
    embedding_columns,
    embedding_weights,
    first_actor_layer,
)
from agents.load import load_agent
from agents.privileged_critic import PrivilegedCriticPolicy
from agents.train import train
from common.config import ConfigError
from perception.checkpoint import save_encoder
from perception.encoders import EncoderConfig, build_encoder


def box(n: int) -> spaces.Box:
    return spaces.Box(-1, 1, (n,), np.float32)


def test_the_columns_behind_either_extractor() -> None:
    plain = MultiInputActorCriticPolicy(
        spaces.Dict({"decision": box(3), "embedding": box(4), "lane_gaps": box(6)}),
        spaces.Discrete(6), lambda _: 1e-3, net_arch=[8])
    assert embedding_columns(plain) == slice(3, 7)
    # The privileged critic's actor leaves `state` out of its features.
    privileged = PrivilegedCriticPolicy(
        spaces.Dict({"decision": box(3), "embedding": box(4), "state": box(5)}),
        spaces.Discrete(6), lambda _: 1e-3, net_arch=[8], critic_arch=[8])
    assert embedding_columns(privileged) == slice(3, 7)
    assert first_actor_layer(privileged).in_features == 7
    none = MultiInputActorCriticPolicy(spaces.Dict({"measurements": box(3)}),
                                       spaces.Discrete(6), lambda _: 1e-3, net_arch=[8])
    with pytest.raises(ValueError, match="no 'embedding' input"):
        embedding_columns(none)


def test_the_hook_adds_the_gradient_of_the_l2_term() -> None:
    space = spaces.Dict({"decision": box(3), "embedding": box(4)})
    policy = MultiInputActorCriticPolicy(space, spaces.Discrete(6), lambda _: 1e-3,
                                         net_arch=[8])
    obs = {k: torch.rand(5, *s.shape) for k, s in space.spaces.items()}  # type: ignore[misc]
    actions = torch.arange(5)

    def grad() -> torch.Tensor:
        policy.zero_grad()
        _, log_prob, _ = policy.evaluate_actions(obs, actions)
        (-log_prob.mean()).backward()
        weight = first_actor_layer(policy).weight
        assert weight.grad is not None
        return weight.grad.clone()

    before = grad()
    handle = add_embedding_l2_gradient(policy, 0.3)
    after = grad()
    expected = before.clone()
    expected[:, 3:7] += 2.0 * 0.3 * embedding_weights(policy).detach()
    torch.testing.assert_close(after, expected)
    handle.remove()
    torch.testing.assert_close(grad(), before)


def test_a_fresh_ppo_actor_starts_blind_to_the_embedding(tmp_path: Path) -> None:
    enc_dir = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                           EncoderConfig("nature_cnn"))
    cfg = load_train_config(overrides=[
        f"encoder={enc_dir}", "num_envs=1", "env_overrides=[traffic.num_vehicles=2]",
        "ppo.n_steps=8", "ppo.batch_size=8", "ppo.n_epochs=1", "total_timesteps=8",
        "ppo.embedding_l2=0.3"])
    result = train(cfg, tmp_path / "ppo", resume=False, progress=False)
    policy = load_agent(result.agent_dir).policy
    # One small update from zero, with the penalty pulling back: barely off zero.
    assert float(embedding_weights(policy).detach().abs().max()) < 0.01
    assert float(first_actor_layer(policy).weight.detach().abs().max()) > 0.05
    with pytest.raises(ConfigError, match="ppo.embedding_l2 must be >= 0"):
        load_train_config(overrides=["ppo.embedding_l2=-0.1"])
    with pytest.raises(ConfigError, match="ppo.embedding_l2 penalises"):
        load_train_config(overrides=["obs=privileged", "ppo.embedding_l2=0.3"])
