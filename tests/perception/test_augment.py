"""Augmentations: seeded determinism, shapes, label-consistent flips, config errors."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import Tensor

from common.config import ConfigError, from_dict
from perception.augment import (
    AUGMENT_OPS,
    AugmentConfig,
    Augmenter,
    color_jitter,
    cutout,
    horizontal_flip,
    random_resized_crop,
    random_shift,
)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _images(batch: int = 6, size: int = 16, seed: int = 0) -> Tensor:
    return torch.rand(batch, 3, size, size, generator=_gen(seed))


OPS: dict[str, Callable[[Tensor, torch.Generator], Tensor]] = {
    "random_shift": lambda x, g: random_shift(x, 4, generator=g),
    "random_resized_crop": lambda x, g: random_resized_crop(x, generator=g),
    "color_jitter": lambda x, g: color_jitter(x, generator=g),
    "cutout": lambda x, g: cutout(x, 0.25, generator=g),
}


@pytest.mark.parametrize("op", sorted(OPS))
def test_ops_are_deterministic_per_seed_and_keep_shape(op: str) -> None:
    x = _images()
    global_state = torch.random.get_rng_state()
    a = OPS[op](x, _gen(1))
    b = OPS[op](x, _gen(1))
    c = OPS[op](x, _gen(2))
    assert torch.equal(torch.random.get_rng_state(), global_state)  # no global RNG use
    assert a.shape == x.shape and a.dtype == x.dtype
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert torch.equal(x, _images())  # input untouched


def test_random_shift_is_an_integer_shift_of_the_padded_frame() -> None:
    x = _images(4, 12)
    pad = 2
    out = random_shift(x, pad, generator=_gen(5))
    padded = torch.nn.functional.pad(x, (pad,) * 4, mode="replicate")
    for i in range(x.shape[0]):
        crops = [padded[i, :, dy:dy + 12, dx:dx + 12]
                 for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)]
        assert any(torch.equal(out[i], c) for c in crops)
    assert torch.equal(random_shift(x, 0, generator=_gen(0)), x)


def test_full_crop_is_identity_and_out_size() -> None:
    x = _images(3, 16)
    same = random_resized_crop(x, (1.0, 1.0), (1.0, 1.0), generator=_gen(0))
    assert torch.allclose(same, x, atol=1e-5)
    assert random_resized_crop(x, generator=_gen(0), out_size=(8, 10)).shape == (3, 3, 8, 10)


def test_color_jitter_range_identity_and_frame_stacks() -> None:
    x = _images()
    assert torch.allclose(color_jitter(x, 0.0, 0.0, 0.0, generator=_gen(0)), x)
    y = color_jitter(x, 1.0, 1.0, 1.0, generator=_gen(0))
    assert float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    # Two stacked copies of one frame get the same factors.
    stack = torch.cat([x, x], dim=1)
    z = color_jitter(stack, generator=_gen(3))
    assert torch.equal(z[:, :3], z[:, 3:])
    with pytest.raises(ValueError, match="multiple of 3"):
        color_jitter(torch.rand(2, 4, 8, 8), generator=_gen(0))


def test_cutout_fills_one_box_per_sample() -> None:
    x = 0.5 + 0.5 * _images(5, 16)  # no zeros in the input
    y = cutout(x, 0.25, 0.0, generator=_gen(0))
    filled = (y == 0).all(dim=1).sum(dim=(1, 2))
    assert filled.tolist() == [16] * 5  # a 4x4 box each


def test_uint8_input_is_rejected_by_functions() -> None:
    with pytest.raises(ValueError, match="float frames"):
        random_shift(torch.zeros(1, 3, 8, 8, dtype=torch.uint8), generator=_gen(0))


def _labels(batch: int, seed: int = 0) -> dict[str, Tensor]:
    g = _gen(seed)
    return {
        "lane_offset": torch.randn(batch, generator=g),
        "steer": torch.randn(batch, 1, generator=g),
        "speed": torch.rand(batch, generator=g),
        "command": torch.tensor([0, 1, 2, 3, 4, 5] * (batch // 6)),
        "command_onehot": torch.eye(6)[torch.tensor([1, 2, 4, 5, 0, 3] * (batch // 6))],
        "depth": torch.rand(batch, 16, 16, generator=g),
    }


def _flip(x: Tensor, labels: dict[str, Tensor], seed: int, p: float = 0.5
          ) -> tuple[Tensor, dict[str, Tensor]]:
    return horizontal_flip(
        x, labels, {"lane_offset": -1.0, "steer": -1.0}, p, generator=_gen(seed),
        swap_keys={"command": [(1, 2), (4, 5)], "command_onehot": [(1, 2), (4, 5)]},
        spatial_keys=("depth",))


def test_flip_changes_labels_of_flipped_samples_only() -> None:
    x, labels = _images(12), _labels(12)
    out, new = _flip(x, labels, seed=4)
    flipped = torch.tensor([torch.equal(out[i], x[i].flip(-1)) for i in range(12)])
    kept = torch.tensor([torch.equal(out[i], x[i]) for i in range(12)])
    assert bool((flipped ^ kept).all()) and 0 < int(flipped.sum()) < 12
    assert torch.equal(new["lane_offset"][flipped], -labels["lane_offset"][flipped])
    assert torch.equal(new["lane_offset"][kept], labels["lane_offset"][kept])
    assert torch.equal(new["steer"][flipped], -labels["steer"][flipped])
    assert torch.equal(new["speed"], labels["speed"])
    swap = torch.tensor([0, 2, 1, 3, 5, 4])
    assert torch.equal(new["command"][flipped], swap[labels["command"][flipped]])
    assert torch.equal(new["command"][kept], labels["command"][kept])
    assert torch.equal(new["command_onehot"][flipped],
                       labels["command_onehot"][flipped][:, swap])
    assert torch.equal(new["depth"][flipped], labels["depth"][flipped].flip(-1))
    assert torch.equal(new["depth"][kept], labels["depth"][kept])


def test_flip_twice_is_identity() -> None:
    x, labels = _images(12), _labels(12)
    for seed, p in ((7, 0.5), (0, 1.0)):
        once = _flip(x, labels, seed, p)
        back_x, back = _flip(*once, seed, p)
        assert torch.equal(back_x, x)
        assert all(torch.equal(back[k], v) for k, v in labels.items())
    none_x, none = _flip(x, labels, 0, 0.0)
    assert torch.equal(none_x, x) and all(torch.equal(none[k], v) for k, v in labels.items())


def test_flip_rejects_missing_or_misshaped_labels() -> None:
    x = _images(4)
    with pytest.raises(ValueError, match=r"labels \['steer'\] are listed but not given"):
        horizontal_flip(x, {}, {"steer": -1.0}, generator=_gen(0))
    with pytest.raises(ValueError, match="leading batch dimension 4"):
        horizontal_flip(x, {"steer": torch.zeros(3)}, {"steer": -1.0}, generator=_gen(0))


def test_augmenter_pipeline() -> None:
    cfg = AugmentConfig(ops=("random_resized_crop", "random_shift", "color_jitter", "cutout",
                             "horizontal_flip"))
    aug = Augmenter(cfg)
    frames = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=_gen(0))
    a, b, c = aug(frames, _gen(1)), aug(frames, _gen(1)), aug(frames, _gen(2))
    assert a.shape == (6, 3, 16, 16) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert Augmenter()(frames, _gen(0)).shape == (6, 3, 16, 16)


def test_augmenter_flips_configured_labels() -> None:
    cfg = from_dict(AugmentConfig, {"ops": ["horizontal_flip"], "flip_p": 1.0,
                                    "flip_negate_keys": ["lane_offset"],
                                    "flip_swap": [["command", 1, 2], ["command", 4, 5]],
                                    "flip_spatial_keys": ["depth"]})
    x, labels = _images(6), _labels(6)
    out, new = Augmenter(cfg).apply_with_labels(x, labels, _gen(0))
    assert torch.equal(out, x.flip(-1))
    assert torch.equal(new["lane_offset"], -labels["lane_offset"])
    assert new["command"].tolist() == [0, 2, 1, 3, 5, 4]
    assert torch.equal(new["depth"], labels["depth"].flip(-1))


def test_unknown_op_lists_valid_ones() -> None:
    with pytest.raises(ValueError) as err:
        AugmentConfig(ops=("random_shift", "rotate"))
    assert isinstance(err.value, ConfigError)
    assert "'rotate'" in str(err.value)
    assert all(op in str(err.value) for op in AUGMENT_OPS)
    with pytest.raises(ConfigError, match="brightness must be in"):
        AugmentConfig(brightness=1.5)
