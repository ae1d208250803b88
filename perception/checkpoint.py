"""Encoder checkpoints: safetensors weights plus a JSON description; loading never unpickles.

A checkpoint is a directory holding two files:

- ``encoder.safetensors``: the encoder's state dict;
- ``encoder.json``: the format name and version, the :class:`EncoderConfig`, the
  architecture name, ``embed_dim`` and ``image_size``, the SHA-256 of the weights file,
  the package and torch versions, and a user ``extra`` mapping (e.g. the pretraining
  objective and step).

Both files are written atomically, weights first: an interrupted save leaves either the
previous checkpoint or a weights file whose hash does not match the description, which
loading reports instead of returning mismatched weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from common.config import ConfigError, from_dict, to_dict
from common.io import atomic_path, atomic_write_text
from perception.encoders import (
    DEFAULT_EMBED_DIMS,
    Encoder,
    EncoderConfig,
    TimmEncoder,
    build_encoder,
)

WEIGHTS_FILE = "encoder.safetensors"
META_FILE = "encoder.json"
FORMAT_NAME = "bulletdrive.encoder"
FORMAT_VERSION = 1

# How many offending keys an error message lists before summarising the rest.
_MAX_LISTED = 5


class CheckpointError(ValueError):
    """An encoder checkpoint is missing, corrupt or does not match what was expected."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The checkpoint directory or one of its files does not exist."""


def _package_version() -> str:
    try:
        return metadata.version("bulletdrive")
    except metadata.PackageNotFoundError:
        return "unknown"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def encoder_config_of(encoder: Encoder) -> EncoderConfig:
    """The :class:`EncoderConfig` that rebuilds ``encoder``'s architecture (not pretrained)."""
    return EncoderConfig(name=encoder.name, embed_dim=encoder.embed_dim,
                         image_size=encoder.image_size)


def _resolved_embed_dim(config: EncoderConfig, built: Encoder | None) -> int | None:
    """The embedding size ``config`` gives, or None if only a built timm model can tell."""
    if config.embed_dim is not None:
        return config.embed_dim
    if config.name in DEFAULT_EMBED_DIMS:
        return DEFAULT_EMBED_DIMS[config.name]
    return built.feature_dim if isinstance(built, TimmEncoder) else None


def save_encoder(path: str | Path, encoder: Encoder, config: EncoderConfig | None = None,
                 extra: dict[str, Any] | None = None) -> Path:
    """Save an encoder as a checkpoint directory (created if needed, files replaced).

    Args:
        path: The checkpoint directory.
        encoder: The encoder to save (float, not quantised).
        config: The config that built it; None derives one from the encoder.
        extra: JSON-serialisable metadata stored under ``"extra"``.

    Returns:
        The checkpoint directory.

    Raises:
        CheckpointError: If ``path`` is an existing file, the encoder is quantised,
            ``config`` does not describe ``encoder``, or ``extra`` is not JSON data.
    """
    directory = Path(path)
    if directory.exists() and not directory.is_dir():
        raise CheckpointError(f"cannot save an encoder checkpoint to '{directory}': it is a "
                              "file, and a checkpoint is a directory")
    if encoder.quantized:
        raise CheckpointError("cannot save an int8-quantised encoder; save the float encoder "
                              "and quantise it again after loading")
    config = config if config is not None else encoder_config_of(encoder)
    wanted_dim = _resolved_embed_dim(config, encoder)
    if (config.name != encoder.name or wanted_dim != encoder.embed_dim
            or tuple(config.image_size) != encoder.image_size):
        raise CheckpointError(
            f"config {config.name} (embed_dim {wanted_dim}, image_size {config.image_size}) "
            f"does not describe the encoder {encoder.name} (embed_dim {encoder.embed_dim}, "
            f"image_size {encoder.image_size})")
    try:
        extra_json = json.loads(json.dumps(extra or {}, allow_nan=False))
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint extra metadata must be JSON data: {exc}") from None

    # Independent contiguous CPU copies: safetensors refuses tensors sharing storage.
    tensors = {k: v.detach().to("cpu", copy=True).contiguous()
               for k, v in encoder.state_dict().items()}
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / WEIGHTS_FILE) as tmp:
        safetensors.torch.save_file(tensors, str(tmp), metadata={"format": "pt"})
        digest = _sha256(tmp.read_bytes())
    meta = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": encoder.name,
        "embed_dim": encoder.embed_dim,
        "image_size": list(encoder.image_size),
        "config": to_dict(config),
        "weights_file": WEIGHTS_FILE,
        "weights_sha256": digest,
        "num_tensors": len(tensors),
        "package_version": _package_version(),
        "torch_version": torch.__version__,
        "saved_unix_s": round(time.time(), 3),
        "extra": extra_json,
    }
    atomic_write_text(directory / META_FILE, json.dumps(meta, indent=2) + "\n")
    return directory


def _checkpoint_dir(path: str | Path) -> Path:
    p = Path(path)
    if p.is_file() and p.name in (WEIGHTS_FILE, META_FILE):
        return p.parent
    if not p.exists():
        raise CheckpointNotFoundError(f"encoder checkpoint '{p}' does not exist")
    if not p.is_dir():
        raise CheckpointError(f"encoder checkpoint '{p}' is a file; a checkpoint is a "
                              f"directory holding {META_FILE} and {WEIGHTS_FILE}")
    return p


def read_checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """Read and check a checkpoint's ``encoder.json``.

    Args:
        path: The checkpoint directory (or a file inside it).

    Returns:
        The parsed description (see the module docstring for its keys).

    Raises:
        CheckpointError: If the file is missing, not JSON, or not an encoder description
            of a supported format version.
    """
    directory = _checkpoint_dir(path)
    meta_path = directory / META_FILE
    if not meta_path.is_file():
        raise CheckpointNotFoundError(f"encoder checkpoint '{directory}' has no {META_FILE} "
                                      "(not a checkpoint directory, or an interrupted save)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"encoder checkpoint '{directory}': {META_FILE} is corrupt "
                              f"(not valid JSON: {exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT_NAME:
        raise CheckpointError(f"encoder checkpoint '{directory}': {META_FILE} is not a "
                              f"{FORMAT_NAME} description")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= FORMAT_VERSION:
        raise CheckpointError(f"encoder checkpoint '{directory}' has format_version "
                              f"{version!r}; this version of bulletdrive reads 1..{FORMAT_VERSION}")
    for key, kind in (("config", dict), ("embed_dim", int), ("weights_sha256", str)):
        if not isinstance(meta.get(key), kind):
            raise CheckpointError(f"encoder checkpoint '{directory}': {META_FILE} lacks a valid "
                                  f"'{key}' entry")
    return meta


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    more = len(keys) - _MAX_LISTED
    return shown + (f" (and {more} more)" if more > 0 else "")


def _describe(config: EncoderConfig, embed_dim: int | None) -> str:
    dim = "default" if embed_dim is None else str(embed_dim)
    return f"{config.name} (embed_dim {dim}, image_size {tuple(config.image_size)})"


def load_encoder(path: str | Path, expected: EncoderConfig | None = None,
                 device: torch.device | str = "cpu") -> Encoder:
    """Load an encoder checkpoint; reads safetensors and JSON only, never pickles.

    Args:
        path: The checkpoint directory (or a file inside it).
        expected: If given, the architecture the caller needs: a different name,
            embed_dim or image_size is an error (``pretrained`` is ignored).
        device: Where to put the encoder.

    Returns:
        The encoder, in eval mode, on ``device``.

    Raises:
        CheckpointError: For a missing directory or file (a
            :class:`CheckpointNotFoundError`), corrupt weights or description, an
            architecture other than ``expected``, or weights whose keys or shapes do not
            fit the architecture.
    """
    directory = _checkpoint_dir(path)
    meta = read_checkpoint_meta(directory)
    try:
        config = from_dict(EncoderConfig, meta["config"])
    except ConfigError as exc:
        raise CheckpointError(f"encoder checkpoint '{directory}': {META_FILE} has an invalid "
                              f"config: {exc}") from None
    saved_dim = int(meta["embed_dim"])
    if expected is not None and (expected.name != config.name
                                 or tuple(expected.image_size) != tuple(config.image_size)):
        raise CheckpointError(
            f"architecture mismatch: checkpoint '{directory}' holds {_describe(config, saved_dim)}"
            f", but {_describe(expected, expected.embed_dim)} was expected")

    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise CheckpointNotFoundError(f"encoder checkpoint '{directory}' has no {WEIGHTS_FILE}")
    data = weights_path.read_bytes()
    try:
        tensors = safetensors.torch.load(data)
    except Exception as exc:  # SafetensorError derives from Exception only
        raise CheckpointError(f"encoder checkpoint '{directory}': {WEIGHTS_FILE} is corrupt "
                              f"(not a valid safetensors file: {exc})") from None
    if _sha256(data) != meta["weights_sha256"]:
        raise CheckpointError(
            f"encoder checkpoint '{directory}': {WEIGHTS_FILE} is corrupt or does not belong "
            f"to its {META_FILE} (SHA-256 differs from the one recorded at save time)")

    try:
        # The weights come from the file, so never look for pretrained ones.
        encoder = build_encoder(dataclasses.replace(config, pretrained=False))
    except ValueError as exc:
        raise CheckpointError(f"encoder checkpoint '{directory}': cannot build its "
                              f"architecture {config.name}: {exc}") from None
    if encoder.embed_dim != saved_dim:
        raise CheckpointError(f"encoder checkpoint '{directory}': {META_FILE} says embed_dim "
                              f"{saved_dim} but its config builds {encoder.embed_dim}")
    if expected is not None:
        wanted = _resolved_embed_dim(expected, encoder)
        if wanted != encoder.embed_dim:
            raise CheckpointError(
                f"architecture mismatch: checkpoint '{directory}' holds "
                f"{_describe(config, saved_dim)}, but {_describe(expected, wanted)} was expected")

    model_state = encoder.state_dict()
    missing = sorted(set(model_state) - set(tensors))
    unexpected = sorted(set(tensors) - set(model_state))
    shapes = sorted(f"{k}: checkpoint {tuple(tensors[k].shape)} vs model {tuple(v.shape)}"
                    for k, v in model_state.items()
                    if k in tensors and tuple(tensors[k].shape) != tuple(v.shape))
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listed(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listed(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches: {_listed(shapes)}")
        raise CheckpointError(f"encoder checkpoint '{directory}': weights do not fit the "
                              f"{config.name} architecture; " + "; ".join(parts))
    encoder.load_state_dict(tensors, strict=True)
    return encoder.to(device).eval()


__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "META_FILE",
    "WEIGHTS_FILE",
    "CheckpointError",
    "CheckpointNotFoundError",
    "encoder_config_of",
    "load_encoder",
    "read_checkpoint_meta",
    "save_encoder",
]
