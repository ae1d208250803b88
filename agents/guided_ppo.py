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

With ``expert_memory`` the labelled states of past rollouts are kept too
(:class:`agents.expert_memory.ExpertMemory`, DAgger's aggregated dataset) and each
expert minibatch adds as many states drawn from them, so a rare state keeps teaching
after its rollout is gone.

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
from agents.expert_memory import ExpertMemory


class GuidedPPO(PPO):
    """stable-baselines3 PPO plus an expert behaviour-cloning phase per update.

    Args:
        *args: Passed to ``PPO``; the env's observations must hold :data:`EXPERT_KEY`.
        expert_coef: Weight of the expert's negative log-likelihood (a multiplier on
            the step; 0: plain PPO).
        expert_epochs: Passes over the rollout per update.
        expert_action_weights: Discrete actions: weight of each action's labels (one
            per action; empty: all 1), to let rare labels (braking) count.
        expert_memory: Labelled states of past rollouts kept for the expert phase
            [decisions] (0: none, the phase sees the current rollout only).
        **kwargs: Passed to ``PPO``.

    Raises:
        ValueError: The observations have no :data:`EXPERT_KEY`, or the weights do not
            match the actions.
    """

    def __init__(self, *args: Any, expert_coef: float = 1.0, expert_epochs: int = 1,
                 expert_action_weights: Sequence[float] = (), expert_memory: int = 0,
                 **kwargs: Any) -> None:
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
        self.memory = ExpertMemory(expert_memory) if expert_memory > 0 else None

    def train(self) -> None:
        """PPO's update, then the expert phase on the same rollout."""
        super().train()
        if self.memory is not None:
            self.memorise()
        if self.expert_coef > 0.0:
            self.imitate()

    def memorise(self) -> None:
        """Add the rollout's states to the memory, as the envs produced them."""
        assert self.memory is not None
        observations = self.rollout_buffer.observations
        assert isinstance(observations, dict)
        space = self.observation_space
        assert isinstance(space, spaces.Dict)
        flat = {k: v.reshape(-1, *(space.spaces[k].shape or ())) for k, v in
                observations.items()}
        normalizer = self.get_vec_normalize_env()
        raw = normalizer.unnormalize_obs(flat) if normalizer is not None else flat
        assert isinstance(raw, dict)
        self.memory.add(raw)

    def _memory_batch(self, rng: np.random.Generator, n: int) -> dict[str, torch.Tensor]:
        """``n`` remembered states, normalised with the current statistics."""
        assert self.memory is not None
        drawn: Any = self.memory.sample(rng, n)
        normalizer = self.get_vec_normalize_env()
        if normalizer is not None:
            drawn = normalizer.normalize_obs(drawn)
        return {k: torch.as_tensor(v, device=self.device) for k, v in drawn.items()}

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
        With a memory, each minibatch of the rollout is joined by as many remembered
        states, drawn by a generator seeded with the run's seed and decision count (so a
        resumed run draws the same ones).
        """
        if not any(p.requires_grad for p in self.policy.action_net.parameters()):
            return
        self.policy.set_training_mode(True)
        losses: list[float] = []
        agreement: list[float] = []
        rng = np.random.default_rng([self.seed or 0, self.num_timesteps])
        for _ in range(self.expert_epochs):
            for batch in self.rollout_buffer.get(self.batch_size):
                observations = batch.observations
                assert isinstance(observations, dict)
                if self.memory is not None and self.memory.size:
                    drawn = self._memory_batch(rng, len(observations[EXPERT_KEY]))
                    observations = {k: torch.cat([v, drawn[k]]) for k, v in
                                    observations.items()}
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
