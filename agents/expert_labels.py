"""The expert's action as a training-only observation key (expert-guided PPO).

:class:`ExpertLabels` asks the privileged expert what it would do in every state the
learner reaches (DAgger's labelling, inside PPO's own rollouts) and puts the answer in
the observation under :data:`EXPERT_KEY`. Travelling as an observation, the label stays
aligned with its state through the worker processes, the embedding wrappers,
``VecNormalize`` (which leaves it alone) and PPO's rollout buffer, and survives an
exact resume with the rest of the last observation. The policy never reads it: the
features extractors leave it out (:data:`TRAINING_ONLY_KEYS`) and the saved agent's
observation space drops it. :class:`agents.guided_ppo.GuidedPPO` fits the policy to it.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from planning.policies import ExpertPolicy

#: Observation key holding the expert's action in the current state.
EXPERT_KEY = "expert_action"


def label_space(action_space: spaces.Space[Any]) -> spaces.Box:
    """The label's observation space: a ``Discrete`` action as a float ``(1,)`` box
    holding its index, a ``Box`` action as itself in float32.

    Raises:
        TypeError: Any other action space.
    """
    if isinstance(action_space, spaces.Discrete):
        start = int(action_space.start)
        return spaces.Box(start, start + int(action_space.n) - 1, (1,), np.float32)
    if isinstance(action_space, spaces.Box):
        return spaces.Box(action_space.low.astype(np.float32),
                          action_space.high.astype(np.float32), action_space.shape, np.float32)
    raise TypeError(f"expert labels need a Discrete or Box action space, not {action_space}")


class ExpertLabels(gym.Wrapper[Any, Any, Any, Any]):
    """Adds :data:`EXPERT_KEY`, the expert's action in the returned state, to every
    observation (``reset`` and ``step``).

    The expert is deterministic and stateless, and asking it changes nothing in the env
    (its one side effect, carrying the behaviour layer's target lane along the road, is
    what the layer's next decision does first anyway), so the learner's episodes run
    exactly as without this wrapper. It costs about 0.4 ms per decision.

    Args:
        env: A driving env with a ``Dict`` observation space.
    """

    def __init__(self, env: gym.Env[Any, Any]) -> None:
        super().__init__(env)
        space = env.observation_space
        if not isinstance(space, spaces.Dict):
            raise TypeError(f"expert labels need a Dict observation space, not {space}")
        label = label_space(env.action_space)
        self.label_shape = label.shape
        self.observation_space = spaces.Dict({**space.spaces, EXPERT_KEY: label})
        self.expert = ExpertPolicy()

    def _label(self, obs: dict[str, Any]) -> dict[str, Any]:
        action = self.expert.act(obs, self.env)
        return {**obs, EXPERT_KEY: np.asarray(action, np.float32).reshape(self.label_shape)}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[Any, dict[str, Any]]:
        """Reset, with the expert's action in the first state."""
        obs, info = self.env.reset(seed=seed, options=options)
        return self._label(obs), info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step, with the expert's action in the new state."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        return self._label(obs), reward, terminated, truncated, info


__all__ = ["EXPERT_KEY", "ExpertLabels", "label_space"]
