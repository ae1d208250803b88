"""Linear probes: how much of a simulator label a frozen embedding holds, linearly.

For each encoder the frames of a train and a validation split are embedded once
(:func:`embed_split`); then, per label, a ridge model is fitted on the train embeddings
and scored on the validation ones:

* regression labels (lane offset, heading error, lead distance, speed, ...): ridge
  regression in closed form, scored with R^2 on the validation split;
* classification labels (signal state, route command, ...): a one-vs-rest ridge
  classifier (targets +-1, arg-max prediction), scored with accuracy, reported beside
  the majority-class accuracy.

Features are standardised with train statistics. The ridge strength is chosen from a
small grid by K-fold cross-validation on the TRAIN split only, with folds made of whole
episodes (neighbouring frames are nearly identical, so frame-level folds would reward
memorisation). The objective is the MEAN squared error plus ``alpha * |w|^2``, so the
grid does not depend on the number of frames. Rows whose label is NaN (e.g. no lead
vehicle) are dropped for that label only. Everything is deterministic.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from common.config import require
from perception.dataset import (
    DatasetError,
    iter_frame_chunks,
    load_split_arrays,
    read_manifest,
)

#: Labels probed by default (those the dataset holds).
DEFAULT_PROBE_LABELS: tuple[str, ...] = (
    "lane_offset_m", "heading_error_rad", "lead_distance_m", "speed_mps", "signal_state",
    "route_command")
#: Smallest feature scale used for standardisation, relative to the median feature scale.
SCALE_FLOOR = 0.05
#: Ridge strengths tried (relative to the mean squared error on standardised features).
DEFAULT_ALPHAS: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0)

Metric = Literal["r2", "accuracy"]


@dataclass(frozen=True)
class ProbeConfig:
    """Settings of a probe run.

    Attributes:
        labels: Labels to probe; ``None`` probes those of :data:`DEFAULT_PROBE_LABELS`
            that the dataset holds.
        alphas: Ridge strengths tried by cross-validation.
        folds: Number of cross-validation folds on the train split (whole episodes).
        batch_size: Frames per encoder forward pass.
        max_frames: Use at most this many frames per split (``None`` = all).
        train_split: Split the probes are fitted on.
        val_split: Split the probes are scored on.
    """

    labels: tuple[str, ...] | None = None
    alphas: tuple[float, ...] = DEFAULT_ALPHAS
    folds: int = 5
    batch_size: int = 256
    max_frames: int | None = None
    train_split: str = "train"
    val_split: str = "val"

    def __post_init__(self) -> None:
        require(len(self.alphas) >= 1 and all(a > 0 for a in self.alphas),
                "probe.alphas must be a non-empty list of positive numbers")
        require(self.folds >= 2, "probe.folds must be >= 2")
        require(self.batch_size >= 1, "probe.batch_size must be >= 1")
        require(self.max_frames is None or self.max_frames >= 1,
                "probe.max_frames must be >= 1 or null")
        require(self.train_split != self.val_split,
                "probe.train_split and probe.val_split must differ")


# --------------------------------------------------------------------------- ridge


@dataclass(frozen=True)
class RidgeFit:
    """A fitted ridge model on the original feature scale: ``y = X @ coef + intercept``.

    Attributes:
        coef: ``(D,)`` for one target or ``(D, T)`` for ``T`` targets.
        intercept: Scalar or ``(T,)``.
        alpha: The ridge strength it was fitted with.
    """

    coef: np.ndarray
    intercept: np.ndarray
    alpha: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        """Predictions for features ``X`` ``(N, D)``."""
        return np.asarray(X, dtype=np.float64) @ self.coef + self.intercept


class _RidgePath:
    """Ridge solutions for many alphas from one eigendecomposition.

    Minimises ``mean((y - Xw - b)^2) + alpha |w|^2`` on standardised ``X``: with
    ``G = Xs^T Xs / n = V diag(s) V^T`` the solution is ``V diag(1/(s + alpha)) V^T
    Xs^T yc / n``; when ``n < D`` the same is computed from the ``n x n`` Gram matrix.
    """

    def __init__(self, X: np.ndarray, Y: np.ndarray) -> None:
        X = np.asarray(X, dtype=np.float64)
        Y = np.asarray(Y, dtype=np.float64)
        n = len(X)
        self.mean = X.mean(axis=0)
        scale = X.std(axis=0)
        # Constant features carry no information; a unit scale keeps them at zero.
        scale[scale < 1e-12] = 1.0
        # Nearly constant features (a ReLU unit that fires on a handful of training
        # frames) would be blown up by standardisation and swamp the prediction on
        # frames where they fire; floor their scale at a fraction of the typical one.
        typical = float(np.median(scale))
        self.scale = np.maximum(scale, SCALE_FLOOR * typical)
        self.y_mean = Y.mean(axis=0)
        Xs = (X - self.mean) / self.scale
        Yc = Y - self.y_mean
        self.n = n
        self.dual = n < X.shape[1]
        if self.dual:
            s, U = np.linalg.eigh(Xs @ Xs.T / n)
            self.s = np.clip(s, 0.0, None)
            self.left = Xs.T @ U / n  # (D, n)
            self.right = U.T @ Yc
        else:
            s, V = np.linalg.eigh(Xs.T @ Xs / n)
            self.s = np.clip(s, 0.0, None)
            self.left = V
            self.right = V.T @ (Xs.T @ Yc) / n

    def fit(self, alpha: float) -> RidgeFit:
        # Dual form: w = Xs^T (Xs Xs^T + n alpha I)^-1 yc = (Xs^T U / n) diag(1/(s+alpha)) U^T yc
        shrink = 1.0 / (self.s + alpha)
        right = self.right * (shrink[:, None] if self.right.ndim == 2 else shrink)
        w_std = self.left @ right
        coef = (w_std / (self.scale[:, None] if w_std.ndim == 2 else self.scale))
        intercept = self.y_mean - self.mean @ coef
        return RidgeFit(coef=coef, intercept=np.asarray(intercept), alpha=float(alpha))


def fit_ridge(X: np.ndarray, y: np.ndarray, alpha: float) -> RidgeFit:
    """Fit ridge regression in closed form on standardised features.

    Minimises ``mean((y - X w - b)^2) + alpha * |w_std|^2`` where ``w_std`` are the
    weights on features standardised with the mean and standard deviation of ``X``; the
    intercept is not penalised. For ``alpha -> 0`` this is ordinary least squares.

    Args:
        X: Features ``(N, D)``.
        y: Targets ``(N,)`` or ``(N, T)``.
        alpha: Ridge strength, >= 0 (0 only with a full-rank ``X``).

    Returns:
        The model on the original feature scale.
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or len(X) != len(y) or len(X) < 1:
        raise ValueError(f"fit_ridge needs X (N, D) and y (N, ...) with N >= 1, got "
                         f"{X.shape} and {y.shape}")
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return _RidgePath(X, y).fit(alpha)


def _fold_ids(n: int, groups: np.ndarray | None, folds: int) -> np.ndarray:
    """Fold index per row: whole groups (episodes) per fold, else contiguous blocks."""
    if groups is not None:
        uniq, inverse = np.unique(groups, return_inverse=True)
        if len(uniq) >= 2:
            k = min(folds, len(uniq))
            return (inverse % k).astype(np.int64)
    k = min(folds, n)
    return (np.arange(n) * k // n).astype(np.int64)


def r2_score(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Coefficient of determination; NaN when ``y_true`` is constant or empty."""
    y_true = np.asarray(y_true, dtype=np.float64)
    ss_tot = float(np.sum((y_true - y_true.mean()) ** 2)) if len(y_true) else 0.0
    if ss_tot <= 1e-12 * max(1, len(y_true)):
        return math.nan
    return 1.0 - float(np.sum((y_true - np.asarray(y_pred, dtype=np.float64)) ** 2)) / ss_tot


# --------------------------------------------------------------------------- probe results


@dataclass(frozen=True)
class ProbeResult:
    """The score of one probe.

    Attributes:
        label: Label name.
        metric: ``"r2"`` (regression) or ``"accuracy"`` (classification).
        value: Score on the validation split (NaN if it could not be computed, e.g. too
            few frames with the label defined).
        n_train: Train frames used (label defined).
        n_val: Validation frames used.
        alpha: Ridge strength chosen by cross-validation (``None`` if none was fitted).
        baseline: Majority-class accuracy on the validation split (classification only).
    """

    label: str
    metric: Metric
    value: float
    n_train: int
    n_val: int
    alpha: float | None = None
    baseline: float | None = None

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data (NaN becomes ``null``)."""
        out: dict[str, Any] = {"metric": self.metric, "value": _finite_or_none(self.value),
                               "n_train": self.n_train, "n_val": self.n_val,
                               "alpha": self.alpha}
        if self.metric == "accuracy":
            out["baseline"] = _finite_or_none(self.baseline)
        return out


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _prepare(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray, y_val: np.ndarray,
             groups: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                 np.ndarray | None]:
    X_train = np.asarray(X_train, dtype=np.float64)
    X_val = np.asarray(X_val, dtype=np.float64)
    y_train = np.asarray(y_train)
    y_val = np.asarray(y_val)
    if X_train.ndim != 2 or X_val.ndim != 2 or X_train.shape[1] != X_val.shape[1]:
        raise ValueError(f"probe features must be (N, D) with the same D, got {X_train.shape} "
                         f"and {X_val.shape}")
    if len(X_train) != len(y_train) or len(X_val) != len(y_val):
        raise ValueError("probe features and labels must have the same number of rows")
    if y_train.ndim != 1 or y_val.ndim != 1:
        raise ValueError("linear probes need one scalar label per frame")
    if not (np.all(np.isfinite(X_train)) and np.all(np.isfinite(X_val))):
        raise ValueError("embeddings contain NaN or inf; the encoder output is broken")
    # Undefined labels (NaN, e.g. no lead vehicle) are dropped for this label only.
    keep_tr = np.isfinite(y_train) if y_train.dtype.kind == "f" else np.ones(len(y_train), bool)
    keep_va = np.isfinite(y_val) if y_val.dtype.kind == "f" else np.ones(len(y_val), bool)
    g = None if groups is None else np.asarray(groups)[keep_tr]
    return X_train[keep_tr], y_train[keep_tr], X_val[keep_va], y_val[keep_va], g


def probe_regression(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                     y_val: np.ndarray, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                     groups: np.ndarray | None = None, folds: int = 5,
                     label: str = "") -> ProbeResult:
    """Fit a ridge probe on train features and report R^2 on validation features.

    Args:
        X_train / X_val: Embeddings ``(N, D)``.
        y_train / y_val: Scalar labels ``(N,)``; NaN rows are dropped.
        alphas: Ridge strengths tried by cross-validation on the train rows.
        groups: Episode id per train row, so that folds hold whole episodes.
        folds: Number of folds.
        label: Label name for the result.

    Returns:
        R^2 on validation (NaN if fewer than 2 train rows or constant validation labels).
    """
    Xtr, ytr, Xva, yva, g = _prepare(X_train, y_train, X_val, y_val, groups)
    ytr = ytr.astype(np.float64)
    yva = yva.astype(np.float64)
    if len(ytr) < 2 or len(yva) < 1:
        return ProbeResult(label, "r2", math.nan, len(ytr), len(yva))
    alpha = _select_alpha(Xtr, ytr, g, folds, alphas,
                          lambda pred, true: -float(np.sum((pred - true) ** 2)))
    model = fit_ridge(Xtr, ytr, alpha)
    return ProbeResult(label, "r2", r2_score(yva, model.predict(Xva)), len(ytr), len(yva),
                       alpha=alpha)


def probe_classification(X_train: np.ndarray, y_train: np.ndarray, X_val: np.ndarray,
                         y_val: np.ndarray, *, alphas: Sequence[float] = DEFAULT_ALPHAS,
                         groups: np.ndarray | None = None, folds: int = 5,
                         label: str = "") -> ProbeResult:
    """Fit a one-vs-rest ridge classifier and report validation accuracy.

    Args:
        X_train / X_val: Embeddings ``(N, D)``.
        y_train / y_val: Integer class labels ``(N,)`` (NaN rows dropped if float).
        alphas: Ridge strengths tried by cross-validation on the train rows.
        groups: Episode id per train row, so that folds hold whole episodes.
        folds: Number of folds.
        label: Label name for the result.

    Returns:
        Accuracy on validation, with the majority-class (of train) accuracy as baseline.
    """
    Xtr, ytr, Xva, yva, g = _prepare(X_train, y_train, X_val, y_val, groups)
    if len(ytr) < 1 or len(yva) < 1:
        return ProbeResult(label, "accuracy", math.nan, len(ytr), len(yva))
    classes, counts = np.unique(ytr, return_counts=True)
    majority = classes[int(np.argmax(counts))]
    baseline = float(np.mean(yva == majority))
    if len(classes) < 2 or len(ytr) < 2:
        # One class seen in training: the only sensible classifier is the constant one.
        return ProbeResult(label, "accuracy", baseline, len(ytr), len(yva), baseline=baseline)
    targets = np.where(ytr[:, None] == classes[None, :], 1.0, -1.0)

    def score(pred: np.ndarray, true: np.ndarray) -> float:
        # Accuracy first; the squared error breaks ties (accuracy is coarse).
        hits = float(np.sum(np.argmax(pred, axis=1) == np.argmax(true, axis=1)))
        return hits - 1e-9 * float(np.sum((pred - true) ** 2))

    alpha = _select_alpha(Xtr, targets, g, folds, alphas, score)
    model = fit_ridge(Xtr, targets, alpha)
    pred = classes[np.argmax(model.predict(Xva), axis=1)]
    return ProbeResult(label, "accuracy", float(np.mean(pred == yva)), len(ytr), len(yva),
                       alpha=alpha, baseline=baseline)


def _select_alpha(X: np.ndarray, Y: np.ndarray, groups: np.ndarray | None, folds: int,
                  alphas: Sequence[float],
                  score: Callable[[np.ndarray, np.ndarray], float]) -> float:
    """The alpha with the best summed held-out ``score`` (higher is better) over folds."""
    alphas = sorted(float(a) for a in alphas)
    if not alphas:
        raise ValueError("alphas must not be empty")
    if len(alphas) == 1:
        return alphas[0]
    fold = _fold_ids(len(X), groups, folds)
    totals = np.zeros(len(alphas))
    for f in np.unique(fold):
        held = fold == f
        if held.all():
            continue
        path = _RidgePath(X[~held], Y[~held])
        for i, a in enumerate(alphas):
            totals[i] += score(path.fit(a).predict(X[held]), Y[held])
    # Ties go to the strongest regularisation (the last of the maxima).
    best = len(alphas) - 1 - int(np.argmax(totals[::-1]))
    return alphas[best]


# --------------------------------------------------------------------------- embedding


def _module_device(module: torch.nn.Module) -> torch.device:
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return torch.device("cpu")


def embed_split(encoder: torch.nn.Module, root: str | Path, split: str,
                batch_size: int = 256, device: str | torch.device | None = None,
                max_frames: int | None = None,
                label_keys: Sequence[str] | None = None) -> tuple[np.ndarray,
                                                                  dict[str, np.ndarray]]:
    """Embed every frame of a split with a frozen encoder.

    The encoder runs in eval mode under ``torch.no_grad()`` (its previous mode is
    restored afterwards); frames are streamed from the shards ``batch_size`` at a time.

    Args:
        encoder: Module mapping uint8 ``(B, H, W, 3)`` to ``(B, D)`` embeddings.
        root: Dataset directory.
        split: Split name.
        batch_size: Frames per forward pass.
        device: Where the frames go (default: the device of the encoder's parameters).
        max_frames: Embed at most this many frames (``None`` = all).
        label_keys: Labels to return (``None`` = all scalar labels).

    Returns:
        ``(embeddings, labels)``: float32 ``(N, D)`` and the label arrays (plus
        ``episode``, ``seed`` and ``step``), row-aligned.

    Raises:
        DatasetError: For a missing/corrupt dataset, unknown split or key.
        ValueError: If the encoder does not return ``(B, D)``.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be >= 1 or None, got {max_frames}")
    manifest = read_manifest(root)
    if label_keys is None:
        label_keys = [spec.name for spec in manifest.labels if spec.is_scalar]
    labels = load_split_arrays(root, split, label_keys, max_frames=max_frames)
    dev = torch.device(device) if device is not None else _module_device(encoder)
    chunks: list[np.ndarray] = []
    was_training = encoder.training
    encoder.eval()
    try:
        with torch.no_grad():
            for frames in iter_frame_chunks(root, split, chunk=batch_size,
                                            max_frames=max_frames):
                out = encoder(torch.from_numpy(frames).to(dev))
                if not isinstance(out, torch.Tensor) or out.ndim != 2 or len(out) != len(frames):
                    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out)
                    raise ValueError(f"encoder must return (B, D) embeddings for (B, H, W, 3) "
                                     f"frames; got {shape} for B={len(frames)}")
                chunks.append(out.float().cpu().numpy())
    finally:
        encoder.train(was_training)
    emb = np.concatenate(chunks).astype(np.float32, copy=False)
    n = len(labels["episode"])
    if len(emb) != n:
        raise DatasetError(f"dataset {root} split '{split}': {len(emb)} frames but {n} labels")
    return emb, labels


# --------------------------------------------------------------------------- report


@dataclass(frozen=True)
class ProbeReport:
    """Probe scores per encoder and label.

    Attributes:
        rows: ``encoder name -> label -> ProbeResult``.
        labels: Label order (columns).
        dataset: Dataset directory.
        train_split / val_split: The splits used.
    """

    rows: dict[str, dict[str, ProbeResult]]
    labels: tuple[str, ...]
    dataset: str = ""
    train_split: str = "train"
    val_split: str = "val"
    embed_dims: dict[str, int] = field(default_factory=dict)
    speed: dict[str, dict[str, float]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data: per encoder, ``label -> {metric, value, n_train, n_val, ...}``."""
        return {
            "dataset": self.dataset,
            "train_split": self.train_split,
            "val_split": self.val_split,
            "labels": list(self.labels),
            "embed_dims": dict(self.embed_dims),
            "rows": {enc: {lab: res.to_json() for lab, res in row.items()}
                     for enc, row in self.rows.items()},
        }

    def to_markdown(self) -> str:
        """A Markdown table: one row per encoder, one column per label."""
        metric_of: dict[str, str] = {}
        for row in self.rows.values():
            for lab, result in row.items():
                metric_of.setdefault(lab, "R^2" if result.metric == "r2" else "acc")
        header = ["encoder"] + [f"{lab} ({metric_of.get(lab, '?')})" for lab in self.labels]
        lines = ["| " + " | ".join(header) + " |",
                 "|" + "|".join(["---"] + ["---:"] * len(self.labels)) + "|"]
        for enc, row in self.rows.items():
            cells = [enc]
            for lab in self.labels:
                res = row.get(lab)
                if res is None or not math.isfinite(res.value):
                    cells.append("n/a")
                elif res.metric == "accuracy" and res.baseline is not None:
                    cells.append(f"{res.value:.3f} (majority {res.baseline:.3f})")
                else:
                    cells.append(f"{res.value:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


def _resolve_labels(root: str | Path, labels: Sequence[str] | None) -> list[str]:
    manifest = read_manifest(root)
    if labels is None:
        chosen = [lab for lab in DEFAULT_PROBE_LABELS if lab in manifest.label_names]
        if not chosen:
            raise DatasetError(f"dataset {root} holds none of the default probe labels "
                               f"({', '.join(DEFAULT_PROBE_LABELS)}); its labels: "
                               + (", ".join(manifest.label_names) or "(none)"))
        return chosen
    out = list(dict.fromkeys(labels))
    for lab in out:
        spec = manifest.label(lab)
        if not spec.is_scalar:
            raise DatasetError(f"label '{lab}' has per-frame shape {spec.shape}; linear probes "
                               "need scalar labels")
    return out


def run_probes(encoders: Mapping[str, torch.nn.Module], root: str | Path,
               labels: Sequence[str] | None = None, *, config: ProbeConfig | None = None,
               device: str | torch.device | None = None,
               progress: Callable[[str], None] | None = None) -> ProbeReport:
    """Probe every encoder on every label: fit on the train split, score on validation.

    Args:
        encoders: Name -> frozen encoder (uint8 ``(B, H, W, 3)`` -> ``(B, D)``).
        root: Dataset directory.
        labels: Labels to probe; overrides ``config.labels``. ``None`` (in both) probes
            those of :data:`DEFAULT_PROBE_LABELS` that the dataset holds.
        config: Alphas, folds, batch size, frame limit and splits.
        device: Device for the frames (default: each encoder's own device).
        progress: Called with a short message before each encoder/split is embedded.

    Returns:
        The report.

    Raises:
        DatasetError: For a missing/corrupt dataset, an unknown or non-scalar label, or an
            unknown/empty split.
    """
    cfg = config or ProbeConfig()
    if not encoders:
        raise ValueError("run_probes needs at least one encoder")
    chosen = _resolve_labels(root, labels if labels is not None else cfg.labels)
    manifest = read_manifest(root)
    kinds = {lab: manifest.label(lab).kind for lab in chosen}
    rows: dict[str, dict[str, ProbeResult]] = {}
    dims: dict[str, int] = {}
    for name, encoder in encoders.items():
        embedded: dict[str, tuple[np.ndarray, dict[str, np.ndarray]]] = {}
        for split in (cfg.train_split, cfg.val_split):
            if progress is not None:
                progress(f"embedding {split} frames with {name}")
            embedded[split] = embed_split(encoder, root, split, batch_size=cfg.batch_size,
                                          device=device, max_frames=cfg.max_frames,
                                          label_keys=chosen)
        (Xtr, ltr), (Xva, lva) = embedded[cfg.train_split], embedded[cfg.val_split]
        dims[name] = int(Xtr.shape[1])
        row: dict[str, ProbeResult] = {}
        for lab in chosen:
            probe = probe_classification if kinds[lab] == "classification" else probe_regression
            row[lab] = probe(Xtr, ltr[lab], Xva, lva[lab], alphas=cfg.alphas,
                             groups=ltr["episode"], folds=cfg.folds, label=lab)
        rows[name] = row
    return ProbeReport(rows=rows, labels=tuple(chosen), dataset=str(root),
                       train_split=cfg.train_split, val_split=cfg.val_split, embed_dims=dims)


__all__ = [
    "DEFAULT_ALPHAS",
    "DEFAULT_PROBE_LABELS",
    "ProbeConfig",
    "ProbeReport",
    "ProbeResult",
    "RidgeFit",
    "embed_split",
    "fit_ridge",
    "probe_classification",
    "probe_regression",
    "r2_score",
    "run_probes",
]


def embedding_speed(encoder: torch.nn.Module, frames: np.ndarray, batch_size: int = 256,
                    repeats: int = 3) -> float:
    """Frames per second of ``encoder`` on uint8 ``frames`` (best of ``repeats``)."""
    import time

    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            for i in range(0, len(frames), batch_size):
                encoder(torch.from_numpy(np.ascontiguousarray(frames[i:i + batch_size])))
            best = min(best, time.perf_counter() - start)
    return len(frames) / best


def probe_checkpoints(checkpoints: Sequence[str | Path], root: str | Path,
                      out_dir: str | Path | None = None, *, random_reference: bool = True,
                      seed: int = 0, config: ProbeConfig | None = None,
                      device: str | torch.device | None = None,
                      quantize: bool = False) -> ProbeReport:
    """Probe encoder checkpoints, with a randomly initialised encoder of the first one's
    architecture as the reference row; write ``probes.json`` and ``probes.md``.

    Args:
        checkpoints: Encoder checkpoint directories (:mod:`perception.checkpoint`).
        root: Dataset directory.
        out_dir: Where to write the report (atomically); ``None`` writes nothing.
        random_reference: Add the ``random_init`` row.
        seed: Seed of the random initialisation.
        config: Probe settings.
        device: Device to embed on (default: CUDA when available).
        quantize: Also probe an int8 dynamically quantised copy of each checkpoint (CPU)
            and measure the embedding speed of both (``speed`` in ``probes.json``).

    Raises:
        CheckpointError: For a missing, corrupt or mismatching checkpoint.
        DatasetError: For a missing or corrupt dataset.
    """
    import json

    from common.io import atomic_write_text
    from perception.checkpoint import encoder_config_of, load_encoder
    from perception.encoders import Encoder, EncoderConfig, build_encoder, freeze

    if not checkpoints and not random_reference:
        raise ValueError("probe: give at least one encoder checkpoint (or the random reference)")
    dev = torch.device(device) if device is not None else torch.device(
        "cuda" if torch.cuda.is_available() else "cpu")
    loaded: dict[str, Encoder] = {}
    for path in checkpoints:
        # A pretrain run keeps its encoder in <run>/encoder: name the row after the run.
        name = Path(path).name if Path(path).name != "encoder" else Path(path).parent.name
        loaded[name or str(path)] = load_encoder(path, device=dev)
    encoders: dict[str, torch.nn.Module] = dict(loaded)
    if random_reference:
        enc_cfg = encoder_config_of(next(iter(loaded.values()))) if loaded else EncoderConfig()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            reference = build_encoder(enc_cfg)
        freeze(reference)
        encoders["random_init"] = reference.to(dev)
    speed: dict[str, dict[str, float]] = {}
    if quantize:
        from perception.quantize import quantize_dynamic_int8

        frames = next(iter_frame_chunks(root, (config or ProbeConfig()).val_split, chunk=1024))
        for name, enc in list(loaded.items()):
            cpu = enc.to("cpu")
            q = quantize_dynamic_int8(cpu)
            encoders[f"{name}_int8"] = q
            fp32_fps, int8_fps = embedding_speed(cpu, frames), embedding_speed(q, frames)
            speed[name] = {"float32_frames_per_s": round(fp32_fps, 1),
                           "int8_frames_per_s": round(int8_fps, 1),
                           "speedup": round(int8_fps / fp32_fps, 3),
                           "threads": torch.get_num_threads()}
    report = run_probes(encoders, root, config=config)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        data = report.to_json()
        if speed:
            data["speed"] = speed
        atomic_write_text(out / "probes.json", json.dumps(data, indent=2))
        text = report.to_markdown()
        for name, sp in speed.items():
            text += (f"\n{name}: float32 {sp['float32_frames_per_s']} frames/s, int8 "
                     f"{sp['int8_frames_per_s']} frames/s (x{sp['speedup']}, "
                     f"{sp['threads']} threads)\n")
        atomic_write_text(out / "probes.md", text)
    return dataclasses.replace(report, speed=speed)
