"""Dynamic int8 quantisation of frozen encoders."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from perception.encoders import build_encoder
from perception.quantize import quantize_dynamic_int8


def _frames(batch: int = 4) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 84, 84, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize("name", ["nature_cnn", "impala_cnn"])
def test_quantised_output_close_to_float(name: str) -> None:
    e = build_encoder(name).eval()
    q = quantize_dynamic_int8(e)
    frames = _frames()
    with torch.no_grad():
        ref, out = e(frames), q(frames)
    assert out.shape == ref.shape == (4, e.embed_dim) and q.embed_dim == e.embed_dim
    cos = torch.nn.functional.cosine_similarity(out, ref, dim=1)
    assert float(cos.min()) > 0.99
    # The original stays float and trainable; the copy is frozen and stays in eval mode.
    assert any(type(m) is nn.Linear for m in e.modules()) and not e.frozen
    assert not any(type(m) is nn.Linear for m in q.modules())
    assert q.quantized and q.frozen and not q.train().training


def test_quantise_errors() -> None:
    e = build_encoder("nature_cnn")
    q = quantize_dynamic_int8(e)
    with pytest.raises(ValueError, match="already int8-quantised"):
        quantize_dynamic_int8(q)
    # A meta-device encoder stands in for a CUDA one on machines without a GPU.
    with pytest.raises(ValueError, match="CPU only"):
        quantize_dynamic_int8(build_encoder("nature_cnn").to("meta"))
