"""BYOL: bootstrap your own latent (Grill et al., 2020).

The online network (encoder -> projector -> predictor) predicts, for one augmented
view, the projection that an EMA target network (encoder -> projector) gives for
another view. The loss is the normalised MSE ``2 - 2 cos(p, z)``, symmetrised over
the two views. There are no negatives; the predictor and the slowly moving target
keep the representation from collapsing.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor, nn

from common.config import require
from perception.objectives.base import (
    AugmentFn,
    Objective,
    embed_dim_of,
    identity_augment,
    projection_mlp,
)


@dataclass(frozen=True)
class BYOLConfig:
    """BYOL hyper-parameters.

    Attributes:
        tau: EMA step of the target towards the online network per optimizer step
            (BYOL's momentum is ``1 - tau``).
        projection_dim: Output width of projector and predictor.
        hidden_dim: Hidden width of projector and predictor.
        norm: Normalisation in the MLPs: ``batch`` (as in BYOL; needs batches > 1) or
            ``layer`` (works for any batch size).
    """

    tau: float = 0.01
    projection_dim: int = 128
    hidden_dim: int = 512
    norm: Literal["batch", "layer"] = "batch"

    def __post_init__(self) -> None:
        require(0.0 <= self.tau <= 1.0, "byol.tau must be in [0, 1]")
        require(self.projection_dim > 0 and self.hidden_dim > 0,
                "byol.projection_dim and byol.hidden_dim must be > 0")
        require(self.norm in ("batch", "layer"), "byol.norm must be 'batch' or 'layer'")


def normalized_mse(prediction: Tensor, target: Tensor) -> Tensor:
    """Per-sample ``|p/|p| - z/|z||^2 = 2 - 2 cos(p, z)``, shape ``(B,)``."""
    return 2.0 - 2.0 * F.cosine_similarity(prediction, target, dim=-1)


class BYOL(Objective):
    """BYOL objective.

    Args:
        encoder: The online encoder.
        config: Hyper-parameters.
        augment: Augmentation drawn independently for the two views; ``None`` uses
            none (then only the predictor separates the views, which is degenerate).

    Attributes:
        projector / predictor: Online MLPs.
        target_encoder / target_projector: EMA targets.
    """

    def __init__(self, encoder: nn.Module, config: BYOLConfig | None = None,
                 augment: AugmentFn | None = None) -> None:
        super().__init__(encoder)
        self.config = cfg = config or BYOLConfig()
        self.augment = augment or identity_augment
        self.projector = projection_mlp(embed_dim_of(encoder), cfg.hidden_dim,
                                        cfg.projection_dim, cfg.norm)
        self.predictor = projection_mlp(cfg.projection_dim, cfg.hidden_dim,
                                        cfg.projection_dim, cfg.norm)
        self.to(self.device)
        self.target_encoder = self.register_target("encoder", "target_encoder", cfg.tau)
        self.target_projector = self.register_target("projector", "target_projector", cfg.tau)

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Symmetric BYOL loss between two augmented views of ``batch['frames']``."""
        x = self.frames(batch)
        # Both views in one forward pass: one kernel launch per layer, and batch norm
        # sees the statistics of both views as in the reference implementation.
        views = torch.cat([self.augment(x, generator), self.augment(x, generator)])
        prediction = self.predictor(self.projector(self.encoder(views)))
        with torch.no_grad():
            target = self.target_projector(self.target_encoder(views))
        p1, p2 = prediction.chunk(2)
        z1, z2 = target.chunk(2)
        loss = (normalized_mse(p1, z2) + normalized_mse(p2, z1)).mean()
        with torch.no_grad():
            # Spread of the normalised projections; near zero would signal collapse.
            spread = F.normalize(target, dim=-1).std(dim=0).mean()
        return loss, {"loss": float(loss.detach()), "target_std": float(spread)}


__all__ = ["BYOL", "BYOLConfig", "normalized_mse"]
