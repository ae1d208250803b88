"""Keeping a policy from leaning on the frozen embedding more than it pays.

A behaviour-cloned or PPO policy on the ``frozen`` path reads 512 embedding features
beside a few vector inputs (``measurements``, ``decision``, ``lane_gaps``). With about
10k labelled decisions the clone memorises the embedding instead of reading the vector
inputs, and PPO's updates flow mostly into the embedding's weights (README, agents
section). ``bc.embedding_l2`` / ``ppo.embedding_l2`` put an L2 penalty on the actor's
first-layer weights that read the embedding (a group ridge) and start them at zero.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from stable_baselines3.common.policies import ActorCriticPolicy


def embedding_columns(policy: ActorCriticPolicy) -> slice:
    """The columns of the actor's features that hold the ``embedding`` observation.

    SB3's ``CombinedExtractor`` (and :class:`agents.privileged_critic.ActorKeysExtractor`,
    which leaves training-only keys out) flatten the observation keys and concatenate
    them in the space's order.

    Raises:
        ValueError: If the policy has no ``embedding`` input.
    """
    space: Any = policy.observation_space
    keys = getattr(policy.features_extractor, "keys", None) or list(space.spaces)
    start = 0
    for key in keys:
        width = int(np.prod(space.spaces[key].shape))
        if key == "embedding":
            return slice(start, start + width)
        start += width
    raise ValueError("the policy has no 'embedding' input (embedding_l2 needs obs 'frozen')")


def first_actor_layer(policy: ActorCriticPolicy) -> torch.nn.Linear:
    """The actor's first hidden layer (it reads the features)."""
    first = policy.mlp_extractor.policy_net[0]
    assert isinstance(first, torch.nn.Linear)
    return first


def embedding_weights(policy: ActorCriticPolicy) -> torch.Tensor:
    """The actor's first-layer weights that read the embedding ``(hidden, embed_dim)``
    (a view: writing to it changes the policy)."""
    return first_actor_layer(policy).weight[:, embedding_columns(policy)]


def zero_columns(layer: torch.nn.Linear, columns: slice) -> None:
    """Set ``layer``'s weights on the input ``columns`` to 0 (the layer starts blind to
    those inputs)."""
    with torch.no_grad():
        layer.weight[:, columns] = 0.0


def zero_embedding_weights(policy: ActorCriticPolicy) -> None:
    """Start the actor blind to the embedding (its first-layer weights on it set to 0)."""
    zero_columns(first_actor_layer(policy), embedding_columns(policy))


def add_column_l2_gradient(layer: torch.nn.Linear, columns: slice, l2: float
                           ) -> torch.utils.hooks.RemovableHandle:
    """Make every backward pass add the gradient of ``l2 * ||layer.weight[:, columns]||^2``.

    For losses we do not write (SB3's PPO): a gradient hook on the layer's weight,
    applied before the gradient norm is clipped, as a loss term would be.

    Returns:
        The hook's handle (``remove()`` undoes it).
    """
    weight = layer.weight
    mask = torch.zeros_like(weight)
    mask[:, columns] = 1.0

    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad + 2.0 * l2 * weight.detach() * mask

    return weight.register_hook(hook)


def add_embedding_l2_gradient(policy: ActorCriticPolicy, l2: float
                              ) -> torch.utils.hooks.RemovableHandle:
    """:func:`add_column_l2_gradient` on the actor's first-layer weights that read the
    embedding (``bc.embedding_l2`` / ``ppo.embedding_l2``)."""
    return add_column_l2_gradient(first_actor_layer(policy), embedding_columns(policy), l2)
