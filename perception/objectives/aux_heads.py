"""Auxiliary multi-task heads on simulator labels.

Small heads read the online embedding and predict labels the simulator gives for
free: ego state (speed, lane offset, heading error), the distance to the lead
vehicle, the route command and traffic-signal state, and low-resolution depth and
semantic maps. Added to a self-supervised objective with :class:`WithAuxiliary`, they
steer the representation towards what driving needs.

Missing labels are not errors: a head whose label key is absent from the batch is
skipped, regression labels that are NaN/inf (e.g. no lead vehicle) and class labels
below zero (e.g. no signal in view) are left out of the mean.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor, nn

from common.config import require
from perception.objectives.base import Objective, device_of, embed_dim_of

HeadKind = Literal["regression", "classification", "depth", "semantic"]


@dataclass(frozen=True)
class HeadConfig:
    """One auxiliary head.

    Attributes:
        label: Batch key of the label it predicts.
        kind: ``regression`` (float ``(B,)``), ``classification`` (int ``(B,)``, <0 =
            ignore), ``depth`` (float metres ``(B, H, W)``) or ``semantic`` (int class
            ids ``(B, H, W)``); dense labels are compared at ``AuxHeadsConfig.dense_size``.
        weight: Weight of its loss in the total.
        num_classes: Number of classes (classification and semantic heads).
        scale: Regression: the label is divided by this before the loss so that all
            heads have unit-order targets [label unit]. Depth: the range that is
            mapped to [0, 1], farther depths are clipped [m].
    """

    label: str
    kind: HeadKind = "regression"
    weight: float = 1.0
    num_classes: int = 0
    scale: float = 1.0

    def __post_init__(self) -> None:
        require(bool(self.label), "aux head label must be a non-empty string")
        require(self.kind in ("regression", "classification", "depth", "semantic"),
                f"aux head '{self.label}': kind must be one of regression, classification, "
                "depth, semantic")
        require(self.weight >= 0.0, f"aux head '{self.label}': weight must be >= 0")
        require(self.scale > 0.0, f"aux head '{self.label}': scale must be > 0")
        if self.kind in ("classification", "semantic"):
            require(self.num_classes >= 2,
                    f"aux head '{self.label}': num_classes must be >= 2 for {self.kind}")


@dataclass(frozen=True)
class AuxHeadsConfig:
    """Which auxiliary heads to train (none by default).

    Attributes:
        heads: The heads; labels must be unique.
        hidden_dim: Hidden width of the vector heads' MLPs.
        dense_size: ``(H, W)`` of the predicted depth / semantic maps; labels are
            downsampled to it.
        dense_channels: Base channel count of the dense decoders.
    """

    heads: tuple[HeadConfig, ...] = ()
    hidden_dim: int = 256
    dense_size: tuple[int, int] = (21, 21)
    dense_channels: int = 32

    def __post_init__(self) -> None:
        labels = [h.label for h in self.heads]
        require(len(set(labels)) == len(labels), "aux.heads: labels must be unique")
        require(self.hidden_dim >= 1 and self.dense_channels >= 1,
                "aux.hidden_dim and aux.dense_channels must be >= 1")
        require(self.dense_size[0] >= 1 and self.dense_size[1] >= 1,
                "aux.dense_size must be positive")


#: A ready-made set of driving heads (label names as the frame datasets store them).
DRIVING_HEADS: tuple[HeadConfig, ...] = (
    HeadConfig("speed_mps", "regression", scale=10.0),
    HeadConfig("lane_offset_m", "regression", scale=1.0),
    HeadConfig("heading_error_rad", "regression", scale=0.2),
    HeadConfig("lead_distance_m", "regression", scale=30.0),
    HeadConfig("route_command", "classification", num_classes=4),
    HeadConfig("signal_state", "classification", num_classes=3),
    HeadConfig("depth", "depth", scale=80.0),
    HeadConfig("semantic", "semantic", num_classes=7),
)


class _DenseDecoder(nn.Module):
    """Embedding -> ``(out_channels, H, W)`` map with two x2 transposed convolutions."""

    def __init__(self, embed_dim: int, out_channels: int, size: tuple[int, int],
                 channels: int) -> None:
        super().__init__()
        self.size = size
        self.start = (math.ceil(size[0] / 4), math.ceil(size[1] / 4))
        self.fc = nn.Linear(embed_dim, 2 * channels * self.start[0] * self.start[1])
        self.net = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * channels, channels, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, out_channels, 3, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``(B, embed_dim)`` to ``(B, out_channels, H, W)``."""
        x = self.fc(z).reshape(z.shape[0], -1, *self.start)
        out: Tensor = self.net(x)
        return out[:, :, : self.size[0], : self.size[1]]


def downsample_depth(depth: Tensor, size: tuple[int, int], max_depth: float) -> tuple[Tensor,
                                                                                       Tensor]:
    """Area-average metric depth to ``size``, ignoring non-finite pixels.

    Args:
        depth: Float ``(B, H, W)`` metres; NaN/inf mark pixels without depth.
        size: Output ``(h, w)``.
        max_depth: Depths are clipped to ``[0, max_depth]`` and divided by it.

    Returns:
        Normalised depth ``(B, 1, h, w)`` in [0, 1] and a bool validity map of the same
        shape (False where a cell had no finite pixel).
    """
    d = depth.float()[:, None]
    valid = torch.isfinite(d)
    d = torch.where(valid, d.clamp(0.0, max_depth) / max_depth, torch.zeros_like(d))
    weight = F.adaptive_avg_pool2d(valid.float(), size)
    mean = F.adaptive_avg_pool2d(d, size) / weight.clamp_min(1e-6)
    return mean, weight > 0


def downsample_semantic(semantic: Tensor, size: tuple[int, int], num_classes: int) -> Tensor:
    """Majority class of each cell when shrinking ``(B, H, W)`` ids to ``(B, h, w)``.

    Ids outside ``[0, num_classes)`` are treated as unlabelled; a cell with no labelled
    pixel gets -1 (ignored by the loss).
    """
    ids = semantic.long()
    known = (ids >= 0) & (ids < num_classes)
    one_hot = F.one_hot(ids.clamp(0, num_classes - 1), num_classes).permute(0, 3, 1, 2)
    one_hot = one_hot.float() * known[:, None].float()
    votes = F.adaptive_avg_pool2d(one_hot, size)
    share, label = votes.max(dim=1)
    return torch.where(share > 0, label, torch.full_like(label, -1))


class AuxiliaryHeads(nn.Module):
    """Heads from the embedding to simulator labels, and their masked losses.

    Args:
        embed_dim: Width of the embedding the heads read.
        config: Which heads.
    """

    def __init__(self, embed_dim: int, config: AuxHeadsConfig | None = None) -> None:
        super().__init__()
        self.config = cfg = config or AuxHeadsConfig()
        self.heads = nn.ModuleDict()
        self._specs: dict[str, HeadConfig] = {}
        for i, spec in enumerate(cfg.heads):
            head: nn.Module
            if spec.kind in ("regression", "classification"):
                out = 1 if spec.kind == "regression" else spec.num_classes
                head = nn.Sequential(nn.Linear(embed_dim, cfg.hidden_dim), nn.ReLU(inplace=True),
                                     nn.Linear(cfg.hidden_dim, out))
            else:
                out = 1 if spec.kind == "depth" else spec.num_classes
                head = _DenseDecoder(embed_dim, out, cfg.dense_size, cfg.dense_channels)
            # ModuleDict keys may not contain '.', labels might; the index keeps them unique.
            key = f"h{i}_{spec.label.replace('.', '_')}"
            self.heads[key] = head
            self._specs[key] = spec

    def forward(self, embedding: Tensor) -> dict[str, Tensor]:
        """Raw predictions of every head, keyed by label.

        Returns:
            ``(B,)`` for regression (in label units, i.e. rescaled), ``(B, C)`` logits
            for classification, ``(B, 1, h, w)`` normalised depth, ``(B, C, h, w)``
            semantic logits.
        """
        out: dict[str, Tensor] = {}
        for key, head in self.heads.items():
            spec = self._specs[key]
            y = head(embedding)
            out[spec.label] = y[:, 0] * spec.scale if spec.kind == "regression" else y
        return out

    def loss(self, embedding: Tensor,
             batch: Mapping[str, Tensor]) -> tuple[Tensor, dict[str, float]]:
        """Weighted sum of the losses of the heads whose labels are in ``batch``.

        Args:
            embedding: ``(B, embed_dim)`` online embedding.
            batch: Labels by name; absent ones are skipped.

        Returns:
            The weighted total (a zero with gradient graph when no label is present)
            and per-head logs ``aux/<label>`` plus ``aux/<label>/accuracy`` for
            classifiers.

        Raises:
            ValueError: On a label of the wrong shape or a class id >= ``num_classes``.
        """
        total = embedding.sum() * 0.0  # keeps the graph (and device) when no head applies
        logs: dict[str, float] = {}
        for key, head in self.heads.items():
            spec = self._specs[key]
            if spec.label not in batch:
                continue
            label = batch[spec.label].to(embedding.device, non_blocking=True)
            if label.shape[0] != embedding.shape[0]:
                raise ValueError(f"aux label '{spec.label}' has batch size {label.shape[0]}, "
                                 f"embedding has {embedding.shape[0]}")
            result = self._head_loss(spec, head(embedding), label)
            if result is None:
                continue
            loss, extra = result
            total = total + spec.weight * loss
            logs[f"aux/{spec.label}"] = float(loss.detach())
            logs.update({f"aux/{spec.label}/{k}": v for k, v in extra.items()})
        return total, logs

    def _head_loss(self, spec: HeadConfig, prediction: Tensor,
                   label: Tensor) -> tuple[Tensor, dict[str, float]] | None:
        """One head's loss, or ``None`` when the batch has no usable label for it."""
        if spec.kind == "regression":
            target = label.reshape(label.shape[0], -1)
            if target.shape[1] != 1:
                raise ValueError(f"aux regression label '{spec.label}' must be (B,), got "
                                 f"{tuple(label.shape)}")
            target = target[:, 0].float()
            valid = torch.isfinite(target)
            if not bool(valid.any()):
                return None
            # Huber on unit-scale targets: robust to the odd extreme label.
            loss = F.smooth_l1_loss(prediction[:, 0][valid], target[valid] / spec.scale)
            return loss, {}
        if spec.kind == "classification":
            target = self._class_ids(spec, label.reshape(-1))
            valid = target >= 0
            if not bool(valid.any()):
                return None
            logits = prediction[valid]
            loss = F.cross_entropy(logits, target[valid])
            accuracy = (logits.detach().argmax(dim=1) == target[valid]).float().mean()
            return loss, {"accuracy": float(accuracy)}
        size = self.config.dense_size
        if label.ndim != 3:
            raise ValueError(f"aux dense label '{spec.label}' must be (B, H, W), got "
                             f"{tuple(label.shape)}")
        if spec.kind == "depth":
            target, valid = downsample_depth(label, size, spec.scale)
            if not bool(valid.any()):
                return None
            return F.smooth_l1_loss(prediction[valid], target[valid]), {}
        ids = downsample_semantic(label, size, spec.num_classes)
        if not bool((ids >= 0).any()):
            return None
        loss = F.cross_entropy(prediction, ids, ignore_index=-1)
        hit = (prediction.detach().argmax(dim=1) == ids)[ids >= 0]
        return loss, {"accuracy": float(hit.float().mean())}

    @staticmethod
    def _class_ids(spec: HeadConfig, label: Tensor) -> Tensor:
        """Integer class ids with -1 for ignored; float labels (NaN = ignore) allowed."""
        if label.is_floating_point():
            label = torch.where(torch.isfinite(label), label, torch.full_like(label, -1.0))
            label = label.round()
        ids = label.long()
        if bool((ids >= spec.num_classes).any()):
            raise ValueError(f"aux label '{spec.label}' has class id {int(ids.max())} >= "
                             f"num_classes {spec.num_classes}")
        return ids.clamp_min(-1)


class WithAuxiliary(Objective):
    """A self-supervised objective plus weighted auxiliary head losses.

    The heads read the online encoder's embedding of the *unaugmented* frames: the
    labels describe the frame as recorded, and augmentations such as flips would
    change steering-dependent labels. That costs one extra encoder forward pass.

    Args:
        objective: The self-supervised objective (its encoder is shared).
        heads: The auxiliary heads (moved to the encoder's device).
    """

    def __init__(self, objective: Objective, heads: AuxiliaryHeads) -> None:
        # Skip Objective.__init__: registering the shared encoder a second time would
        # duplicate its weights in state_dict (and safetensors rejects shared tensors).
        nn.Module.__init__(self)
        self._ema_pairs = []
        self.objective = objective
        self.aux = heads.to(device_of(objective.encoder))

    @property
    def encoder(self) -> nn.Module:  # type: ignore[override]
        """The wrapped objective's online encoder."""
        return self.objective.encoder

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """The objective's loss plus the weighted head losses; logs of both."""
        loss, logs = self.objective.loss(batch, generator)
        embedding = self.encoder(self.frames(batch))
        aux_loss, aux_logs = self.aux.loss(embedding, batch)
        logs = dict(logs)
        logs.update(aux_logs)
        logs["ssl_loss"] = logs.get("loss", float(loss.detach()))
        total = loss + aux_loss
        logs["aux_loss"] = float(aux_loss.detach())
        logs["loss"] = float(total.detach())
        return total, logs

    def after_step(self) -> None:
        """Delegate the EMA updates to the wrapped objective."""
        self.objective.after_step()

    def target_modules(self) -> Iterator[nn.Module]:
        """The wrapped objective's EMA targets."""
        return self.objective.target_modules()


def build_aux_heads(encoder: nn.Module, config: AuxHeadsConfig) -> AuxiliaryHeads:
    """Heads for ``encoder``'s embedding, on its device."""
    return AuxiliaryHeads(embed_dim_of(encoder), config).to(device_of(encoder))


__all__ = [
    "DRIVING_HEADS",
    "AuxHeadsConfig",
    "AuxiliaryHeads",
    "HeadConfig",
    "WithAuxiliary",
    "build_aux_heads",
    "downsample_depth",
    "downsample_semantic",
]
