"""Expert-guided PPO: the labels reach the buffer, the policy ignores them, the expert
phase fits them, runs resume exactly and save a deployable agent."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from stable_baselines3.common.logger import configure

import envs  # noqa: F401  (registers the ids)
from agents.config import load_train_config
from agents.expert_labels import EXPERT_KEY
from agents.guided_ppo import GuidedPPO
from agents.load import load_agent
from agents.train import build_model, build_vec_env, train
from common.config import ConfigError

TINY = ["obs=privileged", "ppo.n_steps=16", "ppo.batch_size=16", "ppo.n_epochs=2",
        "checkpoint_every_steps=1", "num_envs=2",
        "env_overrides=[traffic.num_vehicles=4]", "ppo.expert_coef=1.0"]


def _model(overrides: list[str], tmp_path: Path) -> tuple[GuidedPPO, Any]:
    cfg = load_train_config(overrides=[*TINY, *overrides])
    venv = build_vec_env(cfg, torch.device("cpu"))
    model = build_model(cfg, venv, torch.device("cpu"), tmp_path / "tb")
    assert isinstance(model, GuidedPPO)
    model.set_logger(configure(None, []))
    return model, venv


def _buffer_obs(model: GuidedPPO) -> dict[str, torch.Tensor]:
    return next(iter(model.rollout_buffer.get(model.n_steps * model.n_envs))).observations


def test_the_policy_does_not_read_the_labels(tmp_path: Path) -> None:
    model, venv = _model([], tmp_path)
    try:
        obs, _ = model.policy.obs_to_tensor(venv.reset())
        probs = model.policy.get_distribution(obs).distribution.probs
        assert isinstance(obs, dict)
        changed = {**obs, EXPERT_KEY: (obs[EXPERT_KEY] + 3) % 6}
        assert torch.equal(probs, model.policy.get_distribution(changed).distribution.probs)
        assert EXPERT_KEY not in model.policy.features_extractor.keys
    finally:
        venv.close()


def test_the_expert_phase_fits_the_labels_of_the_rollout(tmp_path: Path) -> None:
    model, venv = _model(["ppo.expert_action_weights=[1,1,1,1,3,10]"], tmp_path)
    try:
        model.expert_coef = 0.0  # learn: one rollout and a plain PPO update
        model.learn(32)
        batch = _buffer_obs(model)
        labels = batch[EXPERT_KEY].long().flatten()
        assert set(labels.tolist()) <= set(range(6))
        # The weighted loss is the weighted mean of the labels' negative log-likelihoods.
        with torch.no_grad():
            loss, agree = model._expert_loss(batch)
            dist = model.policy.get_distribution(batch)
            nll = -dist.log_prob(labels)
            w = torch.tensor([1, 1, 1, 1, 3, 10], dtype=torch.float32)[labels]
            assert float(loss) == pytest.approx(float((w * nll).sum() / w.sum()), rel=1e-5)
            assert agree == pytest.approx(float((dist.mode() == labels).float().mean()))
        model.expert_coef = 1.0
        for _ in range(30):
            model.imitate()
        with torch.no_grad():
            after, agree_after = model._expert_loss(batch)
        assert float(after) < 0.5 * float(loss)
        assert agree_after > agree
    finally:
        venv.close()


def test_the_expert_phase_waits_while_the_actor_is_frozen(tmp_path: Path) -> None:
    model, venv = _model([], tmp_path)
    try:
        model.expert_coef = 0.0
        model.learn(32)
        before = {k: v.clone() for k, v in model.policy.state_dict().items()}
        for param in model.policy.action_net.parameters():
            param.requires_grad_(False)
        model.expert_coef = 1.0
        model.imitate()
        for key, value in model.policy.state_dict().items():
            assert torch.equal(value, before[key]), key
    finally:
        venv.close()


def test_the_memory_keeps_past_rollouts_as_the_envs_produced_them(tmp_path: Path) -> None:
    model, venv = _model(["ppo.expert_memory=40"], tmp_path)
    try:
        assert model.memory is not None
        model.learn(32)  # one rollout: 16 steps x 2 envs
        memory = model.memory
        assert (memory.size, memory.position) == (32, 32)
        rollout = _buffer_obs(model)
        # Raw in the memory, normalised in the buffer (which SB3 has reordered).
        raw = venv.unnormalize_obs({k: v.numpy() for k, v in rollout.items()})
        for key, value in raw.items():
            assert sorted(map(tuple, memory.arrays[key][:32].tolist())) == \
                sorted(map(tuple, np.asarray(value, np.float32).tolist())), key
        assert not np.allclose(memory.arrays["state"][:32], rollout["state"].numpy())
        model.learn(32, reset_num_timesteps=False)  # a second rollout wraps the ring
        assert (memory.size, memory.position) == (40, 24)
        # Drawn states reach the policy normalised with the current statistics.
        drawn = model._memory_batch(np.random.default_rng(0), 16)
        assert drawn[EXPERT_KEY].shape == (16, 1)
        normalised = venv.normalize_obs(model.memory.sample(np.random.default_rng(0), 16))
        for key, value in drawn.items():
            np.testing.assert_allclose(value.numpy(), normalised[key], rtol=1e-6)
    finally:
        venv.close()


def test_the_expert_phase_takes_as_many_remembered_states_as_rollout_ones(
        tmp_path: Path) -> None:
    model, venv = _model(["ppo.expert_memory=64"], tmp_path)
    try:
        model.learn(32)
        sizes: list[int] = []
        real = model._expert_loss

        def spy(observations: dict[str, torch.Tensor]) -> tuple[torch.Tensor, float]:
            sizes.append(len(observations[EXPERT_KEY]))
            return real(observations)

        model._expert_loss = spy  # type: ignore[method-assign]
        model.imitate()
        assert sizes == [32, 32]  # two minibatches of 16 rollout + 16 remembered states
    finally:
        venv.close()


@pytest.mark.parametrize("memory", [0, 40])
def test_a_guided_run_resumes_exactly_and_saves_an_agent_without_labels(
        tmp_path: Path, memory: int) -> None:
    full = load_train_config(overrides=[*TINY, "total_timesteps=64",
                                        f"ppo.expert_memory={memory}"])
    part = load_train_config(overrides=[*TINY, "total_timesteps=32",
                                        f"ppo.expert_memory={memory}"])
    train(full, tmp_path / "a", resume=False, progress=False)
    train(part, tmp_path / "b", resume=False, progress=False)
    assert train(full, tmp_path / "b", resume=True, progress=False).resumed_from == 32
    a = load_file(str(tmp_path / "a" / "final" / "policy.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "policy.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    # Without the expert phase the same run ends elsewhere: the phase did something.
    plain = load_train_config(overrides=[*TINY, "total_timesteps=64", "ppo.expert_coef=0"])
    if memory:  # and without the memory it ends elsewhere too
        bare = load_train_config(overrides=[*TINY, "total_timesteps=64"])
        train(bare, tmp_path / "d", resume=False, progress=False)
        d = load_file(str(tmp_path / "d" / "final" / "policy.safetensors"))
        assert any(not torch.equal(a[k], d[k]) for k in a)
    train(plain, tmp_path / "c", resume=False, progress=False)
    c = load_file(str(tmp_path / "c" / "final" / "policy.safetensors"))
    assert any(not torch.equal(a[k], c[k]) for k in a)
    meta = json.loads((tmp_path / "a" / "final" / "agent.json").read_text())
    assert EXPERT_KEY not in meta["observation_space"]["spaces"]
    assert EXPERT_KEY not in meta["normalization"]["obs"]
    agent = load_agent(tmp_path / "a" / "final")
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=4", "sensors.state=true",
                              "sensors.camera=false"])
    obs, _ = env.reset(seed=200_004)
    assert env.action_space.contains(agent.act(obs, env))
    env.close()


def test_guided_ppo_with_a_privileged_critic_saves_the_bare_actor(tmp_path: Path) -> None:
    from perception.checkpoint import save_encoder
    from perception.encoders import EncoderConfig, build_encoder

    enc = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                       EncoderConfig("nature_cnn"))
    cfg = load_train_config(overrides=[
        *TINY, "obs=frozen", f"encoder={enc}", "ppo.privileged_critic=true",
        "ppo.embedding_l2=0.3", "total_timesteps=32", "ppo.n_steps=8", "ppo.batch_size=8"])
    result = train(cfg, tmp_path / "run", resume=False, progress=False)
    spaces_ = json.loads((result.agent_dir / "agent.json").read_text())[
        "observation_space"]["spaces"]
    assert set(spaces_) == {"embedding", "measurements", "decision"}
    agent = load_agent(result.agent_dir)
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=4"])
    obs, _ = env.reset(seed=200_005)
    assert env.action_space.contains(agent.act(obs, env))
    env.close()


def test_bad_guidance_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="ppo.expert_coef must be >= 0"):
        load_train_config(overrides=["ppo.expert_coef=-1"])
    with pytest.raises(ConfigError, match="ppo.expert_epochs must be >= 1"):
        load_train_config(overrides=["ppo.expert_epochs=0"])
    with pytest.raises(ConfigError, match="ppo.expert_action_weights needs action_mode "
                                          "'behavior' and one weight per meta-action"):
        load_train_config(overrides=["ppo.expert_action_weights=[1,2]"])
    with pytest.raises(ConfigError, match="ppo.expert_action_weights must all be > 0"):
        load_train_config(overrides=["ppo.expert_action_weights=[1,1,1,1,0,1]"])
    with pytest.raises(ConfigError, match="ppo.expert_memory must be >= 0, got -1"):
        load_train_config(overrides=["ppo.expert_memory=-1", "ppo.expert_coef=1"])
    with pytest.raises(ConfigError, match=r"ppo.expert_memory needs ppo.expert_coef > 0"):
        load_train_config(overrides=["ppo.expert_memory=100"])
    env = gym.make("bulletdrive/Highway-v0",
                   overrides=["sensors.state=true", "sensors.camera=false"])
    with pytest.raises(ValueError, match="guided PPO needs the expert's action"):
        GuidedPPO("MultiInputPolicy", env, n_steps=8, batch_size=8)
    env.close()
