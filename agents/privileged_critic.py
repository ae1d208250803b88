"""PPO with a privileged critic (asymmetric actor-critic).

The actor drives from what it will have when deployed (the embedding, ``measurements``
and ``decision``); the critic, used only in training, also reads the privileged ``state``
vector (the ego's lane state and the nearby vehicles in the ego frame). A value function
that sees the car in the blind spot can tell a lane change that is about to end in a
collision from one that is safe, which a critic limited to one forward camera frame
cannot, so the advantages that train the actor carry that difference.

:class:`PrivilegedCriticPolicy` is SB3's ``MultiInputActorCriticPolicy`` with two
changes: its features extractor leaves the privileged key out (so the actor's layers are
exactly those of a plain policy on the other keys, and a behaviour-cloned policy loads
into them), and an extra ``critic`` MLP on the actor's features plus the privileged
vector replaces SB3's value head. :meth:`PrivilegedCriticPolicy.actor_state_dict` and
:attr:`PrivilegedCriticPolicy.actor_observation_space` give the deployable policy: a
plain ``MultiInputActorCriticPolicy`` without the privileged input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor, nn

#: Observation key the critic reads and the actor never sees.
PRIVILEGED_KEY = "state"


class ActorKeysExtractor(BaseFeaturesExtractor):
    """Flattened observation keys, privileged ones left out, concatenated in the
    observation space's order (the layout SB3's ``CombinedExtractor`` gives the same
    keys; like it, this extractor has no parameters).

    Args:
        observation_space: Dict space of vector observations.
        exclude: Keys to leave out.
    """

    def __init__(self, observation_space: spaces.Dict, exclude: Sequence[str] = (PRIVILEGED_KEY,)
                 ) -> None:
        keys = [k for k in observation_space.spaces if k not in exclude]
        dim = sum(get_flattened_obs_dim(observation_space.spaces[k]) for k in keys)
        super().__init__(observation_space, features_dim=dim)
        self.keys = keys

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Features ``(B, features_dim)``."""
        return torch.cat([observations[k].flatten(1).float() for k in self.keys], dim=1)


class PrivilegedCriticPolicy(MultiInputActorCriticPolicy):
    """Actor on the deployable keys, critic on those plus :data:`PRIVILEGED_KEY`.

    Args:
        observation_space: Dict space holding :data:`PRIVILEGED_KEY` and the actor's keys.
        action_space: The env's action space.
        lr_schedule: SB3 learning-rate schedule.
        critic_arch: Hidden layer sizes of the critic MLP.
        hidden_keys: More observation keys neither actor nor critic reads (training-only
            data, such as the expert's labels of guided PPO).
        **kwargs: Passed to ``MultiInputActorCriticPolicy`` (``net_arch`` sizes the
            actor; a features extractor may not be given).

    Raises:
        ValueError: If the observation space has no :data:`PRIVILEGED_KEY`.
    """

    def __init__(self, observation_space: spaces.Dict, action_space: spaces.Space[Any],
                 lr_schedule: Any, critic_arch: Sequence[int] = (256, 256),
                 hidden_keys: Sequence[str] = (), **kwargs: Any) -> None:
        if PRIVILEGED_KEY not in observation_space.spaces:
            raise ValueError(f"a privileged critic needs the '{PRIVILEGED_KEY}' observation "
                             f"(sensors.state=true); keys: {sorted(observation_space.spaces)}")
        kwargs["features_extractor_class"] = ActorKeysExtractor
        kwargs["features_extractor_kwargs"] = {"exclude": (PRIVILEGED_KEY, *hidden_keys)}
        super().__init__(observation_space, action_space, lr_schedule, **kwargs)
        width = self.features_dim + get_flattened_obs_dim(
            observation_space.spaces[PRIVILEGED_KEY])
        layers: list[nn.Module] = []
        for size in critic_arch:
            layers += [nn.Linear(width, size), nn.Tanh()]
            width = size
        layers.append(nn.Linear(width, 1))
        self.critic = nn.Sequential(*layers)
        # SB3 built the optimiser before the critic existed.
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.parameters(), lr=lr_schedule(1), **self.optimizer_kwargs)

    def _critic_values(self, features: Tensor, obs: dict[str, Tensor]) -> Tensor:
        privileged = obs[PRIVILEGED_KEY].flatten(1).float()
        values: Tensor = self.critic(torch.cat([features, privileged], dim=1))
        return values

    def forward(self, obs: Any, deterministic: bool = False
                ) -> tuple[Tensor, Tensor, Tensor]:
        """Actions, critic values and log-probabilities, as SB3's rollout loop wants."""
        features = self.extract_features(obs)
        assert isinstance(features, Tensor)
        distribution = self._get_action_dist_from_latent(
            self.mlp_extractor.forward_actor(features))
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        actions = actions.reshape((-1, *self.action_space.shape))  # type: ignore[misc]
        return actions, self._critic_values(features, obs), log_prob

    def evaluate_actions(self, obs: Any, actions: Tensor
                         ) -> tuple[Tensor, Tensor, Tensor | None]:
        """Critic values, log-probabilities and entropy of ``actions`` (PPO's update)."""
        features = self.extract_features(obs)
        assert isinstance(features, Tensor)
        distribution = self._get_action_dist_from_latent(
            self.mlp_extractor.forward_actor(features))
        return (self._critic_values(features, obs), distribution.log_prob(actions),
                distribution.entropy())

    def predict_values(self, obs: Any) -> Tensor:
        """Critic values (bootstrapping at the end of a rollout)."""
        features = self.extract_features(obs)
        assert isinstance(features, Tensor)
        return self._critic_values(features, obs)

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters only the value estimate uses (the critic MLP)."""
        return list(self.critic.parameters())

    def actor_state_dict(self) -> dict[str, Tensor]:
        """Weights of the deployable policy: everything but the critic (SB3's own value
        head stays, untrained, so that the result loads into a plain policy)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("critic.")}

    @property
    def actor_observation_space(self) -> spaces.Dict:
        """The observation space of the deployable policy: the keys the actor reads (no
        privileged or hidden key)."""
        assert isinstance(self.observation_space, spaces.Dict)
        assert isinstance(self.features_extractor, ActorKeysExtractor)
        return spaces.Dict({k: self.observation_space.spaces[k]
                            for k in self.features_extractor.keys})


__all__ = ["PRIVILEGED_KEY", "ActorKeysExtractor", "PrivilegedCriticPolicy"]
