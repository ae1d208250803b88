"""Tests of the auxiliary heads on simulator labels and the WithAuxiliary wrapper."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor

from common.config import ConfigError, from_dict
from perception.encoders import build_encoder
from perception.objectives import (
    CURL,
    DRIVING_HEADS,
    AuxHeadsConfig,
    AuxiliaryHeads,
    HeadConfig,
    ObjectiveConfig,
    WithAuxiliary,
    build_objective,
)
from perception.objectives.aux_heads import downsample_depth, downsample_semantic

B = 6
DIM = 16


def heads_with(*specs: HeadConfig, **config: object) -> AuxiliaryHeads:
    torch.manual_seed(0)  # parameter initialisation only
    return AuxiliaryHeads(DIM, AuxHeadsConfig(heads=specs, **config))  # type: ignore[arg-type]


def embedding(seed: int = 0) -> Tensor:
    return torch.randn(B, DIM, generator=torch.Generator().manual_seed(seed), requires_grad=True)


# ---------------------------------------------------------------------------- config
def test_config_from_dict_and_validation() -> None:
    cfg = from_dict(AuxHeadsConfig, {"heads": [
        {"label": "speed_mps", "scale": 10},
        {"label": "route_command", "kind": "classification", "num_classes": 4, "weight": 0.5},
    ], "dense_size": [12, 16]})
    assert cfg.heads[0] == HeadConfig("speed_mps", scale=10.0)
    assert cfg.heads[1].weight == 0.5 and cfg.dense_size == (12, 16)
    with pytest.raises(ConfigError, match="unique"):
        AuxHeadsConfig(heads=(HeadConfig("a"), HeadConfig("a")))
    with pytest.raises(ConfigError, match="num_classes"):
        HeadConfig("route_command", "classification")
    with pytest.raises(ConfigError, match="kind"):
        from_dict(HeadConfig, {"label": "x", "kind": "ordinal"})


def test_forward_shapes() -> None:
    heads = heads_with(*DRIVING_HEADS, dense_size=(21, 21))
    out = heads(embedding())
    assert out["speed_mps"].shape == (B,)
    assert out["route_command"].shape == (B, 4)
    assert out["signal_state"].shape == (B, 3)
    assert out["depth"].shape == (B, 1, 21, 21)
    assert out["semantic"].shape == (B, 7, 21, 21)


# ------------------------------------------------------------------ missing labels
def test_absent_labels_are_skipped() -> None:
    heads = heads_with(*DRIVING_HEADS)
    z = embedding()
    loss, logs = heads.loss(z, {"frames": torch.zeros(B, 8, 8, 3, dtype=torch.uint8)})
    assert float(loss.detach()) == 0.0 and logs == {}
    loss.backward()  # still part of the graph: a batch without labels does not break training
    loss, logs = heads.loss(z, {"speed_mps": torch.full((B,), 5.0)})
    assert set(logs) == {"aux/speed_mps"} and float(loss.detach()) > 0


def test_nan_regression_labels_are_ignored() -> None:
    heads = heads_with(HeadConfig("lead_distance_m", scale=30.0))
    z = embedding()
    label = torch.tensor([10.0, float("nan"), 40.0, float("inf"), float("nan"), 25.0])
    loss, _ = heads.loss(z, {"lead_distance_m": label})
    assert torch.isfinite(loss)
    keep = torch.isfinite(label)
    prediction = heads(z)["lead_distance_m"]
    expected = F.smooth_l1_loss(prediction[keep] / 30.0, label[keep] / 30.0)
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert z.grad is not None and (z.grad[~keep] == 0).all() and (z.grad[keep] != 0).any()
    # A batch with no lead vehicle at all contributes nothing and logs nothing.
    loss, logs = heads.loss(z, {"lead_distance_m": torch.full((B,), float("nan"))})
    assert float(loss.detach()) == 0.0 and logs == {}


def test_classification_ignores_negative_and_rejects_out_of_range() -> None:
    heads = heads_with(HeadConfig("signal_state", "classification", num_classes=3))
    z = embedding()
    label = torch.tensor([0, -1, 2, 1, -1, 0])
    loss, logs = heads.loss(z, {"signal_state": label})
    logits = heads(z)["signal_state"]
    torch.testing.assert_close(loss, F.cross_entropy(logits[label >= 0], label[label >= 0]))
    assert 0.0 <= logs["aux/signal_state/accuracy"] <= 1.0
    as_float = torch.tensor([0.0, float("nan"), 2.0, 1.0, -1.0, 0.0])
    loss_f, _ = heads.loss(z, {"signal_state": as_float})
    torch.testing.assert_close(loss_f, loss)
    with pytest.raises(ValueError, match="num_classes 3"):
        heads.loss(z, {"signal_state": torch.tensor([0, 1, 3, 0, 0, 0])})


def test_wrong_batch_size_is_an_error() -> None:
    heads = heads_with(HeadConfig("speed_mps"))
    with pytest.raises(ValueError, match="batch size"):
        heads.loss(embedding(), {"speed_mps": torch.zeros(B + 1)})


# -------------------------------------------------------------------- dense labels
def test_downsample_depth_ignores_missing_pixels() -> None:
    depth = torch.full((1, 8, 8), 20.0)
    depth[0, :4, :4] = float("nan")  # top-left cell of a 2x2 grid has no depth at all
    depth[0, 4:, 4:] = 500.0         # beyond the range: clipped to 1
    depth[0, 0, 4] = float("inf")    # one bad pixel in the top-right cell
    target, valid = downsample_depth(depth, (2, 2), max_depth=80.0)
    assert valid.tolist() == [[[[False, True], [True, True]]]]
    torch.testing.assert_close(target[0, 0, 0, 1], torch.tensor(0.25))
    torch.testing.assert_close(target[0, 0, 1, 1], torch.tensor(1.0))


def test_downsample_semantic_takes_the_majority() -> None:
    ids = torch.zeros(1, 4, 4, dtype=torch.long)
    ids[0, :2, :2] = torch.tensor([[3, 3], [3, 1]])
    ids[0, 2:, 2:] = 255  # unlabelled
    out = downsample_semantic(ids, (2, 2), num_classes=7)
    assert out.tolist() == [[[3, 0], [0, -1]]]


def test_dense_heads_train_on_downsampled_maps() -> None:
    heads = heads_with(HeadConfig("depth", "depth", scale=80.0),
                       HeadConfig("semantic", "semantic", num_classes=7), dense_size=(21, 21))
    g = torch.Generator().manual_seed(0)
    batch = {"depth": torch.rand(B, 84, 84, generator=g) * 100,
             "semantic": torch.randint(0, 7, (B, 84, 84), generator=g)}
    z = embedding()
    loss, logs = heads.loss(z, batch)
    assert torch.isfinite(loss) and {"aux/depth", "aux/semantic"} <= set(logs)
    loss.backward()
    assert z.grad is not None and float(z.grad.abs().sum()) > 0


# ---------------------------------------------------------------------- the wrapper
def test_with_auxiliary_adds_weighted_losses_and_trains_heads() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("nature_cnn", embed_dim=32)
    cfg = ObjectiveConfig(name="curl", aux=AuxHeadsConfig(heads=(
        HeadConfig("speed_mps", weight=2.0, scale=10.0),
        HeadConfig("route_command", "classification", weight=0.0, num_classes=4))))
    obj = build_objective("curl", encoder, cfg)
    assert isinstance(obj, WithAuxiliary) and obj.encoder is encoder
    g = torch.Generator().manual_seed(0)
    batch = {"frames": torch.randint(0, 256, (4, 84, 84, 3), dtype=torch.uint8, generator=g),
             "speed_mps": torch.tensor([3.0, float("nan"), 12.0, 0.0]),
             "route_command": torch.tensor([0, 1, 2, 3])}
    loss, logs = obj.loss(batch, torch.Generator().manual_seed(1))
    expected = logs["ssl_loss"] + 2.0 * logs["aux/speed_mps"] + 0.0 * logs["aux/route_command"]
    assert logs["loss"] == pytest.approx(expected, rel=1e-5)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    speed_head = obj.aux.heads["h0_speed_mps"]
    assert all(p.grad is not None for p in speed_head.parameters())
    assert all(p.grad is not None for p in obj.encoder.parameters())
    trainable = {id(p) for p in obj.trainable_parameters()}
    assert {id(p) for p in obj.aux.parameters()} <= trainable
    assert not trainable & {id(p) for t in obj.target_modules() for p in t.parameters()}
    # The shared encoder is stored once (safetensors refuses duplicated tensors).
    keys = obj.state_dict().keys()
    assert not any(k.startswith("encoder.") for k in keys)
    assert any(k.startswith("objective.encoder.") for k in keys)
    curl = obj.objective
    assert isinstance(curl, CURL)
    before = [p.detach().clone() for p in curl.key_encoder.parameters()]
    with torch.no_grad():
        for p in obj.encoder.parameters():
            p.add_(1.0)
    obj.after_step()
    assert all(not torch.equal(a, b) for a, b in
               zip(before, curl.key_encoder.parameters(), strict=True))


def test_without_heads_no_wrapper() -> None:
    encoder = build_encoder("nature_cnn", embed_dim=32)
    obj = build_objective("byol", encoder, ObjectiveConfig(name="byol"))
    assert not isinstance(obj, WithAuxiliary)
