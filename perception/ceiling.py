"""How much of a label can an encoder architecture read from the frames at all?

A probe (:mod:`perception.probes`) asks what a *pretrained* encoder's embedding carries.
This study asks the question before it: it trains the architecture from scratch,
supervised on one regression label of a frame dataset, and reports the held-out R^2 as
training goes on. If even this supervised fit cannot read a label (e.g. the gap to the
lead vehicle from 84 x 84 frames), no self-supervised objective or auxiliary head will
give it to a policy, and the fix is the camera or the architecture, not the objective::

    python -m perception.ceiling data/highway --label lead_distance_m --fill 80 --clip 80
    python -m perception.ceiling data/highway --label speed_mps --encoder impala_cnn --json out.json

``--fill`` gives rows where the label is undefined (NaN: no lead vehicle) a value, so
that the fit also has to tell "none in range" apart; without it they are left out.
Training runs on the dataset's ``train`` split and is scored on its ``val`` split (split
by episode seed when the data was collected), every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from common.config import require
from common.io import write_json_or_report
from perception.dataset import DatasetError, load_split_arrays, read_manifest
from perception.encoders import build_encoder, to_float_nchw
from perception.pretrain import resolve_device
from perception.probes import r2_score


@dataclass(frozen=True)
class CeilingConfig:
    """The supervised fit.

    Attributes:
        label: Scalar regression label of the dataset.
        encoder: Architecture (``nature_cnn``, ``impala_cnn`` or ``timm:<model>``),
            trained from random initialisation.
        fill: Value for rows whose label is NaN/inf [label unit]; None leaves them out.
        clip: Labels are clipped to at most this [label unit]; None keeps them.
        steps: Optimiser steps.
        batch_size: Frames per step.
        learning_rate: AdamW learning rate.
        eval_every: Score the ``val`` split every this many steps.
        max_frames: Frames loaded per split (None = all; the frames are held in memory).
        seed: Seed of the initialisation and the batch order.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
    """

    label: str = "lead_distance_m"
    encoder: str = "nature_cnn"
    fill: float | None = None
    clip: float | None = None
    steps: int = 4000
    batch_size: int = 128
    learning_rate: float = 3e-4
    eval_every: int = 500
    max_frames: int | None = None
    seed: int = 0
    device: str = "auto"

    def __post_init__(self) -> None:
        require(self.steps >= 1 and self.batch_size >= 1 and self.eval_every >= 1,
                "steps, batch_size and eval_every must be >= 1")
        require(self.learning_rate > 0, "learning_rate must be > 0")
        require(self.max_frames is None or self.max_frames >= 2, "max_frames must be >= 2")


@dataclass(frozen=True)
class CeilingPoint:
    """Held-out scores after ``step`` optimiser steps.

    Attributes:
        step: Optimiser steps so far.
        r2: Held-out R^2 of the label (1 = perfect, 0 = no better than the mean).
        mae: Held-out mean absolute error [label unit].
        seconds: Wall-clock time since training started [s].
    """

    step: int
    r2: float
    mae: float
    seconds: float


def _targets(raw: NDArray[np.generic], cfg: CeilingConfig) -> tuple[NDArray[np.float32],
                                                                   NDArray[np.bool_]]:
    """The label after ``fill`` and ``clip``, and which rows are kept."""
    y = np.asarray(raw, np.float64)
    if cfg.fill is not None:
        y = np.where(np.isfinite(y), y, cfg.fill)
    if cfg.clip is not None:
        y = np.minimum(y, cfg.clip)
    keep = np.isfinite(y)
    return y.astype(np.float32), keep


def load_split(root: str | Path, split: str, cfg: CeilingConfig
               ) -> tuple[NDArray[np.uint8], NDArray[np.float32]]:
    """Frames and targets of one split (rows without a target left out).

    Raises:
        DatasetError: Missing or corrupt dataset, unknown split, or a label that is not a
            scalar regression label (naming the valid ones).
    """
    manifest = read_manifest(root)
    valid = [s.name for s in manifest.labels if s.kind == "regression" and s.is_scalar]
    if cfg.label not in valid:
        raise DatasetError(f"label '{cfg.label}' is not a scalar regression label of "
                           f"{root}; valid: {', '.join(valid) or 'none'}")
    arrays = load_split_arrays(root, split, ["frames", cfg.label], max_frames=cfg.max_frames)
    y, keep = _targets(arrays[cfg.label], cfg)
    if keep.sum() < 2:
        raise DatasetError(f"split '{split}' of {root} has fewer than 2 frames with a "
                           f"finite '{cfg.label}' (use --fill for undefined rows)")
    return arrays["frames"][keep], y[keep]


def fit_ceiling(train: tuple[NDArray[np.uint8], NDArray[np.float32]],
                val: tuple[NDArray[np.uint8], NDArray[np.float32]], cfg: CeilingConfig,
                progress: Callable[[CeilingPoint], None] | None = None) -> list[CeilingPoint]:
    """Train ``cfg.encoder`` + an MLP head from scratch on ``train``; score on ``val``.

    The target is standardised with the training split's mean and spread (smooth L1
    loss), so one learning rate suits labels of any unit.

    Returns:
        The held-out scores every ``cfg.eval_every`` steps (and after the last one).
    """
    device = resolve_device(cfg.device)
    x_tr, y_tr = train
    x_va, y_va = val
    mean, std = float(y_tr.mean()), float(y_tr.std()) + 1e-6
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        encoder = build_encoder(cfg.encoder, image_size=tuple(x_tr.shape[1:3]))
        head = torch.nn.Sequential(torch.nn.Linear(encoder.embed_dim, 256), torch.nn.ReLU(),
                                   torch.nn.Linear(256, 1))
    model = torch.nn.Sequential(encoder, head).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate)
    rng = np.random.default_rng(cfg.seed)
    target = torch.as_tensor((y_tr - mean) / std, device=device)

    def score(step: int, start: float) -> CeilingPoint:
        model.eval()
        with torch.no_grad():
            pred = np.concatenate([
                model(to_float_nchw(torch.from_numpy(x_va[i:i + 512]), device))[:, 0]
                .float().cpu().numpy() for i in range(0, len(x_va), 512)]) * std + mean
        model.train()
        return CeilingPoint(step, r2_score(y_va, pred), float(np.mean(np.abs(pred - y_va))),
                            time.perf_counter() - start)

    points: list[CeilingPoint] = []
    start = time.perf_counter()
    model.train()
    for step in range(1, cfg.steps + 1):
        idx = rng.integers(0, len(x_tr), cfg.batch_size)
        out = model(to_float_nchw(torch.from_numpy(x_tr[idx]), device))[:, 0]
        loss = torch.nn.functional.smooth_l1_loss(out, target[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % cfg.eval_every == 0 or step == cfg.steps:
            points.append(score(step, start))
            if progress is not None:
                progress(points[-1])
    return points


def to_markdown(points: Sequence[CeilingPoint], cfg: CeilingConfig, root: str | Path,
                sizes: tuple[int, int]) -> str:
    """The learning curve as a Markdown table."""
    lines = [f"Supervised ceiling: {cfg.encoder} from scratch -> {cfg.label} on {root} "
             f"({sizes[0]} train / {sizes[1]} val frames; fill {cfg.fill}, clip {cfg.clip})",
             "", "| steps | held-out R^2 | MAE | time [s] |", "| ---: | ---: | ---: | ---: |"]
    lines += [f"| {p.step} | {p.r2:.3f} | {p.mae:.3g} | {p.seconds:.0f} |" for p in points]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m perception.ceiling DATASET [--label L] [--fill V] [--clip V] ...``."""
    parser = argparse.ArgumentParser(prog="python -m perception.ceiling",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="frame dataset folder (bulletdrive collect)")
    parser.add_argument("--label", default=CeilingConfig.label)
    parser.add_argument("--encoder", default=CeilingConfig.encoder)
    parser.add_argument("--fill", type=float, default=None,
                        help="value for undefined (NaN) labels; default: leave those rows out")
    parser.add_argument("--clip", type=float, default=None, help="clip labels to at most this")
    parser.add_argument("--steps", type=int, default=CeilingConfig.steps)
    parser.add_argument("--eval-every", type=int, default=CeilingConfig.eval_every)
    parser.add_argument("--max-frames", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", help="also write the curve and settings as JSON here")
    args = parser.parse_args(argv)
    try:
        cfg = CeilingConfig(label=args.label, encoder=args.encoder, fill=args.fill,
                            clip=args.clip, steps=args.steps, eval_every=args.eval_every,
                            max_frames=args.max_frames, seed=args.seed, device=args.device)
        resolve_device(cfg.device)
        build_encoder(cfg.encoder)  # an unknown name fails here, before loading frames
        train, val = load_split(args.dataset, "train", cfg), load_split(args.dataset, "val", cfg)
        build_encoder(cfg.encoder, image_size=tuple(train[0].shape[1:3]))  # frames too small?
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    points = fit_ceiling(train, val, cfg, progress=lambda p: print(
        f"step {p.step}: R^2 {p.r2:.3f}, MAE {p.mae:.3g} ({p.seconds:.0f} s)", file=sys.stderr))
    print(to_markdown(points, cfg, args.dataset, (len(train[1]), len(val[1]))), end="")
    if args.json:
        return write_json_or_report(args.json, {
            "config": asdict(cfg), "dataset": str(args.dataset),
            "frames": {"train": len(train[1]), "val": len(val[1])},
            "curve": [asdict(p) for p in points]})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
