"""stable-baselines3 features extractors: the image observation paths' encoder, and the
choice of extractor per observation path."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor

from agents.privileged_critic import ActorKeysExtractor
from perception.augment import random_shift
from perception.checkpoint import load_encoder
from perception.encoders import Encoder, build_encoder


class EncoderExtractor(BaseFeaturesExtractor):
    """Camera through an encoder, concatenated with the flattened non-image observations.

    Used by the ``finetune`` path (a pretrained encoder trained with the policy) and the
    ``scratch`` path (a randomly initialised Nature CNN with DrQ-style random shifts).
    SB3 hands the camera over as float ``(B, 3, H, W)`` in [0, 1] (it transposes and
    scales image observations), which the encoder takes as is.

    Args:
        observation_space: Dict space with ``camera`` and vector keys.
        encoder: Encoder checkpoint directory, or ``None`` for a fresh Nature CNN.
        shift_pad_px: Random-shift padding applied in training mode (0: none) [px].
        seed: Seed of the augmentation generator.
        exclude: Observation keys to leave out (training-only data).
    """

    def __init__(self, observation_space: spaces.Dict, encoder: str | None = None,
                 shift_pad_px: int = 0, seed: int = 0, exclude: Sequence[str] = ()) -> None:
        shape = tuple(observation_space.spaces["camera"].shape or ())
        hw = (int(shape[1]), int(shape[2])) if shape[0] == 3 else (int(shape[0]),
                                                                  int(shape[1]))
        enc: Encoder = (load_encoder(encoder) if encoder else
                        build_encoder("nature_cnn", image_size=hw))
        enc.train()
        enc.frozen = False
        for param in enc.parameters():
            param.requires_grad_(True)
        others = [k for k in sorted(observation_space.spaces)
                  if k != "camera" and k not in exclude]
        extra = sum(int(torch.tensor(observation_space.spaces[k].shape).prod()) for k in others)
        super().__init__(observation_space, features_dim=enc.embed_dim + extra)
        self.encoder = enc
        self.others = others
        self.shift_pad_px = shift_pad_px
        self.generator = torch.Generator().manual_seed(seed)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """Features ``(B, embed_dim + extra)``."""
        image = observations["camera"]
        if self.training and self.shift_pad_px > 0:
            image = random_shift(image, pad=self.shift_pad_px, generator=self.generator)
        parts = [self.encoder(image)]
        parts += [observations[k].flatten(1).float() for k in self.others]
        return torch.cat(parts, dim=1)

    def extra_repr(self) -> str:
        """Short description for ``print(policy)``."""
        return f"others={self.others}, shift_pad_px={self.shift_pad_px}"


def extractor_kwargs(obs_path: str, encoder: str | None, seed: int,
                     hidden: Sequence[str] = ()) -> dict[str, Any]:
    """``policy_kwargs`` entries for an observation path (empty: SB3's default).

    ``hidden``: observation keys the policy must not read (the expert's labels of guided
    PPO); the vector paths then use :class:`ActorKeysExtractor`, which lays the other
    keys out as SB3's default extractor does, with the same (no) weights.
    """
    if obs_path == "finetune":
        return {"features_extractor_class": EncoderExtractor,
                "features_extractor_kwargs": {"encoder": encoder, "seed": seed,
                                              "exclude": tuple(hidden)}}
    if obs_path == "scratch":
        return {"features_extractor_class": EncoderExtractor,
                "features_extractor_kwargs": {"encoder": None, "shift_pad_px": 4,
                                              "seed": seed, "exclude": tuple(hidden)}}
    if hidden:
        return {"features_extractor_class": ActorKeysExtractor,
                "features_extractor_kwargs": {"exclude": tuple(hidden)}}
    return {}


def policy_input(obs: dict[str, np.ndarray], keys: Iterable[str], encoder: Encoder | None
                 ) -> dict[str, np.ndarray]:
    """One env observation as a policy sees it (unbatched, not normalised); used outside
    the vectorised envs (behaviour cloning, loaded agents).

    Args:
        obs: The env's observation.
        keys: The policy's observation keys: ``embedding`` (frozen path: ``encoder``
            embeds the camera), ``camera`` (image paths: transposed to ``(3, H, W)``) and
            vector keys (``agents.env_factory.VECTOR_KEYS``, passed on as float32).
        encoder: The frozen encoder (``embedding`` key only).
    """
    out: dict[str, np.ndarray] = {}
    for key in keys:
        if key == "embedding":
            assert encoder is not None
            with torch.inference_mode():
                emb = encoder(torch.from_numpy(np.ascontiguousarray(obs["camera"][None])))
            out[key] = emb.float().cpu().numpy()[0]
        elif key == "camera":
            out[key] = np.ascontiguousarray(np.transpose(obs["camera"], (2, 0, 1)))
        else:
            out[key] = np.asarray(obs[key], np.float32)
    return out
