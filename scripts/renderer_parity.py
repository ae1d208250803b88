"""How close EGL camera frames are to TinyRenderer frames of the same episode.

    python scripts/renderer_parity.py --envs Highway-v0 Urban-v0 --seeds 0 1 2 --steps 50

For each env and seed it runs two envs in lockstep, one per renderer, driven by the
built-in expert (which acts on the privileged state, so both envs get the same actions
and follow the same trajectory), and prints one JSON line per env with the mean
absolute difference of the camera frames in 0..255 units: over all pixels (``mad``), the
lower image half that road and markings fill (``mad_lower``), and each seed's value.
With ``--save DIR`` it also writes side-by-side pictures (tiny left, EGL right).

With ``--semantic`` it compares the ``semantic`` observation instead: each line gives how
often the two renderers give a pixel the same class, ``semantic_agreement`` (all
pixels), ``semantic_agreement_lower`` (lower half, where the ego's own body would show),
the worst frame, each seed's value and the most frequent class confusions (``tiny->egl``:
pixels per frame).

    python scripts/renderer_parity.py --semantic --seeds 0 1 2 --steps 30

The EGL plugin must load (``camera.renderer=egl``); on a machine without a GPU, Mesa's
software EGL is enough.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from numpy.typing import NDArray

from envs.sim.scene import SemanticClass
from planning.make import make_env
from planning.policies import make_policy


def observation_pairs(env_id: str, seed: int, steps: int, overrides: list[str] | None = None,
                      keys: tuple[str, ...] = ("camera",),
                      ) -> list[tuple[dict[str, NDArray[Any]], dict[str, NDArray[Any]]]]:
    """Observations (tiny, egl) after reset and each of ``steps`` expert steps.

    Args:
        env_id: ``Highway-v0`` or ``Urban-v0``.
        seed: Episode seed (both envs).
        steps: Steps to drive; fewer when the episode ends earlier.
        overrides: Extra config overrides for both envs (e.g. ``sensors.semantic=true``
            for a ``semantic`` key).
        keys: Observation entries to keep.

    Raises:
        ValueError: The EGL plugin does not load.
    """
    extra = list(overrides or [])
    tiny = make_env(env_id, action_mode="control", overrides=[*extra, "camera.renderer=tiny"])
    egl = make_env(env_id, action_mode="control", overrides=[*extra, "camera.renderer=egl"])

    def pick(obs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        return {k: obs[k] for k in keys}

    try:
        policy = make_policy("expert", seed=seed)
        policy.reset(seed)
        obs_t, _ = tiny.reset(seed=seed)
        obs_e, _ = egl.reset(seed=seed)
        pairs = [(pick(obs_t), pick(obs_e))]
        for _ in range(steps):
            # The expert acts on the privileged state, which both renderers share.
            action = policy.act(obs_t, tiny)
            obs_t, _, term_t, trunc_t, _ = tiny.step(action)
            obs_e, _, _, _, _ = egl.step(action)
            pairs.append((pick(obs_t), pick(obs_e)))
            if term_t or trunc_t:
                break
        return pairs
    finally:
        tiny.close()
        egl.close()


def frame_pairs(env_id: str, seed: int, steps: int, overrides: list[str] | None = None,
                ) -> list[tuple[NDArray[np.uint8], NDArray[np.uint8]]]:
    """Camera frames (tiny, egl) after reset and each of ``steps`` expert steps.

    Args:
        env_id: ``Highway-v0`` or ``Urban-v0``.
        seed: Episode seed (both envs).
        steps: Steps to drive; fewer when the episode ends earlier.
        overrides: Extra config overrides for both envs.

    Raises:
        ValueError: The EGL plugin does not load.
    """
    return [(t["camera"], e["camera"])
            for t, e in observation_pairs(env_id, seed, steps, overrides)]


def mean_abs_diff(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Mean absolute difference of two uint8 images, in 0..255 units."""
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def measure(env_id: str, seeds: list[int], steps: int, save: Path | None = None,
            overrides: list[str] | None = None) -> dict[str, Any]:
    """Figures for one env over ``seeds`` (see the module docstring)."""
    per_seed: dict[str, float] = {}
    whole: list[float] = []
    lower: list[float] = []
    for seed in seeds:
        pairs = frame_pairs(env_id, seed, steps, overrides)
        diffs = [mean_abs_diff(t, e) for t, e in pairs]
        h = pairs[0][0].shape[0]
        lower += [mean_abs_diff(t[h // 2 :], e[h // 2 :]) for t, e in pairs]
        whole += diffs
        per_seed[str(seed)] = round(float(np.mean(diffs)), 2)
        if save is not None:
            save.mkdir(parents=True, exist_ok=True)
            strip = np.concatenate([np.concatenate([t, e], axis=1) for t, e in pairs[::10]],
                                   axis=0)
            big = cv2.resize(strip, (strip.shape[1] * 3, strip.shape[0] * 3),
                             interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(str(save / f"{env_id}_seed{seed}.png"), big[:, :, ::-1])
    return {"env": env_id, "seeds": seeds, "frames": len(whole),
            "mad": round(float(np.mean(whole)), 2), "mad_lower": round(float(np.mean(lower)), 2),
            "mad_max_frame": round(float(np.max(whole)), 2), "per_seed": per_seed}


def semantic_agreement(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Fraction of pixels to which two semantic images give the same class."""
    return float(np.mean(a == b))


def measure_semantic(env_id: str, seeds: list[int], steps: int,
                     overrides: list[str] | None = None, top: int = 5) -> dict[str, Any]:
    """Semantic agreement of tiny and EGL for one env over ``seeds`` (see the docstring).

    Args:
        env_id: ``Highway-v0`` or ``Urban-v0``.
        seeds: Episode seeds.
        steps: Expert steps per seed.
        overrides: Extra config overrides for both envs.
        top: How many of the largest class confusions to report.
    """
    extra = [*(overrides or []), "sensors.semantic=true"]
    per_seed: dict[str, float] = {}
    whole: list[float] = []
    lower: list[float] = []
    confusion = np.zeros((256, 256), np.int64)
    for seed in seeds:
        pairs = [(t["semantic"], e["semantic"])
                 for t, e in observation_pairs(env_id, seed, steps, extra, ("semantic",))]
        values = [semantic_agreement(t, e) for t, e in pairs]
        h = pairs[0][0].shape[0]
        lower += [semantic_agreement(t[h // 2 :], e[h // 2 :]) for t, e in pairs]
        whole += values
        per_seed[str(seed)] = round(float(np.mean(values)), 5)
        for t, e in pairs:
            np.add.at(confusion, (t.ravel(), e.ravel()), 1)
    np.fill_diagonal(confusion, 0)
    names = {int(c): c.name.lower() for c in SemanticClass}
    flat = np.argsort(confusion, axis=None)[::-1][:top]
    mixups = {f"{names.get(int(i), i)}->{names.get(int(j), j)}":
              round(float(confusion[i, j]) / len(whole), 2)
              for i, j in zip(*np.unravel_index(flat, confusion.shape), strict=True)
              if confusion[i, j] > 0}
    return {"env": env_id, "seeds": seeds, "frames": len(whole),
            "semantic_agreement": round(float(np.mean(whole)), 5),
            "semantic_agreement_lower": round(float(np.mean(lower)), 5),
            "semantic_agreement_min_frame": round(float(np.min(whole)), 5),
            "per_seed": per_seed, "confusions": mixups}


def main(argv: list[str] | None = None) -> None:
    """Parse arguments and print one JSON line per env."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", nargs="+", default=["Highway-v0", "Urban-v0"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=50, help="expert steps per seed")
    parser.add_argument("--save", type=Path, default=None,
                        help="folder for side-by-side pictures (tiny left, EGL right)")
    parser.add_argument("--semantic", action="store_true",
                        help="compare the semantic observation (class agreement) instead")
    parser.add_argument("--override", action="append", default=[],
                        help="extra config override for both envs, e.g. traffic.num_vehicles=0")
    args = parser.parse_args(argv)
    for env_id in args.envs:
        if args.semantic:
            result = measure_semantic(env_id, args.seeds, args.steps, args.override)
        else:
            result = measure(env_id, args.seeds, args.steps, args.save, args.override)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
