"""ATC: augmented temporal contrast (Stooke et al., 2021).

The anchor is frame ``t`` and its positive the frame ``k`` steps later in the same
episode (the dataset provides it as ``frames_next``), each independently augmented.
The online encoder and a linear compressor embed the anchor, a residual MLP
predictor refines it; an EMA copy of encoder and compressor embeds the positive. A
learned bilinear similarity scores every anchor against every positive of the batch
and cross-entropy picks the true successor, so the code must capture what persists
and changes predictably over time (the road, other vehicles) rather than noise.
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
class ATCConfig:
    """ATC hyper-parameters.

    Attributes:
        tau: EMA step of the target encoder and compressor per optimizer step.
        latent_dim: Width of the compressed code compared by the similarity.
        hidden_dim: Hidden width of the residual predictor.
    """

    tau: float = 0.01
    latent_dim: int = 128
    hidden_dim: int = 512

    def __post_init__(self) -> None:
        require(0.0 <= self.tau <= 1.0, "atc.tau must be in [0, 1]")
        require(self.latent_dim > 0 and self.hidden_dim > 0,
                "atc.latent_dim and atc.hidden_dim must be > 0")


class _ResidualPredictor(nn.Module):
    """``c + MLP(c)``: starts close to the identity, so early training is stable."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(dim, hidden_dim), nn.ReLU(inplace=True),
                                 nn.Linear(hidden_dim, dim))

    def forward(self, c: Tensor) -> Tensor:
        """Refine ``(B, dim)`` codes."""
        out: Tensor = c + self.mlp(c)
        return out


class ATC(Objective):
    """ATC objective; the batch needs ``frames`` and ``frames_next`` (uint8).

    Args:
        encoder: The online encoder.
        config: Hyper-parameters.
        augment: Augmentation applied independently to anchor and positive.

    Attributes:
        compressor: Linear map from embedding to code.
        predictor: Residual MLP on the anchor code.
        W: Bilinear similarity.
        target_encoder / target_compressor: EMA targets.
    """

    def __init__(self, encoder: nn.Module, config: ATCConfig | None = None,
                 augment: AugmentFn | None = None) -> None:
        super().__init__(encoder)
        self.config = cfg = config or ATCConfig()
        self.augment = augment or identity_augment
        self.compressor = nn.Linear(embed_dim_of(encoder), cfg.latent_dim)
        self.predictor = _ResidualPredictor(cfg.latent_dim, cfg.hidden_dim)
        self.W = nn.Parameter(torch.eye(cfg.latent_dim))
        self.to(self.device)
        self.target_encoder = self.register_target("encoder", "target_encoder", cfg.tau)
        self.target_compressor = self.register_target("compressor", "target_compressor",
                                                      cfg.tau)

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Contrast each frame's code with the code of its successor ``k`` steps later."""
        x = self.frames(batch)
        x_next = self.frames(batch, "frames_next")
        if x_next.shape != x.shape:
            raise ValueError(f"frames_next {tuple(x_next.shape)} must match frames "
                             f"{tuple(x.shape)}")
        anchor = self.predictor(self.compressor(self.encoder(self.augment(x, generator))))
        with torch.no_grad():
            positive = self.target_compressor(
                self.target_encoder(self.augment(x_next, generator)))
        loss, accuracy = info_nce(anchor, positive, self.W)
        return loss, {"loss": float(loss.detach()), "accuracy": float(accuracy)}


__all__ = ["ATC", "ATCConfig"]
