"""Does an encoder pretrained on one renderer's frames work on the other's? Linear probes
across renderers.

    bulletdrive collect --out data/probe_tiny --episodes 8
    bulletdrive collect --out data/probe_egl --episodes 8 --set 'overrides=[camera.renderer=egl]'
    python scripts/renderer_probe.py --encoder runs/e1/encoder \
        --tiny data/probe_tiny --egl data/probe_egl

The two datasets hold the same episodes (same seeds, same noisy expert, so the same
trajectories) drawn by the two renderers. For each regression label the script prints
the validation R^2 of a ridge probe on the encoder's embeddings (``perception.probes``,
alpha chosen by cross-validation on the training split, folds by episode):

- ``tiny -> tiny`` and ``egl -> egl``: probe fitted and scored on one renderer;
- ``tiny -> egl``: probe fitted on tiny frames, scored on the EGL frames of the same
  validation episodes: the encoder and the probe never saw an EGL frame;
- ``cosine``: mean cosine similarity of the embeddings of the same frame drawn by the
  two renderers (validation split).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from perception.checkpoint import load_encoder
from perception.probes import embed_split, probe_regression

#: Labels probed (regression labels every dataset has).
LABELS = ("lane_offset_m", "heading_error_rad", "lead_distance_m", "speed_mps")


def renderer_probes(encoder_dir: str | Path, tiny: str | Path, egl: str | Path,
                    max_frames: int | None = None) -> dict[str, dict[str, float]]:
    """Probe R^2 within and across renderers, and the embeddings' cosine similarity.

    Args:
        encoder_dir: Encoder checkpoint directory.
        tiny / egl: Datasets of the same episodes drawn by each renderer.
        max_frames: Frames per split at most (None: all).

    Returns:
        ``{label: {"tiny->tiny": r2, "egl->egl": r2, "tiny->egl": r2}}`` plus
        ``{"embedding": {"cosine": mean}}``.

    Raises:
        ValueError: The two datasets do not hold the same number of validation frames.
    """
    encoder = load_encoder(encoder_dir)
    keys = list(LABELS)  # embed_split adds the episode ids, used as probe folds
    x = {}
    y = {}
    for name, root in (("tiny", tiny), ("egl", egl)):
        for split in ("train", "val"):
            x[name, split], y[name, split] = embed_split(encoder, root, split,
                                                         max_frames=max_frames,
                                                         label_keys=keys)
    if x["tiny", "val"].shape != x["egl", "val"].shape:
        raise ValueError(f"the datasets differ: {len(x['tiny', 'val'])} tiny and "
                         f"{len(x['egl', 'val'])} EGL validation frames; collect the same "
                         "episodes with both renderers")
    out: dict[str, dict[str, float]] = {}
    for label in LABELS:
        row = {}
        for fit, score in (("tiny", "tiny"), ("egl", "egl"), ("tiny", "egl")):
            result = probe_regression(x[fit, "train"], y[fit, "train"][label],
                                      x[score, "val"], y[score, "val"][label],
                                      groups=y[fit, "train"]["episode"], label=label)
            row[f"{fit}->{score}"] = round(float(result.value), 4)
        out[label] = row
    a, b = x["tiny", "val"], x["egl", "val"]
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)
    out["embedding"] = {"cosine": round(float(cos.mean()), 4)}
    return out


def main() -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--encoder", required=True, help="encoder checkpoint folder")
    parser.add_argument("--tiny", required=True, help="dataset drawn by TinyRenderer")
    parser.add_argument("--egl", required=True, help="the same episodes drawn by EGL")
    parser.add_argument("--max-frames", type=int, default=None, help="frames per split at most")
    args = parser.parse_args()
    result = renderer_probes(args.encoder, args.tiny, args.egl, args.max_frames)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
