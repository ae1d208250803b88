"""Training reward shaping (the evaluation never sees it).

A collision is a rare, late signal: one -30 at the end of an episode, after the decisions
that caused it. :class:`TTCPenalty` adds a dense one: every decision that ends with a
short time to collision with the vehicle ahead on the ego's path
(:func:`planning.safety.time_to_collision`) costs
``weight * max(0, 1 - ttc / threshold)``, from 0 at the threshold to ``weight`` at contact.
"""

from __future__ import annotations

from typing import Any, SupportsFloat

import gymnasium as gym

from agents.config import ShapingConfig
from envs.driving_env import DrivingEnv
from planning.safety import time_to_collision


def ttc_penalty(ttc_s: float, cfg: ShapingConfig) -> float:
    """``weight * max(0, 1 - ttc / threshold)``; 0 when shaping is off."""
    if cfg.ttc_weight == 0.0:
        return 0.0
    return cfg.ttc_weight * max(0.0, 1.0 - ttc_s / cfg.ttc_threshold_s)


class TTCPenalty(gym.Wrapper[Any, Any, Any, Any]):
    """Subtract :func:`ttc_penalty` of the state after each step from its reward.

    ``info`` gains ``ttc_s`` and ``ttc_penalty``.

    Args:
        env: A driving env in any action mode (the bare env is its ``unwrapped``).
        cfg: Threshold and weight.
    """

    def __init__(self, env: gym.Env[Any, Any], cfg: ShapingConfig) -> None:
        super().__init__(env)
        if not isinstance(env.unwrapped, DrivingEnv):
            raise TypeError(f"TTCPenalty needs a driving env, got {type(env.unwrapped).__name__}")
        self.driving: DrivingEnv = env.unwrapped
        self.cfg = cfg

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step and subtract the penalty."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        ttc, _ = time_to_collision(self.driving)
        penalty = ttc_penalty(ttc, self.cfg)
        info = {**info, "ttc_s": ttc, "ttc_penalty": penalty}
        return obs, float(reward) - penalty, terminated, truncated, info


__all__ = ["TTCPenalty", "ttc_penalty"]
