"""PPO guided by the expert: each update ends with behaviour cloning on the rollout.

PPO's reward rarely reaches the states that matter most (a car cutting in: 0.4% of
decisions, README agents section), so what a cloned policy knew about them drifts
away as PPO fine-tunes it. :class:`GuidedPPO` keeps it: the envs label every state the
learner visits with the expert's action (:class:`agents.expert_labels.ExpertLabels`,
DAgger's labelling inside PPO's own rollouts), and after PPO's epochs on a rollout the
policy takes ``expert_epochs`` passes of minibatch steps on the expert's negative
log-likelihood over the same states, scaled by ``expert_coef``. Those states are the
learner's own, so the labels teach recovery where the learner actually goes, as DAgger
does, while PPO's reward still shapes everything the expert is indifferent to.

TensorBoard: ``train/expert_nll`` (the weighted negative log-likelihood, mean over the
phase's minibatches)
and ``train/expert_agreement`` (share of those states where the policy's most likely
action is the expert's; discrete actions).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3 import PPO

from agents.expert_labels import EXPERT_KEY


class GuidedPPO(PPO):
    """stable-baselines3 PPO plus an expert behaviour-cloning phase per update.

    Args:
        *args: Passed to ``PPO``; the env's observations must hold :data:`EXPERT_KEY`.
        expert_coef: Weight of the expert's negative log-likelihood (a multiplier on
            the step; 0: plain PPO).
        expert_epochs: Passes over the rollout per update.
        expert_action_weights: Discrete actions: weight of each action's labels (one
            per action; empty: all 1), to let rare labels (braking) count.
        **kwargs: Passed to ``PPO``.

    Raises:
        ValueError: The observations have no :data:`EXPERT_KEY`, or the weights do not
            match the actions.
    """

    def __init__(self, *args: Any, expert_coef: float = 1.0, expert_epochs: int = 1,
                 expert_action_weights: Sequence[float] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        space = self.observation_space
        if not isinstance(space, spaces.Dict) or EXPERT_KEY not in space.spaces:
            raise ValueError(f"guided PPO needs the expert's action in the observations "
                             f"('{EXPERT_KEY}', agents.expert_labels.ExpertLabels)")
        self.expert_coef = expert_coef
        self.expert_epochs = expert_epochs
        self.expert_weights: torch.Tensor | None = None
        if expert_action_weights:
            n = int(self.action_space.n) if isinstance(self.action_space,
                                                       spaces.Discrete) else -1
            if len(expert_action_weights) != n:
                raise ValueError(f"expert_action_weights needs one weight per discrete action "
                                 f"({n}), got {len(expert_action_weights)}")
            self.expert_weights = torch.as_tensor(expert_action_weights, dtype=torch.float32,
                                                  device=self.device)

    def train(self) -> None:
        """PPO's update, then the expert phase on the same rollout."""
        super().train()
        if self.expert_coef > 0.0:
            self.imitate()

    def _expert_loss(self, observations: dict[str, torch.Tensor]
                     ) -> tuple[torch.Tensor, float]:
        """Weighted negative log-likelihood of the expert's actions and the share of
        states where the policy's mode is the expert's action (NaN if continuous)."""
        labels = observations[EXPERT_KEY]
        distribution = self.policy.get_distribution(observations)
        if isinstance(self.action_space, spaces.Discrete):
            actions = labels.long().flatten() - int(self.action_space.start)
            nll = -distribution.log_prob(actions)
            with torch.no_grad():
                agree = float((distribution.mode() == actions).float().mean())
            if self.expert_weights is not None:
                w = self.expert_weights[actions]
                return (w * nll).sum() / w.sum(), agree
            return nll.mean(), agree
        return -distribution.log_prob(labels).mean(), float("nan")

    def imitate(self) -> None:
        """``expert_epochs`` passes of minibatch steps on the expert's labels.

        Skipped while the actor is frozen (the value warm-up of a fine-tuning run).
        """
        if not any(p.requires_grad for p in self.policy.action_net.parameters()):
            return
        self.policy.set_training_mode(True)
        losses: list[float] = []
        agreement: list[float] = []
        for _ in range(self.expert_epochs):
            for batch in self.rollout_buffer.get(self.batch_size):
                observations = batch.observations
                assert isinstance(observations, dict)
                loss, agree = self._expert_loss(observations)
                losses.append(float(loss.detach()))
                agreement.append(agree)
                self.policy.optimizer.zero_grad()
                (self.expert_coef * loss).backward()
                torch.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
                self.policy.optimizer.step()
        self.logger.record("train/expert_nll", float(np.mean(losses)))
        if isinstance(self.action_space, spaces.Discrete):
            self.logger.record("train/expert_agreement", float(np.mean(agreement)))


__all__ = ["GuidedPPO"]
