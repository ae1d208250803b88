"""Masked autoencoding: reconstruct hidden parts of the frame from the visible rest.

Two paths, chosen by inspecting the encoder:

* **ViT encoders** (a timm ``VisionTransformer`` at ``encoder.backbone``): genuine MAE
  (He et al., 2022). A random ``mask_ratio`` of the patch tokens is dropped, the
  transformer encodes only the visible tokens, and a light transformer decoder that
  gets a shared learned mask token at every hidden position predicts the pixels of
  each masked patch; the loss is the MSE on (per-patch normalised) masked patches.
* **Any other encoder** (CNNs, timm CNNs): the encoder sees the frame with a random
  ``mask_ratio`` of the cells of a ``patch_px`` grid set to zero; a small
  transposed-convolution decoder rebuilds the full frame from the embedding and the
  MSE is taken on the masked pixels only, so copying visible pixels earns nothing.

No EMA target; the decoder is discarded after pre-training.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor, nn

from common.config import require
from perception.objectives.base import Objective, embed_dim_of, rand_on

_VIT_ATTRIBUTES = ("patch_embed", "blocks", "cls_token", "pos_embed", "norm")
_VIT_HOLDERS = ("backbone", "model")


@dataclass(frozen=True)
class MAEConfig:
    """Masked-autoencoding hyper-parameters.

    Attributes:
        mask_ratio: Fraction of patches hidden per frame (rounded to a whole number of
            patches, at least one hidden and one visible).
        patch_px: Side of the square mask cells for non-ViT encoders [px] (ViTs mask
            their own patches).
        decoder_channels: Base width of the convolutional decoder (non-ViT path).
        decoder_dim: Token width of the ViT decoder (multiple of 4 and of the heads).
        decoder_depth: Number of ViT decoder blocks.
        decoder_heads: Attention heads of the ViT decoder.
        norm_pix_loss: ViT path: normalise each target patch to zero mean and unit
            variance (as in MAE; sharper features).
    """

    mask_ratio: float = 0.6
    patch_px: int = 12
    decoder_channels: int = 32
    decoder_dim: int = 128
    decoder_depth: int = 2
    decoder_heads: int = 4
    norm_pix_loss: bool = True

    def __post_init__(self) -> None:
        require(0.0 < self.mask_ratio < 1.0, "mae.mask_ratio must be in (0, 1)")
        require(self.patch_px >= 1, "mae.patch_px must be >= 1")
        require(self.decoder_channels >= 1, "mae.decoder_channels must be >= 1")
        require(self.decoder_depth >= 1 and self.decoder_heads >= 1,
                "mae.decoder_depth and mae.decoder_heads must be >= 1")
        require(self.decoder_dim % 4 == 0 and self.decoder_dim % self.decoder_heads == 0,
                "mae.decoder_dim must be a multiple of 4 and of mae.decoder_heads")


def num_masked(num_patches: int, mask_ratio: float) -> int:
    """How many of ``num_patches`` are hidden: ``round(ratio * n)`` within ``[1, n - 1]``."""
    if num_patches < 2:
        raise ValueError(f"masking needs at least 2 patches, got {num_patches}")
    return min(max(round(mask_ratio * num_patches), 1), num_patches - 1)


def random_mask(batch: int, num_patches: int, mask_ratio: float, generator: torch.Generator,
                device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Draw an independent random patch mask per sample with an exact count.

    Args:
        batch: Number of samples ``B``.
        num_patches: Patches per sample ``N``.
        mask_ratio: Fraction to hide (see :func:`num_masked`).
        generator: Random source.
        device: Where the outputs live.

    Returns:
        ``mask`` bool ``(B, N)`` (True = hidden), ``ids_keep`` ``(B, N_visible)``
        indices of the visible patches, and ``ids_restore`` ``(B, N)``, the inverse
        permutation that puts ``[visible..., hidden...]`` back into patch order.
    """
    hidden = num_masked(num_patches, mask_ratio)
    keep = num_patches - hidden
    # Sorting i.i.d. noise gives a uniformly random permutation per row.
    ids_shuffle = rand_on((batch, num_patches), generator, device).argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, dtype=torch.bool, device=device)
    mask[:, :keep] = False
    mask = torch.gather(mask, 1, ids_restore)
    return mask, ids_shuffle[:, :keep], ids_restore


def patch_mask_to_pixels(mask: Tensor, patch_px: int, height: int, width: int) -> Tensor:
    """Expand a ``(B, gh, gw)`` patch mask to a ``(B, 1, H, W)`` pixel mask.

    The grid may overhang the frame (``gh * patch_px >= H``); the overhang is cut.
    """
    pixels = mask.repeat_interleave(patch_px, dim=1).repeat_interleave(patch_px, dim=2)
    return pixels[:, None, :height, :width]


def masked_mse(prediction: Tensor, target: Tensor, pixel_mask: Tensor) -> Tensor:
    """Mean squared error over the masked pixels only.

    Args:
        prediction: ``(B, C, H, W)``.
        target: ``(B, C, H, W)``.
        pixel_mask: Bool or 0/1 ``(B, 1, H, W)``; 1 marks pixels that count.

    Returns:
        Scalar: the squared error summed over masked pixels and channels, divided by
        their number (zero when nothing is masked).
    """
    weight = pixel_mask.to(prediction.dtype)
    squared = (prediction - target).pow(2) * weight
    count = weight.sum() * prediction.shape[1]
    return squared.sum() / count.clamp_min(1.0)


def patchify(images: Tensor, patch: int) -> Tensor:
    """``(B, C, gh*p, gw*p)`` -> ``(B, gh*gw, p*p*C)`` in row-major patch order.

    The order matches timm's ``PatchEmbed`` (a strided convolution flattened over
    rows then columns), so token ``i`` and target patch ``i`` are the same region.
    """
    b, c, h, w = images.shape
    gh, gw = h // patch, w // patch
    x = images.reshape(b, c, gh, patch, gw, patch)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch * patch * c)


def sincos_pos_embed_2d(grid_h: int, grid_w: int, dim: int) -> Tensor:
    """Fixed 2-D sine-cosine position embedding ``(grid_h * grid_w, dim)``.

    Half the channels encode the row, half the column, each as sines and cosines
    of geometrically spaced frequencies; fixed rather than learned, as in MAE's
    decoder, so the decoder needs no extra parameters per position.
    """
    if dim % 4:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / (10000.0 ** (torch.arange(quarter, dtype=torch.float64) / quarter))
    rows, cols = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                                torch.arange(grid_w, dtype=torch.float64), indexing="ij")
    parts = []
    for coord in (rows.reshape(-1), cols.reshape(-1)):
        angles = coord[:, None] * omega[None, :]
        parts += [angles.sin(), angles.cos()]
    return torch.cat(parts, dim=1).float()


def find_vit(encoder: nn.Module) -> str | None:
    """Attribute name of the timm VisionTransformer inside ``encoder``, or ``None``.

    ``perception.encoders.TimmEncoder`` keeps its timm model at ``backbone``; ``model``
    is accepted too for other wrappers.
    """
    for name in _VIT_HOLDERS:
        model = getattr(encoder, name, None)
        if isinstance(model, nn.Module) and all(hasattr(model, a) for a in _VIT_ATTRIBUTES):
            return name
    return None


def _image_size(encoder: nn.Module) -> tuple[int, int]:
    size = getattr(encoder, "image_size", None)
    if not (isinstance(size, tuple | list) and len(size) == 2):
        raise ValueError(f"MAE needs encoder.image_size = (H, W) to size its decoder; "
                         f"{type(encoder).__name__} has {size!r}")
    return int(size[0]), int(size[1])


def _resize(x: Tensor, size: tuple[int, int]) -> Tensor:
    if tuple(x.shape[-2:]) == size:
        return x
    # The same resampling as perception.encoders.TimmEncoder, so that pre-training sees
    # the inputs the encoder will see afterwards.
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class _ConvDecoder(nn.Module):
    """Embedding -> ``(3, H, W)`` frame with three x2 transposed convolutions."""

    def __init__(self, embed_dim: int, size: tuple[int, int], channels: int) -> None:
        super().__init__()
        self.size = size
        self.start = (math.ceil(size[0] / 8), math.ceil(size[1] / 8))
        c = channels
        self.fc = nn.Linear(embed_dim, 4 * c * self.start[0] * self.start[1])
        self.net = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.ConvTranspose2d(4 * c, 2 * c, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(c, 3, 4, stride=2, padding=1),
        )

    def forward(self, z: Tensor) -> Tensor:
        """Decode ``(B, embed_dim)`` to ``(B, 3, H, W)``."""
        x = self.fc(z).reshape(z.shape[0], -1, *self.start)
        out: Tensor = self.net(x)
        return out[:, :, : self.size[0], : self.size[1]]


class MAE(Objective):
    """Masked-autoencoding objective (ViT token masking or CNN pixel masking).

    Args:
        encoder: The online encoder; a timm ViT inside it (``encoder.backbone``) selects the
            token-masking path, anything else the pixel-masking path (which needs
            ``encoder.image_size``).
        config: Hyper-parameters.
        augment: Unused (masking is the corruption); accepted for a uniform builder.

    Attributes:
        is_vit: Whether the token-masking path is used.
    """

    # Buffers of the ViT path, declared for the type checker.
    pixel_mean: Tensor
    pixel_std: Tensor
    decoder_pos: Tensor

    def __init__(self, encoder: nn.Module, config: MAEConfig | None = None,
                 augment: Any = None) -> None:
        super().__init__(encoder)
        del augment
        self.config = cfg = config or MAEConfig()
        self._vit_attr = find_vit(encoder)
        self.is_vit = self._vit_attr is not None
        if self._vit_attr is None:
            self.image_size = _image_size(encoder)
            self.grid = (math.ceil(self.image_size[0] / cfg.patch_px),
                         math.ceil(self.image_size[1] / cfg.patch_px))
            self.decoder = _ConvDecoder(embed_dim_of(encoder), self.image_size,
                                        cfg.decoder_channels)
        else:
            self._build_vit_decoder(getattr(encoder, self._vit_attr), cfg)
        self.to(self.device)

    # ----------------------------------------------------------------- ViT path
    def _build_vit_decoder(self, vit: Any, cfg: MAEConfig) -> None:
        patch_embed = vit.patch_embed
        self.patch = int(patch_embed.patch_size[0])
        if tuple(patch_embed.patch_size) != (self.patch, self.patch):
            raise ValueError(f"MAE needs square ViT patches, got {patch_embed.patch_size}")
        self.image_size = (int(patch_embed.img_size[0]), int(patch_embed.img_size[1]))
        self.grid = (int(patch_embed.grid_size[0]), int(patch_embed.grid_size[1]))
        self.num_prefix = int(getattr(vit, "num_prefix_tokens", 1))
        width = int(vit.pos_embed.shape[-1] if vit.pos_embed is not None else vit.embed_dim)
        mean, std = self._pixel_stats(vit)
        self.register_buffer("pixel_mean", mean.reshape(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", std.reshape(1, 3, 1, 1), persistent=False)
        dim = cfg.decoder_dim
        self.decoder_embed = nn.Linear(width, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.register_buffer("decoder_pos", sincos_pos_embed_2d(*self.grid, dim)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            nn.TransformerEncoderLayer(dim, cfg.decoder_heads, dim_feedforward=4 * dim,
                                       dropout=0.0, activation="gelu", batch_first=True,
                                       norm_first=True)
            for _ in range(cfg.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dim)
        self.decoder_pred = nn.Linear(dim, self.patch * self.patch * 3)

    def _pixel_stats(self, vit: nn.Module) -> tuple[Tensor, Tensor]:
        """Input normalisation of the ViT: the encoder's, else the timm model's own."""
        mean = getattr(self.encoder, "mean", None)
        std = getattr(self.encoder, "std", None)
        if mean is None or std is None:
            pretrained_cfg = getattr(vit, "pretrained_cfg", None) or {}
            mean = pretrained_cfg.get("mean", (0.5, 0.5, 0.5))
            std = pretrained_cfg.get("std", (0.5, 0.5, 0.5))
        return (torch.as_tensor(mean, dtype=torch.float32).reshape(3),
                torch.as_tensor(std, dtype=torch.float32).reshape(3))

    def _vit_loss(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        vit: Any = getattr(self.encoder, str(self._vit_attr))
        images = _resize(x, self.image_size)
        tokens = vit.patch_embed((images - self.pixel_mean) / self.pixel_std)
        if tokens.ndim == 4:  # NHWC output of PatchEmbed(output_fmt="NHWC")
            tokens = tokens.flatten(1, 2)
        b, n, width = tokens.shape
        prefix_pos = None
        if vit.pos_embed is not None:
            if getattr(vit, "no_embed_class", False):
                tokens = tokens + vit.pos_embed
            else:
                tokens = tokens + vit.pos_embed[:, self.num_prefix:]
                prefix_pos = vit.pos_embed[:, : self.num_prefix]
        mask, ids_keep, ids_restore = random_mask(b, n, self.config.mask_ratio, generator,
                                                  tokens.device)
        visible = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, width))
        prefix = [t.expand(b, -1, -1) for t in (vit.cls_token, getattr(vit, "reg_token", None))
                  if t is not None]
        if prefix:
            prefix_tokens = torch.cat(prefix, dim=1)
            if prefix_pos is not None:
                prefix_tokens = prefix_tokens + prefix_pos
            visible = torch.cat([prefix_tokens, visible], dim=1)
        h = vit.norm(vit.blocks(vit.norm_pre(vit.pos_drop(visible))))

        d = self.decoder_embed(h)
        n_prefix = d.shape[1] - ids_keep.shape[1]
        d_prefix, d_visible = d[:, :n_prefix], d[:, n_prefix:]
        hidden = self.mask_token.expand(b, n - d_visible.shape[1], -1)
        full = torch.cat([d_visible, hidden], dim=1)
        full = torch.gather(full, 1, ids_restore[..., None].expand(-1, -1, d.shape[-1]))
        d = torch.cat([d_prefix, full + self.decoder_pos], dim=1)
        for block in self.decoder_blocks:
            d = block(d)
        prediction = self.decoder_pred(self.decoder_norm(d))[:, n_prefix:]

        target = patchify(images, self.patch)
        if self.config.norm_pix_loss:
            mu = target.mean(dim=-1, keepdim=True)
            var = target.var(dim=-1, keepdim=True, unbiased=False)
            target = (target - mu) / (var + 1e-6).sqrt()
        per_patch = (prediction - target).pow(2).mean(dim=-1)
        weight = mask.float()
        loss = (per_patch * weight).sum() / weight.sum()
        return loss, {"loss": float(loss.detach()), "mask_ratio": float(weight.mean())}

    # ----------------------------------------------------------------- CNN path
    def _cnn_loss(self, x: Tensor, generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        images = x
        b = images.shape[0]
        gh, gw = self.grid
        mask, _, _ = random_mask(b, gh * gw, self.config.mask_ratio, generator, images.device)
        pixel_mask = patch_mask_to_pixels(mask.reshape(b, gh, gw), self.config.patch_px,
                                          *self.image_size)
        masked = images.masked_fill(pixel_mask, 0.0)
        prediction = self.decoder(self.encoder(masked))
        loss = masked_mse(prediction, images, pixel_mask)
        with torch.no_grad():
            visible_mse = masked_mse(prediction, images, ~pixel_mask)
        return loss, {"loss": float(loss.detach()), "mask_ratio": float(mask.float().mean()),
                      "visible_mse": float(visible_mse)}

    def loss(self, batch: Mapping[str, Tensor],
             generator: torch.Generator) -> tuple[Tensor, dict[str, float]]:
        """Reconstruction loss on the hidden patches of ``batch['frames']``."""
        x = self.frames(batch)
        expected = getattr(self.encoder, "image_size", None)
        if expected is not None and tuple(x.shape[-2:]) != tuple(expected):
            raise ValueError(f"MAE: encoder expects frames of size (H, W) = {tuple(expected)}, "
                             f"got {tuple(x.shape[-2:])}")
        return self._vit_loss(x, generator) if self.is_vit else self._cnn_loss(x, generator)


__all__ = [
    "MAE",
    "MAEConfig",
    "find_vit",
    "masked_mse",
    "num_masked",
    "patch_mask_to_pixels",
    "patchify",
    "random_mask",
    "sincos_pos_embed_2d",
]
