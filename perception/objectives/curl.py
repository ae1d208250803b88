"""CURL: contrastive learning of the encoder with a momentum key encoder.

Two independently augmented views of each frame go through the online encoder
(query) and through an EMA copy of it (key); a learned bilinear similarity
``q^T W k`` scores every query against every key of the batch, and cross-entropy
picks the matching key (Laskin, Srinivas & Abbeel, 2020).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from common.config import require
from perception.objectives.base import (
    AugmentFn,
    Objective,
    embed_dim_of,
    identity_augment,
    info_nce,
)


@dataclass(frozen=True)
class CURLConfig:
    """CURL hyper-parameters.

    Attributes:
        tau: EMA step of the key encoder towards the online one per optimizer step
            (``key <- (1 - tau) * key + tau * online``).
        projection_dim: Width of the ``Linear + LayerNorm`` projection applied to the
            embedding before the similarity; 0 compares raw embeddings.
    """

    tau: float = 0.01
    projection_dim: int = 128

    def __post_init__(self) -> None:
        require(0.0 <= self.tau <= 1.0, "curl.tau must be in [0, 1]")
        require(self.projection_dim >= 0, "curl.projection_dim must be >= 0")


class _Projection(nn.Module):
    """Embedding -> ``Linear + LayerNorm`` (or identity when ``out_dim`` is 0)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.net: nn.Module = (nn.Sequential(nn.Linear(in_dim, out_dim), nn.LayerNorm(out_dim))
                               if out_dim > 0 else nn.Identity())
        self.out_dim = out_dim if out_dim > 0 else in_dim

    def forward(self, x: Tensor) -> Tensor:
        """Project ``(B, in_dim)`` to ``(B, out_dim)``."""
        out: Tensor = self.net(x)
        return out


class CURL(Objective):
    """CURL objective.

    Args:
        encoder: The online encoder (``embed_dim`` attribute, frames -> embeddings).
        config: Hyper-parameters.
        augment: Augmentation applied independently to the query and key views;
            ``None`` applies none (the views are then identical).

    Attributes:
        key_encoder / key_projection: EMA targets of ``encoder`` / ``projection``.
        W: The bilinear similarity matrix.
    """

    def __init__(self, encoder: nn.Module, config: CURLConfig | None = None,
                 augment: AugmentFn | None = None) -> None:
        super().__init__(encoder)
        self.config = config or CURLConfig()
        self.augment = augment or identity_augment
        self.projection = _Projection(embed_dim_of(encoder), self.config.projection_dim)
        dim = self.projection.out_dim
        # Identity start: the initial similarity is the dot product, a sensible prior.
        self.W = nn.Parameter(torch.eye(dim))
        self.to(self.device)
        self.key_encoder = self.register_target("encoder", "key_encoder", self.config.tau)
        self.key_projection = self.register_target("projection", "key_projection",
                                                   self.config.tau)

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """InfoNCE between the query and key views of ``batch['frames']``."""
        x = self.frames(batch)
        query = self.projection(self.encoder(self.augment(x, generator)))
        with torch.no_grad():
            key = self.key_projection(self.key_encoder(self.augment(x, generator)))
        loss, accuracy = info_nce(query, key, self.W)
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}


__all__ = ["CURL", "CURLConfig"]
