"""Behaviour cloning's fit: held-out episodes and early stopping."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy

from agents.bc import fit, normalization_stats, split_episodes
from agents.config import load_train_config
from agents.saving import normalize_obs


def test_split_holds_out_whole_episodes() -> None:
    ids = [0] * 5 + [1] * 3 + [2] * 4 + [3] * 6
    train, val = split_episodes(ids, 0.5, torch.Generator().manual_seed(0))
    assert sorted([*train, *val]) == list(range(len(ids)))
    train_eps = {ids[i] for i in train}
    val_eps = {ids[i] for i in val}
    assert len(val_eps) == 2 and not train_eps & val_eps
    # One episode only, or no hold-out: everything trains.
    assert len(split_episodes([7] * 4, 0.5, torch.Generator())[1]) == 0
    assert len(split_episodes(ids, 0.0, torch.Generator())[1]) == 0


def test_fit_stops_when_validation_stops_improving_and_keeps_the_best_weights() -> None:
    # Labels that are pure noise: the training loss keeps falling while the validation
    # loss rises after the first epochs, so the fit must stop early.
    rng = np.random.default_rng(0)
    n, episodes = 600, 12
    data = [{"measurements": rng.normal(size=8).astype(np.float32)} for _ in range(n)]
    actions = rng.integers(0, 6, n).tolist()
    episode_ids = [i * episodes // n for i in range(n)]
    cfg = load_train_config(overrides=["bc.epochs=200", "bc.patience=3", "bc.batch_size=32",
                                       "bc.val_fraction=0.25"])
    space = spaces.Dict({"measurements": spaces.Box(-np.inf, np.inf, (8,), np.float32)})
    torch.manual_seed(0)
    policy = MultiInputActorCriticPolicy(space, spaces.Discrete(6), lambda _: 1e-3,
                                         net_arch=[128, 128])
    stats = normalization_stats(data, ["measurements"])
    info = fit(policy, data, actions, episode_ids, stats, cfg, torch.Generator().manual_seed(1),
               torch.device("cpu"))
    assert 3 < info["epochs"] < 200
    assert info["train_nll"] < info["val_nll"]  # it overfits, and was stopped
    # The kept weights are the best epoch's: their validation loss is what fit reports.
    _, val_rows = split_episodes(episode_ids, 0.25, torch.Generator().manual_seed(1))
    x = normalize_obs({"measurements": np.stack([data[i]["measurements"] for i in val_rows])},
                      stats)
    with torch.no_grad():
        _, log_prob, _ = policy.evaluate_actions(
            {"measurements": torch.as_tensor(x["measurements"])},
            torch.as_tensor([actions[i] for i in val_rows]))
    assert float(-log_prob.mean()) == pytest.approx(info["val_nll"], rel=1e-4)
