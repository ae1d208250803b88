"""Optional int8 quantisation of a frozen encoder for cheaper CPU inference."""

from __future__ import annotations

import copy
import warnings
from typing import TypeVar

import torch
from torch import nn

from perception.encoders import Encoder, freeze

E = TypeVar("E", bound=Encoder)


def quantize_dynamic_int8(encoder: E) -> E:
    """Return a frozen copy of ``encoder`` whose Linear layers run in dynamic int8.

    Weights of every ``nn.Linear`` are stored as int8 and activations are quantised on
    the fly (``torch.ao.quantization.quantize_dynamic``); convolutions stay float. The
    copy keeps the encoder interface (``embed_dim``, ``image_size``, uint8 input) and is
    marked ``frozen`` and ``quantized``. The original encoder is not changed. Encoders
    without Linear layers (e.g. a timm CNN without projection) gain nothing; a warning
    says so.

    Args:
        encoder: A float encoder on the CPU.

    Returns:
        The quantised copy, in eval mode, CPU only.

    Raises:
        ValueError: If the encoder is not on the CPU (quantised kernels are CPU only) or
            is already quantised.
    """
    if encoder.quantized:
        raise ValueError(f"encoder '{encoder.name}' is already int8-quantised")
    if encoder.device.type != "cpu":
        raise ValueError(f"int8 dynamic quantisation runs on the CPU only; encoder "
                         f"'{encoder.name}' is on {encoder.device} (move it with .cpu() first)")
    if not any(isinstance(m, nn.Linear) for m in encoder.modules()):
        warnings.warn(f"encoder '{encoder.name}' has no Linear layers; int8 dynamic "
                      "quantisation leaves it unchanged", UserWarning, stacklevel=2)
    float_copy = freeze(copy.deepcopy(encoder))
    with warnings.catch_warnings():
        # torch.ao.quantization announces its move to torchao on every call; the eager
        # dynamic API still works in this torch version, so keep test and log output clean.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao")
        warnings.filterwarnings("ignore", message=r".*quantize_per_tensor.*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization.*")
        quantized = torch.ao.quantization.quantize_dynamic(
            float_copy, {nn.Linear}, dtype=torch.qint8, inplace=True)
    quantized.quantized = True
    quantized.frozen = True
    quantized.eval()
    return quantized


__all__ = ["quantize_dynamic_int8"]
