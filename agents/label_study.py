"""How well can the expert's ``behavior`` labels be predicted from a set of inputs?

Behaviour cloning can only copy what its inputs explain. This study takes the labelled
decisions of a BC run (``--set bc.save_dataset=true`` writes ``<run>/bc_dataset.npz``,
see :func:`agents.bc.save_dataset`) and fits the policy's network (an MLP, tanh, same
optimiser and epochs as ``bc``) on several input sets, with cross-validation over
whole episodes. Comparing the policy's own inputs with the expert's reasons (its
IDM's gap, lead speed and desired speed) tells whether a failure to brake is a missing
input or a learning problem::

    python -m agents.label_study runs/bc/bc_dataset.npz            # Markdown table
    python -m agents.label_study runs/bc/bc_dataset.npz --json out.json
    python -m agents.label_study runs/bc/bc_dataset.npz --embedding-l2 0.3

Cells: held-out accuracy, negative log-likelihood and the recall of each speed label
(the share of the expert's ``faster`` / ``slower`` / ``stop`` decisions the fit repeats).
Below the table: how much of each reason the policy's inputs carry (held-out R^2).
"""

from __future__ import annotations

import argparse
import sys
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from numpy.typing import NDArray

from agents.bc import REASON_COLUMNS, label_counts
from agents.embedding_penalty import add_column_l2_gradient, zero_columns
from common.io import write_json_or_report
from perception.probes import r2_score
from planning.action_modes import MetaAction

#: Keys every dataset file has besides the observations.
REQUIRED_KEYS = ("label", "episode", "expert_reasons")
#: Keys of a dataset file that are not observations (``learner_differs``: datasets
#: written before it existed lack it).
NON_OBSERVATION_KEYS = (*REQUIRED_KEYS, "learner_differs")
#: Labels whose recall is reported.
RECALL_LABELS = (MetaAction.KEEP_LANE, MetaAction.FASTER, MetaAction.SLOWER, MetaAction.STOP)
#: Gaps are clipped here: the expert's free-road gap is a large sentinel [m].
GAP_CLIP_M = 150.0

Array = NDArray[np.float32]


@dataclass(frozen=True)
class FitSettings:
    """The classifier and its training (defaults: those of ``bc`` and the policy).

    Attributes:
        hidden: Hidden layer sizes (tanh).
        epochs: Passes over the training folds.
        batch_size: Minibatch size.
        learning_rate: Adam learning rate.
        folds: Cross-validation folds, split by episode.
        seed: Seed of the fold split, the initialisation and the minibatch order.
        embedding_l2: If > 0, :func:`run_study` adds a row that fits the policy inputs
            as ``bc.embedding_l2`` does: the first layer's weights on the embedding start
            at zero and pay this L2 penalty.
    """

    hidden: tuple[int, ...] = (256, 256)
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    folds: int = 4
    seed: int = 0
    embedding_l2: float = 0.0


@dataclass(frozen=True)
class StudyRow:
    """Held-out scores of one input set (means over the folds)."""

    inputs: str
    features: int
    accuracy: float
    nll: float
    recall: dict[str, float]


def load_dataset(path: str | Path) -> dict[str, NDArray[np.generic]]:
    """Read a ``bc_dataset.npz`` (no pickles).

    Decisions without the expert's reasons (NaN: the expert was off every lane) are left
    out, since no input set could explain them.

    Raises:
        ValueError: If the file is missing or unreadable, lacks the dataset's keys, or
            holds continuous actions (the study needs ``behavior`` labels).
    """
    p = Path(path)
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read BC dataset {p}: {exc} (write one with "
                         "`bulletdrive train --algo bc --set bc.save_dataset=true`)") from exc
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ValueError(f"{p} is not a BC dataset: missing {missing}")
    if data["label"].ndim != 1 or not np.issubdtype(data["label"].dtype, np.integer):
        raise ValueError(f"{p} holds continuous actions (labels {data['label'].shape}, "
                         f"{data['label'].dtype}); the study needs a BC run in action_mode "
                         "'behavior'")
    explained = np.isfinite(data["expert_reasons"]).all(axis=1)
    return {k: v[explained] for k, v in data.items()}


def _concat(data: Mapping[str, NDArray[np.generic]], keys: Sequence[str]) -> Array:
    rows = len(data["label"])
    return np.concatenate([data[k].reshape(rows, -1) for k in keys], 1).astype(np.float32)


def policy_inputs(data: Mapping[str, NDArray[np.generic]]) -> tuple[list[str], Array]:
    """The observation keys of a dataset and their rows concatenated ``(rows, features)``."""
    obs = [k for k in sorted(data) if k not in NON_OBSERVATION_KEYS]
    return obs, _concat(data, obs)


def expert_reasons(data: Mapping[str, NDArray[np.generic]]) -> dict[str, NDArray[np.float64]]:
    """The expert's reasons per decision: ``gap_m`` (clipped at :data:`GAP_CLIP_M`),
    ``closing_speed_mps`` (ego speed minus the lead's) and ``desired_speed_mps``."""
    why = data["expert_reasons"].astype(np.float64)
    col = {c: why[:, i] for i, c in enumerate(REASON_COLUMNS)}
    return {"gap_m": np.minimum(col["gap_m"], GAP_CLIP_M),
            "closing_speed_mps": col["speed_mps"] - col["lead_speed_mps"],
            "desired_speed_mps": col["desired_speed_mps"]}


def input_sets(data: Mapping[str, NDArray[np.generic]]) -> dict[str, Array]:
    """The compared inputs, each ``(rows, features)`` float32.

    ``policy inputs`` are every observation key of the dataset (what the cloned policy
    saw); the ``+`` rows add the expert's reasons to them; the last row is the expert's
    reasons with the layer's target speed alone.
    """
    rows = len(data["label"])
    obs, policy = policy_inputs(data)
    speed = data["expert_reasons"][:, REASON_COLUMNS.index("speed_mps")].astype(np.float64)
    reasons = expert_reasons(data)
    gap, closing = reasons["gap_m"], reasons["closing_speed_mps"]
    desired = reasons["desired_speed_mps"]

    def cols(*arrays: NDArray[np.generic]) -> Array:
        return np.column_stack(arrays).astype(np.float32)

    sets: dict[str, Array] = {}
    small = [k for k in ("measurements", "decision") if k in data]
    if small:
        sets[" + ".join(small)] = _concat(data, small)
    sets["policy inputs (" + ", ".join(obs) + ")"] = policy
    sets["policy inputs + expert's gap"] = np.hstack([policy, cols(gap)])
    sets["policy inputs + gap, closing speed"] = np.hstack([policy, cols(gap, closing)])
    sets["policy inputs + gap, closing speed, desired speed"] = np.hstack(
        [policy, cols(gap, closing, desired)])
    if "decision" in data:
        target = data["decision"].reshape(rows, -1)[:, 0]
        sets["speed, target speed, gap, closing speed, desired speed"] = cols(
            speed, target, gap, closing, desired)
    return sets


def _folds(x: Array, episodes: NDArray[np.generic], order: NDArray[np.generic],
           settings: FitSettings) -> Iterator[tuple[int, NDArray[np.bool_], torch.Tensor]]:
    """Fold index, held-out rows and the inputs standardised with the training folds'
    statistics (as ``VecNormalize`` does for the policy) and clipped to +-10. Fold ``f``
    holds out the episodes ``order[f::folds]``."""
    folds = min(settings.folds, len(order))
    for f in range(folds):
        held = np.isin(episodes, order[f::folds])
        mean, std = x[~held].mean(0), x[~held].std(0) + 1e-4
        yield f, held, torch.as_tensor(np.clip((x - mean) / std, -10, 10), dtype=torch.float32)


def cross_validate(x: Array, labels: NDArray[np.generic], episodes: NDArray[np.generic],
                   settings: FitSettings = FitSettings(), penalised: slice | None = None
                   ) -> tuple[float, float, dict[str, float]]:
    """Fit on all but one fold of episodes, score the held-out fold; mean over folds.

    ``penalised`` columns (the embedding) get first-layer weights that start at zero and
    pay ``settings.embedding_l2`` times their squared sum, as in ``bc.embedding_l2``.

    Returns:
        Accuracy, negative log-likelihood [nats] and the recall of each of
        :data:`RECALL_LABELS` present in a held-out fold (NaN if never present).
    """
    y = np.asarray(labels, np.int64)
    num_classes = max(len(MetaAction), int(y.max()) + 1)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(np.unique(episodes))
    yt = torch.as_tensor(y)
    scores: list[list[float]] = []
    for f, held, xs in _folds(x, episodes, order, settings):
        net = _mlp(x.shape[1], num_classes, settings, seed=settings.seed + f)
        if penalised is not None:  # bc.embedding_l2's start and gradient
            first = net[0]
            assert isinstance(first, torch.nn.Linear)
            zero_columns(first, penalised)
            add_column_l2_gradient(first, penalised, settings.embedding_l2)
        _fit(net, xs[~held], yt[~held], settings, rng)
        with torch.no_grad():
            logits = net(xs[held])
        pred = logits.argmax(1).numpy()
        nll = float(torch.nn.functional.cross_entropy(logits, yt[held]))
        truth = y[held]
        recall = [float(np.mean(pred[truth == c] == c)) if (truth == c).any() else np.nan
                  for c in RECALL_LABELS]
        scores.append([float(np.mean(pred == truth)), nll, *recall])
    with warnings.catch_warnings():  # a label absent from every fold stays NaN
        warnings.simplefilter("ignore", RuntimeWarning)
        mean_scores = np.nanmean(np.asarray(scores, np.float64), axis=0)
    recall_out = {c.name.lower(): float(v) for c, v in zip(RECALL_LABELS, mean_scores[2:],
                                                            strict=True)}
    return float(mean_scores[0]), float(mean_scores[1]), recall_out


def _mlp(inputs: int, outputs: int, settings: FitSettings, seed: int) -> torch.nn.Sequential:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        layers: list[torch.nn.Module] = []
        width = inputs
        for h in settings.hidden:
            layers += [torch.nn.Linear(width, h), torch.nn.Tanh()]
            width = h
        layers.append(torch.nn.Linear(width, outputs))
        return torch.nn.Sequential(*layers)


def _fit(net: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, settings: FitSettings,
         rng: np.random.Generator,
         loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
         = torch.nn.functional.cross_entropy) -> None:
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.learning_rate)
    for _ in range(settings.epochs):
        perm = torch.as_tensor(rng.permutation(len(y)))
        for start in range(0, len(perm), settings.batch_size):
            idx = perm[start:start + settings.batch_size]
            loss = loss_fn(net(x[idx]), y[idx])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()


def reason_r2(data: Mapping[str, NDArray[np.generic]], settings: FitSettings = FitSettings()
              ) -> dict[str, float]:
    """How much of each of the expert's reasons the policy's inputs carry: the held-out
    R^2 (pooled over the folds, split by episode) of the same network fitted by least
    squares to the reason, standardised with the training folds' statistics."""
    _, x = policy_inputs(data)
    rng = np.random.default_rng(settings.seed)
    order = rng.permutation(np.unique(data["episode"]))  # the same folds for every reason
    out = {}
    for name, target in expert_reasons(data).items():
        pred = np.zeros(len(target))
        for f, held, xs in _folds(x, data["episode"], order, settings):
            t_mean, t_std = target[~held].mean(), target[~held].std() + 1e-9
            yt = torch.as_tensor((target - t_mean) / t_std, dtype=torch.float32)[:, None]
            net = _mlp(x.shape[1], 1, settings, seed=settings.seed + f)
            _fit(net, xs[~held], yt[~held], settings, rng, torch.nn.functional.mse_loss)
            with torch.no_grad():
                pred[held] = net(xs[held])[:, 0].numpy() * t_std + t_mean
        out[name] = r2_score(target, pred)
    return out


def embedding_columns(data: Mapping[str, NDArray[np.generic]]) -> slice | None:
    """Where the embedding sits in :func:`policy_inputs` (``None`` if the data has none)."""
    obs, _ = policy_inputs(data)
    rows, start = len(data["label"]), 0
    for k in obs:
        width = int(data[k].reshape(rows, -1).shape[1])
        if k == "embedding":
            return slice(start, start + width)
        start += width
    return None


def run_study(data: Mapping[str, NDArray[np.generic]], settings: FitSettings = FitSettings(),
              progress: Callable[[str], None] | None = None) -> list[StudyRow]:
    """Cross-validate every input set of :func:`input_sets`; where the policy saw an
    embedding beside other inputs, also the policy inputs without it and (with
    ``settings.embedding_l2``) with its weights penalised."""
    jobs: list[tuple[str, Array, slice | None]] = [
        (name, x, None) for name, x in input_sets(data).items()]
    cols = embedding_columns(data)
    obs, policy = policy_inputs(data)
    if cols is not None and len(obs) > 1:
        at = 1 + next(i for i, job in enumerate(jobs) if job[0].startswith("policy inputs ("))
        extra: list[tuple[str, Array, slice | None]] = [(
            "policy inputs without the embedding",
            np.delete(policy, np.arange(cols.start, cols.stop), axis=1), None)]
        if settings.embedding_l2 > 0.0:
            extra.append((f"policy inputs, embedding L2 {settings.embedding_l2:g}", policy,
                          cols))
        jobs[at:at] = extra
    rows = []
    for name, x, penalised in jobs:
        if progress is not None:
            progress(name)
        acc, nll, recall = cross_validate(x, data["label"], data["episode"], settings,
                                          penalised)
        rows.append(StudyRow(name, int(x.shape[1]), acc, nll, recall))
    return rows


def to_markdown(rows: Sequence[StudyRow], data: Mapping[str, NDArray[np.generic]],
                r2: Mapping[str, float] | None = None) -> str:
    """The study as a Markdown table, with the label counts above it and the
    :func:`reason_r2` figures below."""
    counts = label_counts(data["label"].tolist()) or {}
    head = ", ".join(f"{name} {n}" for name, n in counts.items())
    episodes = len(np.unique(data["episode"]))
    names = [c.name.lower() for c in RECALL_LABELS]
    lines = [f"{len(data['label'])} decisions in {episodes} episodes; labels: {head}", "",
             "| inputs | features | accuracy | NLL | " + " | ".join(f"recall {n}" for n in names)
             + " |", "| --- | ---: | ---: | ---: | " + " | ".join("---:" for _ in names) + " |"]
    for r in rows:
        rec = " | ".join("-" if np.isnan(r.recall[n]) else f"{r.recall[n]:.2f}" for n in names)
        lines.append(f"| {r.inputs} | {r.features} | {r.accuracy:.3f} | {r.nll:.3f} | {rec} |")
    if r2:
        lines += ["", "Held-out R^2 of the expert's reasons from the policy inputs: "
                  + ", ".join(f"{k} {v:.2f}" for k, v in r2.items())]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m agents.label_study DATASET [--json OUT] [--folds K]``."""
    parser = argparse.ArgumentParser(prog="python -m agents.label_study",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("dataset", help="bc_dataset.npz of a BC run (bc.save_dataset=true)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    parser.add_argument("--folds", type=int, default=FitSettings.folds)
    parser.add_argument("--epochs", type=int, default=FitSettings.epochs)
    parser.add_argument("--embedding-l2", type=float, default=0.0,
                        help="add a row with the embedding's weights penalised (bc.embedding_l2)")
    args = parser.parse_args(argv)
    if args.folds < 2 or args.epochs < 1 or args.embedding_l2 < 0:
        print("error: --folds must be >= 2, --epochs >= 1 and --embedding-l2 >= 0",
              file=sys.stderr)
        return 2
    try:
        data = load_dataset(args.dataset)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    settings = FitSettings(folds=args.folds, epochs=args.epochs, embedding_l2=args.embedding_l2)
    rows = run_study(data, settings, progress=lambda n: print(f"fitting: {n}", file=sys.stderr))
    print("fitting: the expert's reasons from the policy inputs", file=sys.stderr)
    r2 = reason_r2(data, settings)
    print(to_markdown(rows, data, r2), end="")
    if args.json:
        return write_json_or_report(args.json, {"rows": [asdict(r) for r in rows],
                                                "reason_r2": r2})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
