"""Image encoders behind one interface: uint8 camera frames in, float embeddings out.

Three families are available through :func:`build_encoder`:

- ``nature_cnn``: the three-layer DQN "Nature" CNN (Mnih et al., 2015).
- ``impala_cnn``: the IMPALA residual CNN (Espeholt et al., 2018).
- ``timm:<model>``: any model of the timm library, e.g. ``timm:resnet18``,
  ``timm:mobilenetv3_small_100``, ``timm:efficientnet_b0`` or
  ``timm:vit_tiny_patch16_224``. Frames are normalised with the model's mean/std and,
  for models that need a fixed input size (ViTs), resized to it inside the encoder.

Every encoder accepts uint8 frames ``(B, H, W, 3)`` or ``(B, 3, H, W)``, or float frames
already scaled to [0, 1] in ``(B, 3, H, W)``, and returns ``(B, embed_dim)`` floats.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Any, Self, TypeVar
from urllib.parse import urlparse

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as nnf

from common.config import ConfigError, from_dict, require

#: Built-in architectures (a ``timm:<model>`` name selects any timm model as well).
ENCODER_NAMES: tuple[str, ...] = ("nature_cnn", "impala_cnn")

#: Prefix that selects a timm model, as in ``timm:resnet18``.
TIMM_PREFIX = "timm:"

#: Default embedding sizes of the built-in architectures.
DEFAULT_EMBED_DIMS: dict[str, int] = {"nature_cnn": 512, "impala_cnn": 256}

_TIMM_EXAMPLES = ("resnet18", "mobilenetv3_small_100", "efficientnet_b0", "vit_tiny_patch16_224")
VALID_CHOICES_TEXT = (
    ", ".join(ENCODER_NAMES)
    + f", or {TIMM_PREFIX}<any timm model name> (e.g. "
    + ", ".join(TIMM_PREFIX + n for n in _TIMM_EXAMPLES)
    + ")"
)

E = TypeVar("E", bound="Encoder")


def to_float_nchw(frames: Tensor | np.ndarray, device: torch.device | str | None = None) -> Tensor:
    """Convert a batch of frames to float ``(B, 3, H, W)`` in [0, 1].

    uint8 frames may be channels-last ``(B, H, W, 3)`` (as rendered by the env) or
    channels-first ``(B, 3, H, W)``; they are divided by 255. Float frames must already
    be channels-first and in [0, 1]; they pass through (float64 becomes float32). The
    value range of float input is not checked, because that would force a device sync.

    Args:
        frames: The frames, as a tensor or a numpy array.
        device: Where to put the result. uint8 frames are moved before conversion, so a
            host-to-device copy moves a quarter of the bytes of the float result.

    Returns:
        A float tensor ``(B, 3, H, W)``.

    Raises:
        ValueError: On a shape that is not a batch of 3-channel images, an ambiguous
            uint8 layout, or an unsupported dtype.
    """
    x = torch.as_tensor(frames) if isinstance(frames, np.ndarray) else frames
    if not isinstance(x, Tensor):
        raise ValueError(f"frames must be a torch.Tensor or numpy array, got {type(x).__name__}")
    if x.ndim != 4:
        raise ValueError(f"frames must be a batch of images with 4 dimensions (B, H, W, 3) or "
                         f"(B, 3, H, W), got shape {tuple(x.shape)}")
    if device is not None:
        x = x.to(device, non_blocking=True)
    if x.dtype == torch.uint8:
        first, last = x.shape[1] == 3, x.shape[-1] == 3
        if first and last:
            raise ValueError(f"uint8 frames of shape {tuple(x.shape)} are ambiguous: both "
                             "dimension 1 and the last dimension have size 3")
        if last:
            # Contiguous so that both layouts reach the convolutions in the same memory
            # format: kernels differ between formats and would change the last bits.
            x = x.permute(0, 3, 1, 2).contiguous()
        elif not first:
            raise ValueError(f"uint8 frames must be (B, H, W, 3) or (B, 3, H, W), "
                             f"got shape {tuple(x.shape)}")
        return x.float().div_(255.0)
    if x.is_floating_point():
        if x.shape[1] != 3:
            raise ValueError(f"float frames must be channels-first (B, 3, H, W) in [0, 1], "
                             f"got shape {tuple(x.shape)}")
        return x.float() if x.dtype == torch.float64 else x
    raise ValueError(f"frames must be uint8 (0..255) or float in [0, 1], got dtype {x.dtype}")


class Encoder(nn.Module):
    """Base class of all encoders: frames in, ``(B, embed_dim)`` embeddings out.

    Attributes:
        name: The architecture name, as accepted by :func:`build_encoder`.
        embed_dim: Size of the embedding.
        image_size: Expected input frame size ``(H, W)`` in pixels.
        frozen: When true, :meth:`train` keeps the encoder in eval mode so that batch-norm
            statistics and dropout stay fixed (see :func:`freeze`).
        quantized: True for an int8-quantised copy, which runs on the CPU only.
    """

    name: str
    embed_dim: int
    image_size: tuple[int, int]
    frozen: bool
    quantized: bool

    def __init__(self, name: str, embed_dim: int, image_size: tuple[int, int]) -> None:
        super().__init__()
        self.name = name
        self.embed_dim = int(embed_dim)
        self.image_size = (int(image_size[0]), int(image_size[1]))
        self.frozen = False
        self.quantized = False

    def forward(self, frames: Tensor | np.ndarray) -> Tensor:
        """Embed a batch of frames.

        Args:
            frames: uint8 ``(B, H, W, 3)`` or ``(B, 3, H, W)``, or float ``(B, 3, H, W)``
                in [0, 1], with ``(H, W) == image_size``. Frames on another device than
                the encoder are moved to it.

        Returns:
            Float embeddings ``(B, embed_dim)``.
        """
        device = self.device
        if self.quantized and isinstance(frames, Tensor) and frames.device.type != "cpu":
            raise ValueError("an int8-quantised encoder runs on the CPU only; pass CPU frames")
        x = to_float_nchw(frames, device=device)
        if tuple(x.shape[-2:]) != self.image_size:
            raise ValueError(f"encoder '{self.name}' expects frames of size (H, W) = "
                             f"{self.image_size}, got {tuple(x.shape[-2:])}")
        return self.forward_features(x)

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed float frames ``(B, 3, H, W)`` in [0, 1]; implemented by subclasses."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the encoder's first parameter or buffer (CPU if it has none)."""
        first = next(chain(self.parameters(), self.buffers()), None)
        return first.device if first is not None else torch.device("cpu")

    def train(self, mode: bool = True) -> Self:
        """Set training mode; a frozen encoder always stays in eval mode.

        A frozen encoder is a fixed feature extractor: letting a parent module's
        ``train()`` switch it back would update batch-norm running statistics (changing
        the features under a policy) and re-enable dropout.
        """
        return super().train(mode and not self.frozen)


def freeze(encoder: E) -> E:
    """Freeze ``encoder`` in place: no gradients, eval mode, kept so by ``train()``.

    Returns:
        The same encoder, for chaining.
    """
    encoder.frozen = True
    encoder.requires_grad_(False)
    encoder.eval()
    return encoder


def unfreeze(encoder: E) -> E:
    """Undo :func:`freeze`: gradients on again; the mode is left as it is (eval).

    Returns:
        The same encoder, for chaining.
    """
    if encoder.quantized:
        raise ValueError("an int8-quantised encoder cannot be unfrozen (it has no float weights)")
    encoder.frozen = False
    encoder.requires_grad_(True)
    return encoder


def _conv_out_px(size_px: int, kernel: int, stride: int, padding: int = 0) -> int:
    return (size_px + 2 * padding - kernel) // stride + 1


class NatureCNN(Encoder):
    """The DQN Nature CNN: conv 32 8x8/4, 64 4x4/2, 64 3x3/1, then linear + ReLU.

    Args:
        embed_dim: Size of the embedding (default 512).
        image_size: Input frame size ``(H, W)`` in pixels; at least 36 on each side.
    """

    def __init__(self, embed_dim: int = 512, image_size: tuple[int, int] = (84, 84)) -> None:
        super().__init__("nature_cnn", embed_dim, image_size)
        out_hw = []
        for side in self.image_size:
            s = _conv_out_px(_conv_out_px(_conv_out_px(side, 8, 4), 4, 2), 3, 1)
            if s < 1:
                raise ConfigError(f"nature_cnn needs frames of at least 36x36 pixels, "
                                  f"got image_size={self.image_size}")
            out_hw.append(s)
        self.convs = nn.Sequential(
            nn.Conv2d(3, 32, kernel_size=8, stride=4), nn.ReLU(),
            nn.Conv2d(32, 64, kernel_size=4, stride=2), nn.ReLU(),
            nn.Conv2d(64, 64, kernel_size=3, stride=1), nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Sequential(nn.Linear(64 * out_hw[0] * out_hw[1], self.embed_dim),
                                  nn.ReLU())

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed float frames ``(B, 3, H, W)`` in [0, 1]."""
        return self.head(self.convs(x))


class _ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)
        self.conv1 = nn.Conv2d(channels, channels, kernel_size=3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        # Not in-place: x is still needed for the skip connection.
        y = self.conv0(nnf.relu(x))
        y = self.conv1(nnf.relu(y))
        return x + y


class _ImpalaStack(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)
        self.pool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.res0 = _ResidualBlock(out_channels)
        self.res1 = _ResidualBlock(out_channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.res1(self.res0(self.pool(self.conv(x))))


class ImpalaCNN(Encoder):
    """The IMPALA CNN: 3 stacks of conv + max-pool + 2 residual blocks, then linear + ReLU.

    Args:
        embed_dim: Size of the embedding (default 256).
        image_size: Input frame size ``(H, W)`` in pixels.
        channels: Output channels of the three stacks.
    """

    def __init__(self, embed_dim: int = 256, image_size: tuple[int, int] = (84, 84),
                 channels: tuple[int, ...] = (16, 32, 32)) -> None:
        super().__init__("impala_cnn", embed_dim, image_size)
        stacks: list[nn.Module] = []
        in_ch = 3
        out_hw = list(self.image_size)
        for ch in channels:
            stacks.append(_ImpalaStack(in_ch, ch))
            in_ch = ch
            out_hw = [_conv_out_px(s, 3, 2, padding=1) for s in out_hw]
        self.stacks = nn.Sequential(*stacks)
        self.head = nn.Sequential(nn.Flatten(), nn.ReLU(),
                                  nn.Linear(in_ch * out_hw[0] * out_hw[1], self.embed_dim),
                                  nn.ReLU())

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed float frames ``(B, 3, H, W)`` in [0, 1]."""
        return self.head(self.stacks(x))


def _check_timm_model(model_name: str) -> None:
    """Raise ConfigError unless timm knows ``model_name`` (suggesting close names)."""
    import timm

    if timm.is_model(model_name):
        return
    close = difflib.get_close_matches(model_name, timm.list_models(), n=5, cutoff=0.6)
    hint = f"; close matches: {', '.join(TIMM_PREFIX + c for c in close)}" if close else ""
    raise ConfigError(f"unknown timm model '{model_name}' in encoder name "
                      f"'{TIMM_PREFIX}{model_name}'{hint} (timm.list_models() lists all "
                      f"{len(timm.list_models())} models)")


def _hf_cached_file(hub_id: str, filename: str | None) -> Path | None:
    """The cached weights file of a Hugging Face hub repo, without network access."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # the hub client is optional for timm
        return None
    for name in [n for n in (filename, "model.safetensors", "pytorch_model.bin") if n]:
        found = try_to_load_from_cache(hub_id, name)
        # A str path when cached; None or a "known missing" sentinel otherwise.
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def find_local_pretrained(pretrained_cfg: Mapping[str, Any]) -> Path | None:
    """Find locally cached pretrained weights for a timm model; never downloads.

    Looks at, in order: the config's ``file``, the Hugging Face hub cache for its
    ``hf_hub_id`` (``model.safetensors``, then ``pytorch_model.bin``), and the torch hub
    checkpoint folder for its ``url``.

    Args:
        pretrained_cfg: The model's ``pretrained_cfg`` mapping.

    Returns:
        The path of the weights file, or None when none is cached.
    """
    file = pretrained_cfg.get("file")
    if file and Path(file).is_file():
        return Path(file)
    hub_id = pretrained_cfg.get("hf_hub_id")
    if hub_id:
        found = _hf_cached_file(str(hub_id), pretrained_cfg.get("hf_hub_filename"))
        if found is not None:
            return found
    url = pretrained_cfg.get("url")
    if url:
        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name
        # .npz (original ViT) weights need timm's own converter, which a plain file
        # overlay would bypass.
        if candidate.is_file() and candidate.suffix != ".npz":
            return candidate
    return None


def _create_timm_backbone(model_name: str, pretrained: bool) -> nn.Module:
    """Create a timm model without classifier; pretrained weights only from local files."""
    import timm

    model = timm.create_model(model_name, pretrained=False, num_classes=0)
    if not pretrained:
        return model
    # Look for cached weights first: timm would otherwise try the network and retry for
    # a minute before failing on an offline machine.
    local = find_local_pretrained(dict(getattr(model, "pretrained_cfg", None) or {}))
    if local is None:
        raise ValueError(
            f"pretrained weights for {TIMM_PREFIX}{model_name} are not available locally "
            f"(looked in the Hugging Face hub cache and {torch.hub.get_dir()}); cache them on "
            "a machine with internet access, or use pretrained=False")
    try:
        # source='' makes timm load from 'file' even for 'hf-hub:' model names.
        return timm.create_model(model_name, pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay={"file": str(local), "source": ""})
    except (OSError, RuntimeError, ValueError, KeyError) as exc:
        raise ValueError(f"pretrained weights for {TIMM_PREFIX}{model_name} are not available "
                         f"locally or could not be loaded from '{local}': {exc}") from None


class TimmEncoder(Encoder):
    """Any timm model as an encoder.

    Frames are normalised with the model's mean/std. Models that need a fixed input
    size (e.g. ViTs at 224x224) get the frames resized to it with bilinear
    interpolation; others run at the frame size. An optional linear layer projects
    the model's features to ``embed_dim``.

    Args:
        model_name: A timm model name, e.g. ``"resnet18"`` (without the ``timm:`` prefix).
        embed_dim: Embedding size; None keeps the model's own feature size.
        image_size: Input frame size ``(H, W)`` in pixels.
        pretrained: Load pretrained weights, from the local caches only.

    Raises:
        ConfigError: For a model name timm does not know.
        ValueError: When ``pretrained`` weights are not available locally.
    """

    mean: Tensor
    std: Tensor

    def __init__(self, model_name: str, embed_dim: int | None = None,
                 image_size: tuple[int, int] = (84, 84), pretrained: bool = False) -> None:
        from timm.data import resolve_data_config

        _check_timm_model(model_name)
        backbone = _create_timm_backbone(model_name, pretrained)
        # head_hidden_size differs from num_features for models with a pre-logits
        # projection (e.g. MobileNetV3: 576 -> 1024); it is what num_classes=0 returns.
        feature_dim = int(getattr(backbone, "head_hidden_size", 0)
                          or getattr(backbone, "num_features", 0))
        super().__init__(TIMM_PREFIX + model_name, embed_dim or feature_dim, image_size)
        self.model_name = model_name
        self.feature_dim = feature_dim
        self.backbone = backbone
        data_cfg = resolve_data_config({}, model=backbone)
        pretrained_cfg = dict(getattr(backbone, "pretrained_cfg", None) or {})
        fixed = bool(pretrained_cfg.get("fixed_input_size", False))
        in_size = data_cfg["input_size"]
        self.resize_to_px: tuple[int, int] | None = (
            (int(in_size[1]), int(in_size[2])) if fixed else None)
        # Not persistent: these come from the model config, so checkpoints hold weights only.
        self.register_buffer("mean", torch.tensor(data_cfg["mean"]).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(data_cfg["std"]).view(1, 3, 1, 1),
                             persistent=False)
        self.proj: nn.Module = (nn.Linear(feature_dim, self.embed_dim)
                                if self.embed_dim != feature_dim else nn.Identity())

    def forward_features(self, x: Tensor) -> Tensor:
        """Embed float frames ``(B, 3, H, W)`` in [0, 1]."""
        if self.resize_to_px is not None and tuple(x.shape[-2:]) != self.resize_to_px:
            # Bilinear rather than the model's bicubic: no overshoot outside [0, 1].
            x = nnf.interpolate(x, size=self.resize_to_px, mode="bilinear", align_corners=False)
        x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        feats: Tensor = self.backbone(x)
        out: Tensor = self.proj(feats)
        return out


@dataclass(frozen=True)
class EncoderConfig:
    """Which encoder to build.

    Attributes:
        name: ``nature_cnn``, ``impala_cnn`` or ``timm:<model>``.
        embed_dim: Embedding size; None keeps the architecture's default (512 for
            nature_cnn, 256 for impala_cnn, the model's feature size for timm).
        image_size: Input frame size ``(H, W)`` in pixels.
        pretrained: For timm models, load pretrained weights (from local caches only).
    """

    name: str = "nature_cnn"
    embed_dim: int | None = None
    image_size: tuple[int, int] = (84, 84)
    pretrained: bool = False

    def __post_init__(self) -> None:
        require(isinstance(self.name, str) and (
            self.name in ENCODER_NAMES
            or (self.name.startswith(TIMM_PREFIX) and len(self.name) > len(TIMM_PREFIX))),
            f"unknown encoder '{self.name}'; valid choices: {VALID_CHOICES_TEXT}")
        require(self.embed_dim is None or self.embed_dim > 0,
                f"encoder embed_dim must be > 0 or null, got {self.embed_dim}")
        require(len(self.image_size) == 2 and all(s > 0 for s in self.image_size),
                f"encoder image_size must be two positive sizes (H, W), got {self.image_size}")
        require(not self.pretrained or self.name.startswith(TIMM_PREFIX),
                f"pretrained=True needs a timm encoder; '{self.name}' has no pretrained weights")

    @property
    def is_timm(self) -> bool:
        """Whether this selects a timm model."""
        return self.name.startswith(TIMM_PREFIX)


def build_encoder(config_or_name: EncoderConfig | str | Mapping[str, Any],
                  **overrides: Any) -> Encoder:
    """Build an encoder from a config, a name or a mapping of config fields.

    Args:
        config_or_name: An :class:`EncoderConfig`, a name (``nature_cnn``, ``impala_cnn``
            or ``timm:<model>``), or a mapping of config fields (e.g. from YAML).
        **overrides: Config fields to replace, e.g. ``embed_dim=128``.

    Returns:
        The encoder, in training mode, on the CPU.

    Raises:
        ConfigError: (a ValueError) for an unknown name, listing the valid choices, or an
            invalid field.
        ValueError: When pretrained timm weights are not available locally.
    """
    if isinstance(config_or_name, EncoderConfig):
        config = dataclasses.replace(config_or_name, **overrides) if overrides else config_or_name
    elif isinstance(config_or_name, str):
        config = from_dict(EncoderConfig, {"name": config_or_name, **overrides})
    elif isinstance(config_or_name, Mapping):
        config = from_dict(EncoderConfig, {**config_or_name, **overrides})
    else:
        raise ConfigError(f"an encoder is selected by an EncoderConfig, a name or a mapping, got "
                          f"{type(config_or_name).__name__}; valid names: {VALID_CHOICES_TEXT}")
    if config.name == "nature_cnn":
        return NatureCNN(config.embed_dim or DEFAULT_EMBED_DIMS["nature_cnn"], config.image_size)
    if config.name == "impala_cnn":
        return ImpalaCNN(config.embed_dim or DEFAULT_EMBED_DIMS["impala_cnn"], config.image_size)
    return TimmEncoder(config.name[len(TIMM_PREFIX):], config.embed_dim, config.image_size,
                       pretrained=config.pretrained)


__all__ = [
    "DEFAULT_EMBED_DIMS",
    "ENCODER_NAMES",
    "TIMM_PREFIX",
    "VALID_CHOICES_TEXT",
    "Encoder",
    "EncoderConfig",
    "ImpalaCNN",
    "NatureCNN",
    "TimmEncoder",
    "build_encoder",
    "find_local_pretrained",
    "freeze",
    "to_float_nchw",
    "unfreeze",
]
