"""Tests of the self-supervised objectives (CURL, BYOL, MAE, ATC)."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torch.nn.functional as F  # noqa: N812 (the universal torch alias)
from torch import Tensor

from common.config import ConfigError, from_dict
from perception.encoders import build_encoder
from perception.objectives import (
    ATC,
    BYOL,
    CURL,
    MAE,
    OBJECTIVE_NAMES,
    CURLConfig,
    MAEConfig,
    Objective,
    ObjectiveConfig,
    build_objective,
    info_nce,
)
from perception.objectives.mae import (
    masked_mse,
    num_masked,
    patch_mask_to_pixels,
    patchify,
    random_mask,
)

IMAGE = 84


def random_shift(x: Tensor, generator: torch.Generator, pad: int = 4) -> Tensor:
    """Test augmentation: replicate-pad by ``pad`` and crop back at a random offset."""
    b, _, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


def smooth_frames(n: int, seed: int, size: int = IMAGE) -> Tensor:
    """uint8 ``(n, size, size, 3)`` frames of smooth random blobs (distinct per frame)."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 6, 6, generator=g)
    x = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def make_objective(name: str, **config: object) -> Objective:
    encoder = build_encoder("nature_cnn", embed_dim=64)
    cfg = from_dict(ObjectiveConfig, {"name": name, name: config})
    return build_objective(name, encoder, cfg, augment=random_shift)


def make_batch(n: int = 8, seed: int = 0) -> dict[str, Tensor]:
    frames = smooth_frames(2 * n, seed)
    return {"frames": frames[:n], "frames_next": frames[n:]}


# ------------------------------------------------------------------------ building
def test_unknown_objective_lists_valid_names() -> None:
    encoder = build_encoder("nature_cnn")
    with pytest.raises(ValueError, match="unknown objective 'simclr'") as info:
        build_objective("simclr", encoder)
    for name in OBJECTIVE_NAMES:
        assert name in str(info.value)


def test_build_returns_each_class_and_checks_config() -> None:
    encoder = build_encoder("nature_cnn", embed_dim=32)
    for name, cls in (("curl", CURL), ("byol", BYOL), ("mae", MAE), ("atc", ATC)):
        assert type(build_objective(name, encoder)) is cls
    obj = build_objective("curl", encoder, CURLConfig(tau=0.2))
    assert isinstance(obj, CURL) and obj.config.tau == 0.2
    with pytest.raises(ConfigError, match="needs a BYOLConfig"):
        build_objective("byol", encoder, CURLConfig())
    with pytest.raises(ConfigError, match="selects 'mae'"):
        build_objective("curl", encoder, ObjectiveConfig(name="mae"))


def test_objective_config_from_dict() -> None:
    cfg = from_dict(ObjectiveConfig, {"name": "mae", "mae": {"mask_ratio": 0.75, "patch_px": 7}})
    assert cfg.mae == MAEConfig(mask_ratio=0.75, patch_px=7)
    with pytest.raises(ConfigError, match="mask_ratio"):
        from_dict(ObjectiveConfig, {"mae": {"mask_ratio": 1.5}})
    with pytest.raises(ConfigError, match="valid keys"):
        from_dict(ObjectiveConfig, {"curl": {"temperature": 0.1}})
    with pytest.raises(ConfigError, match="'simclr'"):
        from_dict(ObjectiveConfig, {"name": "simclr"})


# ---------------------------------------------------------------- loss and gradients
@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_loss_is_finite_and_only_online_parts_get_gradients(name: str) -> None:
    obj = make_objective(name)
    loss, logs = obj.loss(make_batch(), torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert logs["loss"] == pytest.approx(float(loss.detach()))
    loss.backward()
    encoder_grads = [p.grad for p in obj.encoder.parameters()]
    assert all(g is not None for g in encoder_grads)
    assert sum(float(g.abs().sum()) for g in encoder_grads if g is not None) > 0
    targets = list(obj.target_modules())
    assert (len(targets) > 0) == (name != "mae")
    target_ids = set()
    for target in targets:
        for p in target.parameters():
            assert not p.requires_grad and p.grad is None
            target_ids.add(id(p))
    trainable = obj.trainable_parameters()
    assert not target_ids & {id(p) for p in trainable}
    assert {id(p) for p in obj.encoder.parameters()} <= {id(p) for p in trainable}
    assert len(trainable) + len(target_ids) == len(list(obj.parameters()))


@pytest.mark.parametrize("name", ["curl", "byol", "atc"])
def test_ema_update_follows_tau_formula(name: str) -> None:
    tau = 0.25
    obj = make_objective(name, tau=tau)
    g = torch.Generator().manual_seed(3)
    with torch.no_grad():  # an "optimizer step" that moves the online weights only
        for p in obj.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=g))
    pairs = [(getattr(obj, online), getattr(obj, target)) for online, target, _ in obj._ema_pairs]
    before = [[p.detach().clone() for p in target.parameters()] for _, target in pairs]
    obj.after_step()
    for (online, target), old in zip(pairs, before, strict=True):
        for p_t, p_o, p_old in zip(target.parameters(), online.parameters(), old, strict=True):
            torch.testing.assert_close(p_t, (1 - tau) * p_old + tau * p_o)
            assert not torch.equal(p_t, p_o)


def test_ema_tau_one_copies_online_weights() -> None:
    obj = make_objective("curl", tau=1.0)
    with torch.no_grad():
        for p in obj.encoder.parameters():
            p.mul_(2.0)
    obj.after_step()
    assert isinstance(obj, CURL)
    for p_t, p_o in zip(obj.key_encoder.parameters(), obj.encoder.parameters(), strict=True):
        assert torch.equal(p_t, p_o)


def test_randomness_comes_from_the_generator_only() -> None:
    obj = make_objective("curl")
    batch = make_batch()
    torch.manual_seed(0)
    a, _ = obj.loss(batch, torch.Generator().manual_seed(5))
    torch.manual_seed(123)
    b, _ = obj.loss(batch, torch.Generator().manual_seed(5))
    c, _ = obj.loss(batch, torch.Generator().manual_seed(6))
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


# --------------------------------------------------------------------------- InfoNCE
def test_info_nce_identical_views_with_large_scale_is_near_zero() -> None:
    g = torch.Generator().manual_seed(0)
    q = F.normalize(torch.randn(16, 64, generator=g), dim=1)
    loss, accuracy = info_nce(q, q.clone(), scale=100.0)
    assert float(loss) < 1e-3
    assert float(accuracy) == 1.0
    # The bilinear identity is the plain dot product.
    loss_w, _ = info_nce(q, q.clone(), torch.eye(64), scale=100.0)
    torch.testing.assert_close(loss_w, loss)


def test_info_nce_random_embeddings_is_about_log_batch() -> None:
    g = torch.Generator().manual_seed(0)
    b = 64
    q = F.normalize(torch.randn(b, 128, generator=g), dim=1)
    k = F.normalize(torch.randn(b, 128, generator=g), dim=1)
    loss, _ = info_nce(q, k)
    assert abs(float(loss) - math.log(b)) < 0.05


def test_info_nce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="query and key"):
        info_nce(torch.zeros(4, 8), torch.zeros(5, 8))


# ------------------------------------------------------------------------------- MAE
@pytest.mark.parametrize("ratio", [0.25, 0.6, 0.75])
def test_random_mask_hides_exactly_the_ratio(ratio: float) -> None:
    n = 49
    mask, ids_keep, ids_restore = random_mask(5, n, ratio, torch.Generator().manual_seed(0),
                                              torch.device("cpu"))
    hidden = round(ratio * n)
    assert num_masked(n, ratio) == hidden
    assert mask.shape == (5, n) and mask.dtype == torch.bool
    assert (mask.sum(dim=1) == hidden).all()
    assert ids_keep.shape == (5, n - hidden)
    assert not torch.gather(mask, 1, ids_keep).any()
    # ids_restore inverts the shuffle whose first entries are the visible patches.
    ids_shuffle = ids_restore.argsort(dim=1)
    torch.testing.assert_close(ids_shuffle[:, : n - hidden], ids_keep)
    assert torch.gather(mask, 1, ids_shuffle[:, n - hidden:]).all()
    # Different rows get different masks.
    assert not (mask[0] == mask[1]).all()


def test_masked_mse_counts_only_masked_pixels() -> None:
    g = torch.Generator().manual_seed(0)
    target = torch.rand(2, 3, IMAGE, IMAGE, generator=g)
    mask, _, _ = random_mask(2, 49, 0.6, g, torch.device("cpu"))
    pixels = patch_mask_to_pixels(mask.reshape(2, 7, 7), 12, IMAGE, IMAGE)
    assert pixels.shape == (2, 1, IMAGE, IMAGE)
    assert float(pixels.float().mean()) == pytest.approx(num_masked(49, 0.6) / 49)
    garbage = torch.rand(2, 3, IMAGE, IMAGE, generator=g)
    exact_on_masked = torch.where(pixels, target, garbage)
    assert float(masked_mse(exact_on_masked, target, pixels)) == 0.0
    exact_on_visible = torch.where(pixels, garbage, target)
    assert float(masked_mse(exact_on_visible, target, pixels)) > 0.05
    assert float(masked_mse(exact_on_visible, target, ~pixels)) == 0.0


def test_patchify_is_row_major() -> None:
    ids = torch.arange(6, dtype=torch.float32).reshape(1, 1, 2, 3)
    image = ids.repeat_interleave(4, 2).repeat_interleave(4, 3).expand(1, 3, 8, 12)
    patches = patchify(image, 4)
    assert patches.shape == (1, 6, 4 * 4 * 3)
    torch.testing.assert_close(patches[0], torch.arange(6.0)[:, None].expand(6, 48))


def test_cnn_mae_masks_the_configured_ratio_of_its_grid() -> None:
    obj = make_objective("mae", mask_ratio=0.6, patch_px=12)
    assert isinstance(obj, MAE) and not obj.is_vit and obj.grid == (7, 7)
    _, logs = obj.loss(make_batch(4), torch.Generator().manual_seed(0))
    assert logs["mask_ratio"] == pytest.approx(round(0.6 * 49) / 49)


def test_vit_mae_masks_tokens_and_trains_the_transformer() -> None:
    encoder = build_encoder("timm:vit_tiny_patch16_224")
    obj = build_objective("mae", encoder, MAEConfig(mask_ratio=0.75, decoder_dim=64,
                                                    decoder_depth=1))
    assert isinstance(obj, MAE) and obj.is_vit and obj.grid == (14, 14)
    loss, logs = obj.loss({"frames": smooth_frames(2, 0)}, torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
    assert logs["mask_ratio"] == pytest.approx(round(0.75 * 196) / 196)
    loss.backward()
    vit: Any = encoder.backbone
    for p in (vit.patch_embed.proj.weight, vit.blocks[0].attn.qkv.weight, vit.cls_token,
              vit.pos_embed, obj.mask_token):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------ ATC
def test_atc_needs_frames_next() -> None:
    obj = make_objective("atc")
    with pytest.raises(KeyError, match="frames_next"):
        obj.loss({"frames": smooth_frames(4, 0)}, torch.Generator())


# ----------------------------------------------------------------------- optimisation
@pytest.mark.parametrize(("name", "steps", "config"),
                         [("curl", 30, {}), ("mae", 15, {"decoder_channels": 16})])
def test_a_few_steps_reduce_the_loss_on_a_fixed_batch(name: str, steps: int,
                                                      config: dict[str, object]) -> None:
    torch.manual_seed(0)  # parameter initialisation only
    obj = make_objective(name, **config)
    batch = make_batch(16)
    optimizer = torch.optim.Adam(obj.trainable_parameters(), lr=1e-3)

    def evaluate() -> float:
        with torch.no_grad():
            loss, _ = obj.loss(batch, torch.Generator().manual_seed(99))
        return float(loss)

    before = evaluate()
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss, _ = obj.loss(batch, g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        obj.after_step()
    after = evaluate()
    assert after < 0.8 * before


# ------------------------------------------------------------------------------ CUDA
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("name", OBJECTIVE_NAMES)
def test_objectives_run_on_cuda_with_a_cpu_generator(name: str) -> None:
    encoder = build_encoder("nature_cnn", embed_dim=64).cuda()
    obj = build_objective(name, encoder, augment=random_shift)
    assert all(p.is_cuda for p in obj.parameters())
    loss, _ = obj.loss(make_batch(), torch.Generator().manual_seed(0))
    assert loss.is_cuda and torch.isfinite(loss)
    loss.backward()
    obj.after_step()


def test_mae_rejects_frames_of_the_wrong_size() -> None:
    obj = make_objective("mae")
    with pytest.raises(ValueError, match=r"\(84, 84\)"):
        obj.loss({"frames": smooth_frames(2, 0, size=64)}, torch.Generator())


@pytest.mark.parametrize("name", ["curl", "atc"])
def test_works_with_the_project_augmenter(name: str) -> None:
    from perception.augment import AugmentConfig, Augmenter

    obj = build_objective(name, build_encoder("nature_cnn", embed_dim=32),
                          augment=Augmenter(AugmentConfig()))
    loss, _ = obj.loss(make_batch(4), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)
