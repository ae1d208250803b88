"""Behaviour cloning's fit: held-out episodes, early stopping, action weights, the weight
of the learner's mistakes and the embedding penalty."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from agents.bc import EpisodeSplit, ObservationPath, drive, fit, label_counts, normalization_stats
from agents.config import load_train_config
from agents.embedding_penalty import (
    embedding_columns,
    embedding_weights,
    zero_embedding_weights,
)
from agents.env_factory import build_env
from agents.saving import normalize_obs
from common.config import ConfigError
from planning.action_modes import MetaAction
from planning.policies import ExpertPolicy


def test_episodes_are_assigned_to_validation_once_and_whole() -> None:
    split = EpisodeSplit(0.5, seed=0)
    lengths = [5, 3, 4, 6, 2, 7, 3, 5]
    for n in lengths[:4]:
        split.add(n)
    first = split.is_val().copy()
    for n in lengths[4:]:
        split.add(n)
    rows = split.is_val()
    assert len(rows) == sum(lengths)
    np.testing.assert_array_equal(rows[:len(first)], first)  # earlier choices stay
    assert not rows[:lengths[0]].any()  # the first episode always trains
    bounds = np.cumsum([0, *lengths])
    per_episode = [set(rows[a:b].tolist()) for a, b in itertools.pairwise(bounds)]
    assert all(len(v) == 1 for v in per_episode)  # whole episodes
    assert 0 < rows.sum() < len(rows)
    assert not EpisodeSplit(0.0, seed=0).is_val().any()


def test_fit_stops_when_validation_stops_improving_and_keeps_the_best_weights() -> None:
    # Labels that are pure noise: the training loss keeps falling while the validation
    # loss rises after the first epochs, so the fit must stop early.
    rng = np.random.default_rng(0)
    n, episodes = 600, 12
    data = [{"measurements": rng.normal(size=8).astype(np.float32)} for _ in range(n)]
    actions = rng.integers(0, 6, n).tolist()
    split = EpisodeSplit(0.25, seed=1)
    for _ in range(episodes):
        split.add(n // episodes)
    is_val = split.is_val()
    cfg = load_train_config(overrides=["bc.epochs=200", "bc.patience=3", "bc.batch_size=32",
                                       "bc.val_fraction=0.25"])
    space = spaces.Dict({"measurements": spaces.Box(-np.inf, np.inf, (8,), np.float32)})
    torch.manual_seed(0)
    policy = MultiInputActorCriticPolicy(space, spaces.Discrete(6), lambda _: 1e-3,
                                         net_arch=[128, 128])
    stats = normalization_stats(data, ["measurements"])
    info = fit(policy, data, actions, is_val, stats, cfg, torch.Generator().manual_seed(1),
               torch.device("cpu"))
    assert 3 < info["epochs"] < 200
    assert info["train_nll"] < info["val_nll"]  # it overfits, and was stopped
    # The kept weights are the best epoch's: their validation loss is what fit reports.
    val_rows = np.flatnonzero(is_val)
    x = normalize_obs({"measurements": np.stack([data[i]["measurements"] for i in val_rows])},
                      stats)
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(
            {"measurements": torch.as_tensor(x["measurements"])},
            torch.as_tensor([actions[i] for i in val_rows]))
    assert float(-log_prob.mean()) == pytest.approx(info["val_nll"], rel=1e-4)


def _uninformed_fit(actions: list[int], overrides: list[str],
                    row_weights: np.ndarray | None = None) -> np.ndarray:
    """Fits a small policy to ``actions`` from inputs that carry no information and
    returns its action probabilities."""
    data = [{"measurements": np.zeros(4, np.float32)} for _ in actions]
    cfg = load_train_config(overrides=["bc.epochs=300", "bc.batch_size=100",
                                       "bc.learning_rate=0.01", *overrides])
    space = spaces.Dict({"measurements": spaces.Box(-np.inf, np.inf, (4,), np.float32)})
    torch.manual_seed(0)
    policy = MultiInputActorCriticPolicy(space, spaces.Discrete(6), lambda _: 1e-3,
                                         net_arch=[16])
    stats = normalization_stats(data, ["measurements"])
    fit(policy, data, actions, np.zeros(len(actions), bool), stats, cfg,
        torch.Generator().manual_seed(0), torch.device("cpu"), row_weights=row_weights)
    with torch.no_grad():
        dist = policy.get_distribution({"measurements": torch.zeros(1, 4)})
        return np.asarray(dist.distribution.probs[0].numpy())


def test_action_weights_scale_each_label_in_the_likelihood() -> None:
    # With inputs that carry no information the fit converges to the label frequencies;
    # weighting a label by w multiplies its count by w in that optimum (closed form).
    counts = np.array([60, 5, 5, 10, 15, 5])
    weights = np.array([1.0, 1.0, 1.0, 1.0, 3.0, 2.0])
    actions = np.repeat(np.arange(6), counts).tolist()
    probs = _uninformed_fit(actions, [f"bc.action_weights={weights.tolist()}"])
    expected = counts * weights / (counts * weights).sum()
    np.testing.assert_allclose(probs, expected, atol=0.01)


@pytest.mark.parametrize(("overrides", "message"), [
    (["bc.action_weights=[1, 2, 3]"], "one weight per meta-action"),
    (["bc.action_weights=[1, 1, 1, 1, 0, 1]"], "must all be > 0"),
    (["bc.action_weights=[1, 1, 1, 1, 1, 1]", "action_mode=control"], "needs action_mode"),
])
def test_action_weights_are_checked(overrides: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_train_config(overrides=overrides)


def test_label_counts_name_each_meta_action() -> None:
    assert label_counts([0, 0, 4, 5, 0, 3]) == {"keep_lane": 3, "change_left": 0,
                                               "change_right": 0, "faster": 1, "slower": 1,
                                               "stop": 1}
    assert label_counts([np.zeros(2, np.float32)]) is None  # continuous modes


def test_the_embedding_penalty_keeps_the_policy_off_the_embedding() -> None:
    # The label is the sign of one lane-gap feature; the 32 embedding features are noise
    # that a 400-row fit can memorise. From zero, the penalty keeps the embedding's
    # weights small and the rule is still learned.
    rng = np.random.default_rng(0)
    n = 400
    data = [{"decision": rng.normal(size=3).astype(np.float32),
             "embedding": rng.normal(size=32).astype(np.float32),
             "lane_gaps": rng.normal(size=6).astype(np.float32)} for _ in range(n)]
    actions = [4 if d["lane_gaps"][0] > 0 else 0 for d in data]
    space = spaces.Dict({k: spaces.Box(-np.inf, np.inf, (len(v),), np.float32)
                         for k, v in data[0].items()})
    stats = normalization_stats(data, list(space.spaces))
    norms = {}
    for penalty in (0.0, 1.0):
        cfg = load_train_config(overrides=["bc.epochs=40", "bc.batch_size=50",
                                           f"bc.embedding_l2={penalty}"])
        torch.manual_seed(0)
        policy = MultiInputActorCriticPolicy(space, spaces.Discrete(6), lambda _: 1e-3,
                                             net_arch=[32])
        # The embedding's columns are where the extractor puts it (keys in order).
        assert embedding_columns(policy) == slice(3, 35)
        with torch.no_grad():
            features = policy.extract_features(
                {"decision": torch.zeros(1, 3), "embedding": torch.ones(1, 32),
                 "lane_gaps": torch.zeros(1, 6)}, policy.features_extractor)
        assert torch.equal(features[0].nonzero().flatten(), torch.arange(3, 35))
        zero_embedding_weights(policy)  # as train_bc does with a penalty
        fit(policy, data, actions, np.zeros(n, bool), stats, cfg,
            torch.Generator().manual_seed(0), torch.device("cpu"))
        x = normalize_obs({k: np.stack([d[k] for d in data]) for k in space.spaces}, stats)
        with torch.no_grad():
            pred = policy.get_distribution({k: torch.as_tensor(v) for k, v in x.items()}
                                           ).distribution.probs.argmax(1).numpy()
        assert np.mean(pred == np.asarray(actions)) > 0.95
        norms[penalty] = float(embedding_weights(policy).detach().norm())
    assert norms[1.0] < 0.1 * norms[0.0]


def test_the_embedding_penalty_needs_the_frozen_path() -> None:
    with pytest.raises(ConfigError, match="embedding_l2 must be >= 0"):
        load_train_config(overrides=["bc.embedding_l2=-1"])
    with pytest.raises(ConfigError, match="obs 'privileged' has none"):
        load_train_config(overrides=["obs=privileged", "bc.embedding_l2=0.5"])


def test_row_weights_scale_each_row_in_the_likelihood() -> None:
    # As above, with weights per row rather than per label: rows of one label are split
    # into a weighted and an unweighted half, so the optimum is the weighted frequency.
    actions = [0] * 60 + [1] * 40
    rows = np.ones(len(actions))
    rows[80:] = 4.0  # half of the label-1 rows
    probs = _uninformed_fit(actions, [], row_weights=rows)
    np.testing.assert_allclose(probs[:2], [60 / 160, 100 / 160], atol=0.01)


class _AlwaysAct:
    """A stand-in learner that always chooses one meta-action."""

    def __init__(self, action: MetaAction) -> None:
        self.action = action

    def predict(self, obs: object, deterministic: bool = True) -> tuple[np.ndarray, None]:
        return np.array([self.action.value]), None


def test_drive_marks_the_decisions_where_the_learner_differs_from_the_expert() -> None:
    cfg = load_train_config(overrides=["algo=bc", "obs=privileged"])
    env = build_env(cfg.env_id, cfg.action_mode, ["traffic.num_vehicles=4"])
    assert isinstance(env.observation_space, spaces.Dict)
    path = ObservationPath(cfg, env.observation_space, torch.device("cpu"))
    learner: Any = _AlwaysAct(MetaAction.SLOWER)
    no_stats = {"obs": {}, "epsilon": 1e-8, "clip_obs": 10.0}
    obs, labels, _, differs = drive(env, path, ExpertPolicy(), learner, no_stats,
                                    max_steps=15, seed=3)
    assert len(differs) == len(labels) == len(obs) == 15
    assert differs == [int(a) != MetaAction.SLOWER.value for a in labels]
    assert any(differs)  # the expert does not brake every decision on a free road
    _, expert_labels, _, expert_differs = drive(env, path, ExpertPolicy(), None, None,
                                                max_steps=15, seed=3)
    assert not any(expert_differs) and len(expert_labels) == 15
    env.close()


@pytest.mark.parametrize("overrides", [
    ["bc.disagreement_weight=5", "action_mode=control", "bc.dagger_iterations=1"],
    ["bc.disagreement_weight=5", "bc.dagger_iterations=0"],
])
def test_disagreement_weight_needs_behavior_and_dagger(overrides: list[str]) -> None:
    with pytest.raises(ConfigError, match="needs action_mode 'behavior' and "
                                          "bc.dagger_iterations >= 1"):
        load_train_config(overrides=["algo=bc", *overrides])


def test_disagreement_weight_must_be_positive() -> None:
    with pytest.raises(ConfigError, match="bc.disagreement_weight must be > 0"):
        load_train_config(overrides=["bc.disagreement_weight=0"])
