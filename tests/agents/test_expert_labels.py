"""The expert's action as a training-only observation key."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces

import envs  # noqa: F401  (registers the ids)
from agents.expert_labels import EXPERT_KEY, ExpertLabels, label_space
from planning.policies import ExpertPolicy

OVERRIDES = ["traffic.num_vehicles=6", "sensors.state=true", "sensors.camera=false"]


def test_label_spaces() -> None:
    box = label_space(spaces.Discrete(6))
    assert box.shape == (1,) and box.low[0] == 0 and box.high[0] == 5
    assert label_space(spaces.Discrete(3, start=1)).high[0] == 3
    cont = label_space(spaces.Box(-1.0, 1.0, (2,), np.float64))
    assert cont.shape == (2,) and cont.dtype == np.float32
    with pytest.raises(TypeError, match="Discrete or Box"):
        label_space(spaces.MultiBinary(3))


def test_labels_are_the_experts_actions_and_change_nothing_else() -> None:
    bare = gym.make("bulletdrive/Highway-v0", action_mode="behavior", overrides=OVERRIDES)
    labelled = ExpertLabels(gym.make("bulletdrive/Highway-v0", action_mode="behavior",
                                     overrides=OVERRIDES))
    assert EXPERT_KEY in labelled.observation_space.spaces
    expert = ExpertPolicy()
    rng = np.random.default_rng(0)
    obs, _ = bare.reset(seed=7)
    got, _ = labelled.reset(seed=7)
    labels = []
    for _ in range(25):
        assert labelled.observation_space.contains(got)
        # The learner's episode is the same as without the wrapper ...
        assert got.keys() - {EXPERT_KEY} == obs.keys()
        for key in obs:
            np.testing.assert_array_equal(got[key], obs[key])
        # ... and the label is what the expert would do in that state.
        label = expert.act(obs, bare)
        assert got[EXPERT_KEY].tolist() == [float(label)]
        labels.append(label)
        action = int(rng.integers(6))  # a poor driver, to reach states the expert avoids
        obs, reward, term, trunc, _ = bare.step(action)
        got, reward2, term2, trunc2, _ = labelled.step(action)
        assert (reward, term, trunc) == (reward2, term2, trunc2)
        if term or trunc:
            break
    assert len(labels) >= 5
    bare.close()
    labelled.close()
