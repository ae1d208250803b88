"""Training: config checks, exact resume, agents on disk, behaviour cloning."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from safetensors.torch import load_file

import envs  # noqa: F401  (registers the ids)
from agents.bc import DATASET_FILE, REASON_COLUMNS
from agents.config import TrainConfig, load_train_config
from agents.label_study import load_dataset
from agents.load import AgentLoadError, load_agent
from agents.train import train
from common.config import ConfigError
from envs.config import load_env_config
from envs.driving_env import MEASUREMENT_KEYS
from perception.checkpoint import save_encoder
from perception.encoders import EncoderConfig, build_encoder

TINY = ["obs=privileged", "ppo.n_steps=16", "ppo.batch_size=16", "ppo.n_epochs=2",
        "checkpoint_every_steps=1", "num_envs=1",
        "env_overrides=[traffic.num_vehicles=4]"]


def test_shipped_yaml_equals_defaults() -> None:
    assert load_train_config() == TrainConfig()


def test_the_merge_recipe_configs_chain_and_their_env_overrides_load() -> None:
    bc = load_train_config("bc_merge")
    ppo = load_train_config("ppo_merge")
    assert (bc.algo, ppo.algo) == ("bc", "ppo")
    # The PPO recipe starts from where `--out runs/bc_merge` writes the clone, on the
    # same encoder and the same policy inputs.
    assert ppo.init_from == "runs/bc_merge/final"
    assert ppo.encoder == bc.encoder and ppo.lane_gaps and bc.lane_gaps
    assert ppo.ppo.expert_coef > 0 and ppo.ppo.privileged_critic
    assert bc.bc.focus_episodes > 0 and bc.bc.dagger_iterations > 0
    # Both runs' env overrides (and the focus variant's) are valid env keys.
    focus = load_env_config(overrides=[*bc.env_overrides, *bc.bc.focus_overrides])
    assert focus.ramp_start_prob == 1.0 and focus.traffic.num_vehicles == 32
    assert load_env_config(overrides=list(ppo.env_overrides)).reward.collision == -30.0


def test_bad_configs_are_rejected_with_the_choices() -> None:
    with pytest.raises(ConfigError, match="algo 'sac' needs a continuous action mode"):
        TrainConfig(algo="sac", action_mode="behavior", obs="privileged")
    with pytest.raises(ConfigError, match="needs an encoder checkpoint"):
        TrainConfig(obs="frozen", encoder=None)
    with pytest.raises(ConfigError, match="unknown env id 'Moon-v0'"):
        TrainConfig(env_id="Moon-v0", obs="privileged")
    with pytest.raises(ConfigError, match="valid keys"):
        load_train_config(overrides=["learning_rate=1"])
    with pytest.raises(ConfigError, match="ppo.target_kl must be > 0"):
        load_train_config(overrides=["ppo.target_kl=0"])
    with pytest.raises(ConfigError, match=r"bc.val_fraction must be in \[0, 1\)"):
        load_train_config(overrides=["bc.val_fraction=1.5"])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path: Path) -> None:
    full = load_train_config(overrides=[*TINY, "total_timesteps=48"])
    part = load_train_config(overrides=[*TINY, "total_timesteps=16"])
    train(full, tmp_path / "a", resume=False, progress=False)
    train(part, tmp_path / "b", resume=False, progress=False)
    result = train(full, tmp_path / "b", resume=True, progress=False)
    assert result.resumed_from == 16 and result.num_timesteps == 48
    a = load_file(str(tmp_path / "a" / "final" / "policy.safetensors"))
    b = load_file(str(tmp_path / "b" / "final" / "policy.safetensors"))
    assert a.keys() == b.keys()
    for key in a:
        assert bool((a[key] == b[key]).all()), key
    other = load_train_config(overrides=[*TINY, "total_timesteps=48", "ppo.learning_rate=0.01"])
    with pytest.raises(ValueError, match="cannot resume: the run's config differs in ppo"):
        train(other, tmp_path / "b", resume=True, progress=False)


def test_anneal_lr_falls_linearly_over_the_whole_run(tmp_path: Path) -> None:
    import torch
    from stable_baselines3.common.logger import configure

    from agents.train import build_model, build_vec_env

    cfg = load_train_config(overrides=[*TINY, "total_timesteps=48", "ppo.anneal_lr=true",
                                       "ppo.learning_rate=0.001"])
    venv = build_vec_env(cfg, torch.device("cpu"))
    try:
        model = build_model(cfg, venv, torch.device("cpu"), tmp_path / "tb")
        # Whatever progress SB3 passes (it restarts with each learn call), the rate
        # follows the run's decision count: 0.001 at 0, 0.00075 at 12, 0 at the end.
        for done, rate in ((0, 1e-3), (12, 7.5e-4), (48, 0.0), (60, 0.0)):
            model.num_timesteps = done
            assert model.lr_schedule(1.0) == pytest.approx(rate)
        model.num_timesteps = 12
        model.set_logger(configure(None, []))
        model._update_learning_rate(model.policy.optimizer)
        assert model.policy.optimizer.param_groups[0]["lr"] == pytest.approx(7.5e-4)
        constant = build_model(load_train_config(overrides=[*TINY, "ppo.learning_rate=0.001"]),
                               venv, torch.device("cpu"), tmp_path / "tb")
        constant.num_timesteps = 12
        assert constant.lr_schedule(0.5) == pytest.approx(1e-3)
    finally:
        venv.close()


def test_trained_agent_loads_by_path_and_checks_its_files(tmp_path: Path) -> None:
    enc_dir = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                           EncoderConfig("nature_cnn"))
    cfg = load_train_config(overrides=[
        "obs=frozen", f"encoder={enc_dir}", "ppo.n_steps=8", "ppo.batch_size=8",
        "ppo.n_epochs=1", "num_envs=1", "total_timesteps=8",
        "env_overrides=[traffic.num_vehicles=2]"])
    result = train(cfg, tmp_path / "run", resume=False, progress=False)
    agent = load_agent(result.agent_dir)
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=2"])
    obs, _ = env.reset(seed=200_000)
    action = agent.act(obs, env)
    assert env.action_space.contains(action)
    env.close()
    # The encoder checkpoint changed under the agent: refused.
    save_encoder(enc_dir, build_encoder("nature_cnn"), EncoderConfig("nature_cnn"))
    with pytest.raises(AgentLoadError, match="does not match the one this agent was trained"):
        load_agent(result.agent_dir)
    with pytest.raises(AgentLoadError, match="no agent at"):
        load_agent(tmp_path / "missing")
    (result.agent_dir / "agent.json").write_text("{not json")
    with pytest.raises(AgentLoadError, match="corrupt"):
        load_agent(result.agent_dir)


def test_behaviour_cloning_with_dagger_writes_a_loadable_agent(tmp_path: Path) -> None:
    cfg = load_train_config(overrides=[
        "algo=bc", "obs=privileged", "bc.episodes=2", "bc.max_steps=20",
        "bc.dagger_iterations=1", "bc.dagger_episodes=1", "bc.epochs=2",
        "bc.save_dataset=true", "bc.disagreement_weight=3"])
    result = train(cfg, tmp_path / "bc", progress=False)
    meta = json.loads((result.agent_dir / "agent.json").read_text())
    assert meta["algo"] == "bc" and meta["bc_samples"] == result.num_timesteps >= 40
    assert sum(meta["bc_label_counts"].values()) == meta["bc_samples"]
    # The labelled decisions, with the expert's reasons, for offline studies.
    data = load_dataset(tmp_path / "bc" / DATASET_FILE)
    rows = meta["bc_samples"]
    assert data["label"].shape == (rows,) and data["state"].shape[0] == rows
    assert data["expert_reasons"].shape == (rows, len(REASON_COLUMNS))
    assert np.all(np.isfinite(data["expert_reasons"]))
    assert set(np.unique(data["episode"]).tolist()) == {0, 1, 2}  # 2 expert + 1 DAgger
    np.testing.assert_array_equal(np.bincount(data["label"], minlength=6),
                                  list(meta["bc_label_counts"].values()))
    # Only the DAgger episode's rows can be the learner's mistakes.
    assert not data["learner_differs"][data["episode"] < 2].any()
    assert meta["bc_learner_disagreements"] == int(data["learner_differs"].sum())
    agent = load_agent(result.agent_dir)
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["sensors.state=true", "sensors.camera=false"])
    obs, _ = env.reset(seed=200_001)
    assert 0 <= agent.act(obs, env) < 6
    env.close()


def test_focus_episodes_are_short_extra_episodes_in_the_variant(tmp_path: Path) -> None:
    # Ordinary episodes on the highway, focus episodes (expert and DAgger) starting on
    # the on-ramp.
    cfg = load_train_config(overrides=[
        "algo=bc", "obs=privileged", "bc.episodes=1", "bc.max_steps=12",
        "bc.dagger_iterations=1", "bc.dagger_episodes=1", "bc.epochs=1",
        "env_overrides=[ramp_start_prob=0.0]", "bc.focus_overrides=[ramp_start_prob=1.0]",
        "bc.focus_episodes=2", "bc.focus_dagger_episodes=1", "bc.focus_max_steps=5",
        "bc.save_dataset=true"])
    result = train(cfg, tmp_path / "bc", progress=False)
    data = load_dataset(tmp_path / "bc" / DATASET_FILE)
    lengths = np.bincount(data["episode"])
    # Episode order: ordinary expert, 2 focus expert, then the DAgger round's ordinary
    # and focus episodes.
    np.testing.assert_array_equal(lengths, [12, 5, 5, 12, 5])
    # At the first decision the next manoeuvre is the merge, a ramp's length ahead
    # (under 300 m), on the ramp, and the end of the route (over 1 km) on the highway.
    distance = MEASUREMENT_KEYS.index("distance_to_manoeuvre_m")
    first_rows = data["measurements"][np.cumsum([0, *lengths[:-1]]), distance]
    np.testing.assert_array_equal(first_rows < 300.0, [False, True, True, False, True])
    assert np.all((first_rows < 300.0) | (first_rows > 1000.0))
    assert json.loads((result.agent_dir / "agent.json").read_text())["bc_samples"] == 39


@pytest.mark.parametrize(("overrides", "message"), [
    (["bc.focus_overrides=[ramp_start_prob=1.0]"], "bc.focus_overrides needs bc.focus_episodes"),
    (["bc.focus_dagger_episodes=2"], "bc.focus_dagger_episodes needs DAgger rounds"),
    (["bc.focus_episodes=-1"], "must be >= 0"),
    # Bad env keys are refused when the config is built, before a run writes anything.
    (["bc.focus_overrides=[nope=1]", "bc.focus_episodes=1"],
     "bc.focus_overrides: unknown config key 'nope'; valid keys"),
    (["env_overrides=[traffic.nope=1]"], "env_overrides: .*unknown config key"),
])
def test_focus_options_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(overrides=overrides)


def test_ppo_starts_from_a_behaviour_cloning_agent(tmp_path: Path) -> None:
    bc = train(load_train_config(overrides=[
        "algo=bc", "obs=privileged", "bc.episodes=1", "bc.max_steps=20", "bc.epochs=1"]),
        tmp_path / "bc", progress=False)
    result = train(load_train_config(overrides=[*TINY, "total_timesteps=16",
                                                f"init_from={bc.agent_dir}"]),
                   tmp_path / "ppo", resume=False, progress=False)
    assert result.num_timesteps == 16
    # The cloned policy keeps the observation statistics it was fitted to.
    bc_stats = json.loads((bc.agent_dir / "agent.json").read_text())["normalization"]["obs"]
    ppo_stats = json.loads((result.agent_dir / "agent.json").read_text())["normalization"]["obs"]
    for key, stats in bc_stats.items():
        assert ppo_stats[key]["mean"] == pytest.approx(stats["mean"])
        assert ppo_stats[key]["var"] == pytest.approx(stats["var"])
    with pytest.raises(ValueError, match="init_from .* it was trained with obs 'privileged'"):
        train(load_train_config(overrides=[
            "obs=scratch", "num_envs=1", "total_timesteps=8", "ppo.n_steps=8",
            "ppo.batch_size=8", f"init_from={bc.agent_dir}"]),
            tmp_path / "bad", resume=False, progress=False)


@pytest.mark.parametrize("overrides", [
    ["obs=scratch", "ppo.n_steps=8", "ppo.batch_size=8", "ppo.n_epochs=1"],
    ["algo=sac", "action_mode=trajectory", "obs=privileged", "sac.learning_starts=4",
     "sac.batch_size=8"],
])
def test_image_path_and_sac_train_checkpoint_and_load(overrides: list[str],
                                                      tmp_path: Path) -> None:
    cfg = load_train_config(overrides=[*overrides, "num_envs=1", "total_timesteps=12",
                                       "checkpoint_every_steps=1",
                                       "env_overrides=[traffic.num_vehicles=2]"])
    result = train(cfg, tmp_path / "run", resume=False, progress=False)
    assert (tmp_path / "run" / "checkpoint" / "train_state.json").is_file()
    agent = load_agent(result.agent_dir)
    extra = ["sensors.state=true", "sensors.camera=false"] if "obs=privileged" in overrides \
        else []
    env = gym.make("bulletdrive/Highway-v0", action_mode=cfg.action_mode,
                   overrides=["traffic.num_vehicles=2", *extra])
    obs, _ = env.reset(seed=200_002)
    assert env.action_space.contains(agent.act(obs, env))
    env.close()


def test_a_camera_and_lidar_agent_sees_the_ranges_in_training_and_evaluation(
        tmp_path: Path) -> None:
    from evaluation.runner import resolve_agent

    enc = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                       EncoderConfig("nature_cnn"))
    cfg = load_train_config(overrides=[
        "algo=bc", f"encoder={enc}", "bc.episodes=1", "bc.max_steps=10", "bc.epochs=1",
        "env_overrides=[traffic.num_vehicles=4,sensors.lidar=true]"])
    result = train(cfg, tmp_path / "bc", progress=False)
    meta = json.loads((result.agent_dir / "agent.json").read_text())
    rays = meta["observation_space"]["spaces"]["lidar"]["shape"]
    assert rays == [192] and "lidar" in meta["normalization"]["obs"]
    # Evaluation turns the agent's lidar on (its observation overrides travel with it).
    spec = resolve_agent(str(result.agent_dir))
    assert "sensors.lidar=true" in spec.env_overrides
    agent = load_agent(result.agent_dir)
    env = gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                   overrides=["traffic.num_vehicles=4", *spec.env_overrides])
    obs, _ = env.reset(seed=200_003)
    assert agent.observation(obs)["lidar"].shape == (1, 192)
    assert env.action_space.contains(agent.act(obs, env))
    env.close()


@pytest.mark.parametrize(("presence", "rear_closing"), [(False, False), (True, False),
                                                      (True, True)])
def test_a_lane_gaps_agent_measures_them_itself_in_evaluation(tmp_path: Path, presence: bool,
                                                              rear_closing: bool) -> None:
    from agents.embedding_penalty import embedding_weights
    from planning.lane_gaps import FEATURES, PRESENCE_FEATURES, REAR_CLOSING_FEATURES, LaneGaps

    enc = save_encoder(tmp_path / "enc", build_encoder("nature_cnn"),
                       EncoderConfig("nature_cnn"))
    overrides = ["traffic.num_vehicles=4", "sensors.lidar=true"]
    cfg = load_train_config(overrides=[
        "algo=bc", f"encoder={enc}", "bc.episodes=1", "bc.max_steps=10", "bc.epochs=1",
        "lane_gaps=true", f"env_overrides=[{','.join(overrides)}]", "bc.embedding_l2=0.3",
        f"lane_presence={presence}", f"lane_rear_closing={rear_closing}"])
    result = train(cfg, tmp_path / "bc", progress=False)
    meta = json.loads((result.agent_dir / "agent.json").read_text())
    spaces_ = meta["observation_space"]["spaces"]
    width = (len(FEATURES) + (len(PRESENCE_FEATURES) if presence else 0)
             + (len(REAR_CLOSING_FEATURES) if rear_closing else 0))
    assert spaces_["lane_gaps"]["shape"] == [width] and "lidar" not in spaces_
    assert "lane_gaps" in meta["normalization"]["obs"]
    # With bc.embedding_l2 the actor starts blind to the embedding, and one small fit
    # barely moves it off zero; the lane gaps' columns keep their initial weights.
    policy = load_agent(result.agent_dir).policy
    first = policy.mlp_extractor.policy_net[0].weight.detach()
    assert float(embedding_weights(policy).detach().abs().max()) < 0.05 < float(first.abs().max())
    # The evaluation env has no wrapper: the agent measures the gaps from its lidar, and
    # they equal what the training wrapper gives on the same episode.
    agent = load_agent(result.agent_dir)
    bare = gym.make("bulletdrive/Highway-v0", action_mode="behavior", overrides=overrides)
    wrapped = LaneGaps(gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                                overrides=overrides), presence=presence,
                       rear_closing=rear_closing)
    agent.reset()
    obs, _ = bare.reset(seed=200_003)
    ref, _ = wrapped.reset(seed=200_003)
    for _ in range(3):
        action = agent.act(obs, bare)
        assert bare.action_space.contains(action)
        assert agent.lane_gaps is not None
        np.testing.assert_allclose(agent.lane_gaps.last, ref["lane_gaps"])
        obs, *_ = bare.step(action)
        ref, *_ = wrapped.step(action)
    with pytest.raises(ValueError, match="pass the env to act"):
        load_agent(result.agent_dir).act(obs)
    # An agent description whose lane options do not give its saved width is refused.
    tampered = tmp_path / "tampered"
    shutil.copytree(result.agent_dir, tampered)
    meta["config"]["lane_presence"] = not presence
    (tampered / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match=f"reads {width} lane-gap features but its config"):
        load_agent(tampered).act(obs, bare)
    with pytest.raises(ValueError, match="measures lane gaps with the lidar"):
        load_agent(result.agent_dir).act({k: v for k, v in obs.items() if k != "lidar"}, bare)
    bare.close()
    wrapped.close()


def test_a_checkpoint_from_before_an_option_resumes_with_its_default() -> None:
    from agents.train import check_resumable
    from common.config import to_dict

    cfg = load_train_config(overrides=TINY)
    older = {k: v for k, v in to_dict(cfg).items() if k not in ("history", "shaping")}
    check_resumable(older, cfg)  # no error: the options did not exist, defaults apply
    with pytest.raises(ValueError, match="config differs in history"):
        check_resumable(older, load_train_config(overrides=[*TINY, "history.frames=2",
                                                            "obs=frozen"]))
