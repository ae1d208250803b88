"""Encoders: shapes, input layouts, name errors, timm models (no downloads), freezing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch

import perception.encoders as enc
from common.config import ConfigError, from_dict
from perception.encoders import (
    ENCODER_NAMES,
    Encoder,
    EncoderConfig,
    ImpalaCNN,
    NatureCNN,
    TimmEncoder,
    build_encoder,
    freeze,
    to_float_nchw,
    unfreeze,
)


def _frames(batch: int = 2, size: tuple[int, int] = (84, 84), seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, generator=g)


@pytest.mark.parametrize(("name", "cls", "default_dim"),
                         [("nature_cnn", NatureCNN, 512), ("impala_cnn", ImpalaCNN, 256)])
def test_builtin_shapes_and_dims(name: str, cls: type[Encoder], default_dim: int) -> None:
    e = build_encoder(name)
    assert isinstance(e, cls) and e.embed_dim == default_dim and e.name == name
    with torch.no_grad():
        y = e(_frames(3))
    assert y.shape == (3, default_dim) and y.dtype == torch.float32
    small = build_encoder(EncoderConfig(name=name, embed_dim=32, image_size=(64, 48)))
    with torch.no_grad():
        assert small(_frames(2, (64, 48))).shape == (2, 32)


def test_builtin_names_listed() -> None:
    assert set(ENCODER_NAMES) == {"nature_cnn", "impala_cnn"}


def test_channels_last_first_and_float_give_same_embedding() -> None:
    e = build_encoder("impala_cnn").eval()
    hwc = _frames(2)
    chw = hwc.permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        a, b = e(hwc), e(chw)
        c = e(chw.float() / 255.0)
        d = e(hwc.numpy())
    assert torch.equal(a, b)
    assert torch.allclose(a, c, atol=1e-6) and torch.equal(a, d)


def test_to_float_nchw_layouts_and_errors() -> None:
    x = to_float_nchw(np.full((1, 4, 5, 3), 255, dtype=np.uint8))
    assert x.shape == (1, 3, 4, 5) and x.dtype == torch.float32 and float(x.max()) == 1.0
    assert to_float_nchw(torch.zeros(1, 3, 4, 5, dtype=torch.float64)).dtype == torch.float32
    with pytest.raises(ValueError, match="4 dimensions"):
        to_float_nchw(torch.zeros(4, 5, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="ambiguous"):
        to_float_nchw(torch.zeros(1, 3, 8, 3, dtype=torch.uint8))
    with pytest.raises(ValueError, match="channels-first"):
        to_float_nchw(torch.zeros(1, 8, 8, 3))
    with pytest.raises(ValueError, match="dtype"):
        to_float_nchw(torch.zeros(1, 3, 8, 8, dtype=torch.int32))


def test_wrong_frame_size_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"expects frames of size \(H, W\) = \(84, 84\)"):
        build_encoder("nature_cnn")(_frames(1, (64, 64)))
    with pytest.raises(ConfigError, match="at least 36x36"):
        build_encoder("nature_cnn", image_size=(32, 32))


def test_unknown_name_lists_choices() -> None:
    with pytest.raises(ValueError) as err:
        build_encoder("resnet")
    msg = str(err.value)
    for part in ("unknown encoder 'resnet'", "nature_cnn", "impala_cnn",
                 "timm:<any timm model name>", "timm:resnet18", "timm:vit_tiny_patch16_224"):
        assert part in msg


def test_unknown_timm_model_says_so() -> None:
    with pytest.raises(ValueError, match="unknown timm model 'resnet1'.*timm:resnet18"):
        build_encoder("timm:resnet1")


def test_config_validation_and_mapping() -> None:
    e = build_encoder({"name": "nature_cnn", "embed_dim": 16, "image_size": [40, 40]})
    assert e.embed_dim == 16 and e.image_size == (40, 40)
    with pytest.raises(ConfigError, match="embed_dim must be > 0"):
        EncoderConfig(embed_dim=0)
    with pytest.raises(ConfigError, match="unknown config key 'size'"):
        from_dict(EncoderConfig, {"size": 3})
    with pytest.raises(ConfigError, match="pretrained=True needs a timm encoder"):
        EncoderConfig(name="nature_cnn", pretrained=True)


@pytest.fixture(scope="module")
def resnet18() -> Encoder:
    return build_encoder("timm:resnet18")


def test_timm_resnet18(resnet18: Encoder) -> None:
    assert isinstance(resnet18, TimmEncoder)
    assert resnet18.embed_dim == 512 and resnet18.resize_to_px is None
    with torch.no_grad():
        assert resnet18.eval()(_frames(2)).shape == (2, 512)


def test_timm_vit_resizes_to_fixed_input_and_projects() -> None:
    e = build_encoder("timm:vit_tiny_patch16_224", embed_dim=64, image_size=(64, 96)).eval()
    assert isinstance(e, TimmEncoder)
    assert e.resize_to_px == (224, 224) and e.feature_dim == 192 and e.embed_dim == 64
    with torch.no_grad():
        y = e(_frames(2, (64, 96)))
    assert y.shape == (2, 64) and torch.isfinite(y).all()


def test_freeze_keeps_batchnorm_statistics(resnet18: Encoder) -> None:
    freeze(resnet18)
    try:
        assert not any(p.requires_grad for p in resnet18.parameters())
        parent = torch.nn.Sequential(resnet18)
        parent.train()  # a parent's train() must not unfreeze the encoder
        assert not resnet18.training
        before = {k: v.clone() for k, v in resnet18.state_dict().items()}
        with torch.no_grad():
            resnet18(_frames(2, seed=3))
        assert all(torch.equal(before[k], v) for k, v in resnet18.state_dict().items())
    finally:
        unfreeze(resnet18)
    assert all(p.requires_grad for p in resnet18.parameters())
    assert resnet18.train().training


def test_pretrained_unavailable_locally_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    # No network is touched: the local lookup is made to find nothing.
    monkeypatch.setattr(enc, "find_local_pretrained", lambda cfg: None)
    with pytest.raises(ValueError, match="pretrained weights for timm:resnet18 are not "
                                         "available locally"):
        build_encoder("timm:resnet18", pretrained=True)


def test_pretrained_loads_local_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                     resnet18: Encoder) -> None:
    assert isinstance(resnet18, TimmEncoder)
    file = tmp_path / "model.safetensors"
    weights = {k: v.contiguous() for k, v in resnet18.backbone.state_dict().items()}
    safetensors.torch.save_file(weights, str(file))
    monkeypatch.setattr(enc, "find_local_pretrained", lambda cfg: file)
    loaded = build_encoder("timm:resnet18", pretrained=True)
    assert isinstance(loaded, TimmEncoder)
    state = loaded.backbone.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
