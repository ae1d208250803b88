"""Encoder checkpoints: round trip, metadata, and one clear error per fault."""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch

from perception.checkpoint import (
    FORMAT_VERSION,
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    load_encoder,
    read_checkpoint_meta,
    save_encoder,
)
from perception.encoders import Encoder, EncoderConfig, build_encoder
from perception.quantize import quantize_dynamic_int8


def _frames(batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, 84, 84, 3), dtype=torch.uint8, generator=g)


def _embed(e: Encoder) -> torch.Tensor:
    with torch.no_grad():
        out: torch.Tensor = e.eval()(_frames())
    return out


@pytest.fixture()
def saved(tmp_path: Path) -> tuple[Path, Encoder]:
    e = build_encoder("nature_cnn", embed_dim=64)
    return save_encoder(tmp_path / "ckpt", e, extra={"objective": "byol", "step": 10}), e


def test_round_trip_identical_outputs(saved: tuple[Path, Encoder],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    path, e = saved
    assert sorted(p.name for p in path.iterdir()) == [META_FILE, WEIGHTS_FILE]  # no temp files

    def no_unpickling(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("checkpoint loading must not unpickle")

    monkeypatch.setattr(torch, "load", no_unpickling)
    monkeypatch.setattr(pickle, "load", no_unpickling)
    monkeypatch.setattr(pickle, "loads", no_unpickling)
    loaded = load_encoder(path, expected=EncoderConfig("nature_cnn", embed_dim=64))
    assert loaded.embed_dim == 64 and not loaded.training
    assert torch.equal(_embed(loaded), _embed(e))
    assert torch.equal(_embed(load_encoder(path / META_FILE)), _embed(e))  # file inside works
    meta = read_checkpoint_meta(path)
    assert meta["format_version"] == FORMAT_VERSION and meta["architecture"] == "nature_cnn"
    assert meta["embed_dim"] == 64 and meta["extra"] == {"objective": "byol", "step": 10}
    assert meta["package_version"] and meta["torch_version"] == torch.__version__


def test_round_trip_timm_with_batchnorm_and_projection(tmp_path: Path) -> None:
    e = build_encoder("timm:resnet18", embed_dim=32)
    # Move the batch-norm statistics away from their initial values.
    e.train()
    with torch.no_grad():
        e(_frames(4))
    path = save_encoder(tmp_path / "r18", e, EncoderConfig("timm:resnet18", embed_dim=32))
    loaded = load_encoder(path, expected=EncoderConfig("timm:resnet18", embed_dim=32))
    assert torch.equal(_embed(loaded), _embed(e))


def test_default_embed_dim_matches_explicit(saved: tuple[Path, Encoder], tmp_path: Path) -> None:
    path = save_encoder(tmp_path / "d", build_encoder("impala_cnn"))
    load_encoder(path, expected=EncoderConfig("impala_cnn"))  # None means the default 256


def test_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist") as err:
        load_encoder(tmp_path / "nope")
    assert isinstance(err.value, FileNotFoundError)
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=f"has no {META_FILE}"):
        load_encoder(tmp_path / "empty")


def test_missing_weights_file(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    (path / WEIGHTS_FILE).unlink()
    with pytest.raises(CheckpointError, match=f"has no {WEIGHTS_FILE}"):
        load_encoder(path)


def test_garbage_weights_are_corrupt(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    (path / WEIGHTS_FILE).write_bytes(b"\x00\x01not a safetensors file")
    with pytest.raises(CheckpointError, match="is corrupt .not a valid safetensors file"):
        load_encoder(path)


def test_flipped_byte_is_corrupt(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    data = bytearray((path / WEIGHTS_FILE).read_bytes())
    data[-10] ^= 0xFF  # inside the tensor data: still parses, hash differs
    (path / WEIGHTS_FILE).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="is corrupt or does not belong.*SHA-256"):
        load_encoder(path)


def test_corrupt_json(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    (path / META_FILE).write_text('{"format": "bulletdrive.enc')
    with pytest.raises(CheckpointError, match=f"{META_FILE} is corrupt .not valid JSON"):
        load_encoder(path)
    (path / META_FILE).write_text('{"format": "something else"}')
    with pytest.raises(CheckpointError, match="is not a bulletdrive.encoder description"):
        load_encoder(path)


def test_newer_format_version(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    meta = json.loads((path / META_FILE).read_text())
    meta["format_version"] = FORMAT_VERSION + 1
    (path / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="format_version"):
        load_encoder(path)


def test_architecture_mismatch(saved: tuple[Path, Encoder]) -> None:
    path, _ = saved
    with pytest.raises(CheckpointError, match="architecture mismatch.*nature_cnn.*impala_cnn"):
        load_encoder(path, expected=EncoderConfig("impala_cnn"))
    with pytest.raises(CheckpointError, match="architecture mismatch.*embed_dim 512"):
        load_encoder(path, expected=EncoderConfig("nature_cnn"))
    with pytest.raises(CheckpointError, match="architecture mismatch.*image_size"):
        load_encoder(path, expected=EncoderConfig("nature_cnn", 64, image_size=(96, 96)))


def _rewrite_weights(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    """Replace the weights and their recorded hash, as a consistent but wrong checkpoint."""
    safetensors.torch.save_file(tensors, str(path / WEIGHTS_FILE))
    import hashlib

    meta = json.loads((path / META_FILE).read_text())
    meta["weights_sha256"] = hashlib.sha256((path / WEIGHTS_FILE).read_bytes()).hexdigest()
    (path / META_FILE).write_text(json.dumps(meta))


def test_key_and_shape_mismatch(saved: tuple[Path, Encoder]) -> None:
    path, e = saved
    state = {k: v.clone() for k, v in e.state_dict().items()}
    state["extra.weight"] = state.pop("head.0.weight")
    _rewrite_weights(path, state)
    with pytest.raises(CheckpointError, match=r"missing keys: head\.0\.weight; "
                                              r"unexpected keys: extra\.weight"):
        load_encoder(path)
    state = {k: v.clone() for k, v in e.state_dict().items()}
    state["head.0.bias"] = torch.zeros(7)
    _rewrite_weights(path, state)
    with pytest.raises(CheckpointError, match=r"shape mismatches: head\.0\.bias: "
                                              r"checkpoint \(7,\) vs model \(64,\)"):
        load_encoder(path)


def test_save_errors(tmp_path: Path) -> None:
    e = build_encoder("nature_cnn", embed_dim=64)
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        save_encoder(tmp_path / "file", e)
    with pytest.raises(CheckpointError, match="does not describe the encoder"):
        save_encoder(tmp_path / "c", e, EncoderConfig("nature_cnn"))
    with pytest.raises(CheckpointError, match="JSON data"):
        save_encoder(tmp_path / "c", e, extra={"bad": object()})
    with pytest.raises(CheckpointError, match="int8-quantised"):
        save_encoder(tmp_path / "c", quantize_dynamic_int8(e))
