"""Shared machinery of the self-supervised objectives.

An :class:`Objective` wraps an online encoder and whatever heads, decoders and
momentum (EMA) targets its loss needs. A training loop does::

    loss, logs = objective.loss(batch, generator)
    loss.backward(); optimizer.step()          # optimizer over trainable_parameters()
    objective.after_step()                      # EMA targets follow the online weights

Randomness (augmentations, masks) is drawn only from the ``torch.Generator`` passed
to :meth:`Objective.loss`, so a run is reproducible from its seed. Tensors follow the
encoder's device; the generator may live on the CPU or on that device.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor, nn

from perception.encoders import to_float_nchw

#: An augmentation: float ``(B, 3, H, W)`` frames in [0, 1] and a generator in, the
#: augmented frames (same shape) out. ``perception.augment.Augmenter`` is one.
AugmentFn = Callable[[Tensor, torch.Generator], Tensor]


def identity_augment(x: Tensor, generator: torch.Generator) -> Tensor:
    """The no-op augmentation used when an objective is built without one."""
    del generator
    return x


def rand_on(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> Tensor:
    """Uniform [0, 1) numbers drawn from ``generator`` and placed on ``device``.

    Drawing on the generator's own device lets a CPU generator drive CUDA training
    (torch refuses a CPU generator for a CUDA sampling op).
    """
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def embed_dim_of(encoder: nn.Module) -> int:
    """The ``embed_dim`` of an encoder, with a clear error when it has none."""
    dim = getattr(encoder, "embed_dim", None)
    if not isinstance(dim, int) or dim <= 0:
        raise ValueError(f"encoder {type(encoder).__name__} must have a positive int "
                         f"attribute 'embed_dim', got {dim!r}")
    return dim


def device_of(module: nn.Module) -> torch.device:
    """The device of a module's first parameter (CPU for a parameterless module)."""
    for p in module.parameters():
        return p.device
    return torch.device("cpu")


def make_target(module: nn.Module) -> nn.Module:
    """A frozen copy of ``module`` to serve as its momentum (EMA) target.

    Its parameters have ``requires_grad=False`` so that neither autograd nor an
    optimizer built from :meth:`Objective.trainable_parameters` touches them.
    """
    target = copy.deepcopy(module)
    for p in target.parameters():
        p.requires_grad_(False)
    return target


@torch.no_grad()
def ema_update_(target: nn.Module, online: nn.Module, tau: float) -> None:
    """Move ``target`` towards ``online`` in place: ``t <- (1 - tau) * t + tau * o``.

    Floating-point buffers (e.g. batch-norm running statistics) are copied, since
    averaging statistics of different weights has no meaning; integer buffers too.

    Args:
        target: The EMA copy.
        online: The trained module with the same structure.
        tau: Step towards the online weights in [0, 1]; 1 copies them.
    """
    for p_t, p_o in zip(target.parameters(), online.parameters(), strict=True):
        p_t.lerp_(p_o.detach(), tau)
    for b_t, b_o in zip(target.buffers(), online.buffers(), strict=True):
        b_t.copy_(b_o)


def info_nce(query: Tensor, key: Tensor, weight: Tensor | None = None,
             scale: float = 1.0) -> tuple[Tensor, Tensor]:
    """InfoNCE over a batch: row ``i`` of ``key`` is the positive of row ``i`` of ``query``.

    The logits are ``scale * query @ weight @ key.T`` (``weight`` = identity when
    ``None``), so with a learned ``weight`` this is CURL's bilinear similarity; the
    other rows of the batch are the negatives. For independent random embeddings the
    loss is about ``log(B)``; for identical, normalised query and key with a large
    ``scale`` it approaches zero.

    Args:
        query: ``(B, D)`` anchors (carry the gradient).
        key: ``(B, D)`` positives, usually from a momentum encoder without gradient.
        weight: Optional ``(D, D)`` bilinear matrix.
        scale: Multiplier of the logits (inverse temperature).

    Returns:
        The mean cross-entropy loss and the top-1 accuracy of picking the positive.
    """
    if query.ndim != 2 or query.shape != key.shape:
        raise ValueError(f"query and key must both be (B, D), got {tuple(query.shape)} "
                         f"and {tuple(key.shape)}")
    projected = key if weight is None else key @ weight.T
    logits = scale * (query @ projected.T)
    labels = torch.arange(query.shape[0], device=query.device)
    loss = F.cross_entropy(logits, labels)
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return loss, accuracy


class Objective(nn.Module):
    """Base class of self-supervised objectives.

    Subclasses set :attr:`encoder` (the online encoder that is saved and later used
    for embeddings), register momentum targets with :meth:`register_target`, and
    implement :meth:`loss`.

    Attributes:
        encoder: The online encoder.
    """

    encoder: nn.Module

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        # (online attribute, target attribute, tau) triples updated by after_step; names
        # rather than module references so that copies and .to() stay consistent.
        self._ema_pairs: list[tuple[str, str, float]] = []

    @property
    def device(self) -> torch.device:
        """The device of the online encoder, where every batch is moved."""
        return device_of(self.encoder)

    def register_target(self, online_name: str, target_name: str, tau: float) -> nn.Module:
        """Create the EMA target of submodule ``online_name`` as attribute ``target_name``.

        Args:
            online_name: Attribute name of the online module (already set).
            target_name: Attribute name for its frozen copy.
            tau: EMA step used by :meth:`after_step`.

        Returns:
            The target module.
        """
        if not 0.0 <= tau <= 1.0:
            raise ValueError(f"EMA tau must be in [0, 1], got {tau}")
        target = make_target(getattr(self, online_name))
        setattr(self, target_name, target)
        self._ema_pairs.append((online_name, target_name, tau))
        return target

    def target_modules(self) -> Iterator[nn.Module]:
        """The EMA target modules of this objective."""
        for _, target_name, _ in self._ema_pairs:
            yield getattr(self, target_name)

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Compute the training loss on a batch.

        Args:
            batch: At least ``frames``, uint8 ``(B, H, W, 3)``; see each objective for
                further keys.
            generator: Source of all randomness (augmentations, masks).

        Returns:
            The scalar loss (with gradient) and a dict of floats to log.
        """
        raise NotImplementedError

    def after_step(self) -> None:
        """Update the EMA targets; call after every optimizer step."""
        for online_name, target_name, tau in self._ema_pairs:
            ema_update_(getattr(self, target_name), getattr(self, online_name), tau)

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The parameters an optimizer should update: online parts only.

        EMA targets are excluded (they have ``requires_grad=False``), as is anything
        the caller froze.
        """
        frozen = {id(p) for t in self.target_modules() for p in t.parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in frozen]

    def frames(self, batch: Mapping[str, Tensor], key: str = "frames") -> Tensor:
        """Batch entry ``key`` as float NCHW frames in [0, 1] on the encoder's device."""
        if key not in batch:
            raise KeyError(f"{type(self).__name__} needs batch key '{key}'; batch has "
                           f"{', '.join(sorted(batch)) or 'no keys'}")
        return to_float_nchw(batch[key], self.device)


def projection_mlp(in_dim: int, hidden_dim: int, out_dim: int,
                   norm: str = "batch") -> nn.Sequential:
    """Two-layer MLP ``Linear -> norm -> ReLU -> Linear`` (BYOL projector/predictor)."""
    norm_layer: nn.Module
    if norm == "batch":
        norm_layer = nn.BatchNorm1d(hidden_dim)
    elif norm == "layer":
        norm_layer = nn.LayerNorm(hidden_dim)
    else:
        raise ValueError(f"unknown norm '{norm}'; valid: batch, layer")
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), norm_layer, nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, out_dim))


__all__ = [
    "AugmentFn",
    "Objective",
    "device_of",
    "ema_update_",
    "embed_dim_of",
    "identity_augment",
    "info_nce",
    "make_target",
    "projection_mlp",
    "rand_on",
]
