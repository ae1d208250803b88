"""PPO with a privileged critic: the actor never sees ``state``, the critic does, the saved
agent is a plain policy, and a behaviour-cloned actor starts it."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces
from safetensors.torch import load_file
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

import envs  # noqa: F401  (registers the ids)
from agents.config import load_train_config
from agents.load import load_agent
from agents.privileged_critic import PrivilegedCriticPolicy
from agents.train import actor_parameters, train
from common.config import ConfigError
from perception.checkpoint import save_encoder
from perception.encoders import EncoderConfig, build_encoder

SPACE = spaces.Dict({"embedding": spaces.Box(-1, 1, (4,), np.float32),
                     "measurements": spaces.Box(-1, 1, (3,), np.float32),
                     "state": spaces.Box(-1, 1, (5,), np.float32)})


def _obs(batch: int, seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {k: torch.rand((batch, *s.shape), generator=g)  # type: ignore[misc]
            for k, s in SPACE.spaces.items()}


def test_actor_ignores_the_privileged_state_and_the_critic_reads_it() -> None:
    policy = PrivilegedCriticPolicy(SPACE, spaces.Discrete(6), lambda _: 1e-3,
                                    net_arch=[16, 16], critic_arch=[8])
    obs = _obs(5, 0)
    other = dict(obs, state=obs["state"] + 1.0)
    with torch.no_grad():
        dist_a = policy.get_distribution(obs).distribution.probs  # type: ignore[union-attr]
        dist_b = policy.get_distribution(other).distribution.probs  # type: ignore[union-attr]
        values_a, values_b = policy.predict_values(obs), policy.predict_values(other)
        _, values_f, _ = policy(obs)
        values_e, _, _ = policy.evaluate_actions(obs, torch.zeros(5))
    assert torch.equal(dist_a, dist_b)  # the actor does not see the state
    assert not torch.allclose(values_a, values_b)  # the critic does
    assert torch.equal(values_a, values_f) and torch.equal(values_a, values_e)
    # The critic is trained by the optimiser and is not part of the actor.
    optimised = {id(p) for group in policy.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in optimised for p in policy.critic.parameters())
    # The deployable actor is a plain SB3 policy without the privileged key.
    plain = MultiInputActorCriticPolicy(policy.actor_observation_space, spaces.Discrete(6),
                                        lambda _: 1e-3, net_arch=[16, 16])
    plain.load_state_dict(policy.actor_state_dict())
    with torch.no_grad():
        probs = plain.get_distribution(
            {k: v for k, v in obs.items() if k != "state"}).distribution.probs  # type: ignore[union-attr]
    assert torch.allclose(probs, dist_a)
    with pytest.raises(ValueError, match="needs the 'state' observation"):
        PrivilegedCriticPolicy(spaces.Dict({"measurements": SPACE["measurements"]}),
                               spaces.Discrete(6), lambda _: 1e-3)


def test_privileged_critic_ppo_from_behaviour_cloning(tmp_path: Path) -> None:
    enc_dir = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                           EncoderConfig("nature_cnn"))
    common = [f"encoder={enc_dir}", "num_envs=1", "env_overrides=[traffic.num_vehicles=2]"]
    bc = train(load_train_config(overrides=[
        *common, "algo=bc", "bc.episodes=1", "bc.max_steps=12", "bc.epochs=1"]),
        tmp_path / "bc", progress=False)
    cfg = load_train_config(overrides=[
        *common, "ppo.privileged_critic=true", "ppo.n_steps=8", "ppo.batch_size=8",
        "ppo.n_epochs=1", "total_timesteps=16", "ppo.value_warmup_steps=8",
        f"init_from={bc.agent_dir}"])
    result = train(cfg, tmp_path / "ppo", resume=False, progress=False)
    assert result.num_timesteps == 16
    meta = json.loads((result.agent_dir / "agent.json").read_text())
    assert "state" not in meta["observation_space"]["spaces"]
    assert "state" not in meta["normalization"]["obs"]
    weights = load_file(str(result.agent_dir / "policy.safetensors"))
    assert not any(k.startswith("critic.") for k in weights)
    # The saved actor drives an env without the privileged sensor.
    agent = load_agent(result.agent_dir)
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=2"])
    obs, _ = env.reset(seed=200_000)
    assert "state" not in obs and env.action_space.contains(agent.act(obs, env))
    env.close()
    with pytest.raises(ConfigError, match="privileged_critic works with obs 'frozen' only"):
        load_train_config(overrides=["obs=scratch", "ppo.privileged_critic=true"])


def test_value_warmup_leaves_the_privileged_critic_trainable() -> None:
    class Model:
        policy = PrivilegedCriticPolicy(SPACE, spaces.Discrete(6), lambda _: 1e-3,
                                        net_arch=[8])

    actor = {id(p) for p in actor_parameters(Model())}  # type: ignore[arg-type]
    assert not any(id(p) in actor for p in Model.policy.critic.parameters())
    assert any(id(p) in actor for p in Model.policy.action_net.parameters())
