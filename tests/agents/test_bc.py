"""Behaviour cloning's fit: held-out episodes and early stopping."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from agents.bc import EpisodeSplit, fit, normalization_stats
from agents.config import load_train_config
from agents.saving import normalize_obs


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
