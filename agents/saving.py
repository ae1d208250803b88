"""Trained agents on disk: weights only (safetensors) plus a JSON description.

An agent directory holds ``policy.safetensors`` (the SB3 policy's ``state_dict``) and
``agent.json``: format version, algorithm, observation path, the run's config, the
policy's observation and action spaces, the observation-normalisation statistics and a
reference to the encoder checkpoint (path and SHA-256 of its weights). Nothing is
pickled, so loading an agent cannot run code.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from safetensors.torch import save_file
from stable_baselines3.common.vec_env import VecNormalize

from agents.expert_labels import EXPERT_KEY
from common.config import to_dict
from common.io import atomic_path, atomic_write_text

AGENT_FILE = "agent.json"
WEIGHTS_FILE = "policy.safetensors"
AGENT_FORMAT = "bulletdrive.agent"
AGENT_FORMAT_VERSION = 1


def space_to_json(space: spaces.Space[Any]) -> dict[str, Any]:
    """A Box / Discrete / Dict space as JSON."""
    if isinstance(space, spaces.Dict):
        return {"type": "Dict", "spaces": {k: space_to_json(v) for k, v in space.spaces.items()}}
    if isinstance(space, spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start)}
    if isinstance(space, spaces.Box):
        return {"type": "Box", "shape": list(space.shape), "dtype": str(space.dtype),
                "low": np.asarray(space.low, np.float64).reshape(-1).tolist(),
                "high": np.asarray(space.high, np.float64).reshape(-1).tolist()}
    raise TypeError(f"unsupported space {space}")


def space_from_json(data: dict[str, Any]) -> spaces.Space[Any]:
    """Inverse of :func:`space_to_json`."""
    kind = data["type"]
    if kind == "Dict":
        return spaces.Dict({k: space_from_json(v) for k, v in data["spaces"].items()})
    if kind == "Discrete":
        return spaces.Discrete(data["n"], start=data.get("start", 0))
    if kind == "Box":
        shape = tuple(data["shape"])
        dtype = np.dtype(data["dtype"])
        low = np.asarray(data["low"], np.float64).reshape(shape).astype(dtype)
        high = np.asarray(data["high"], np.float64).reshape(shape).astype(dtype)
        return spaces.Box(low, high, shape, dtype)
    raise ValueError(f"unknown space type {kind!r}")


def vecnormalize_to_json(venv: VecNormalize) -> dict[str, Any]:
    """Normalisation statistics (running mean/var/count per key, return stats)."""
    obs_rms = venv.obs_rms
    per_key = obs_rms if isinstance(obs_rms, dict) else {"": obs_rms}
    return {
        "obs": {k: {"mean": np.asarray(r.mean).tolist(), "var": np.asarray(r.var).tolist(),
                    "count": float(r.count)} for k, r in per_key.items()},
        "ret": {"mean": np.asarray(venv.ret_rms.mean).tolist(),
                "var": np.asarray(venv.ret_rms.var).tolist(), "count": float(venv.ret_rms.count)},
        "returns": np.asarray(venv.returns).tolist(),
        "clip_obs": float(venv.clip_obs), "clip_reward": float(venv.clip_reward),
        "epsilon": float(venv.epsilon), "keys": list(per_key),
    }


def vecnormalize_from_json(venv: VecNormalize, data: dict[str, Any]) -> None:
    """Load :func:`vecnormalize_to_json` statistics into ``venv``."""
    obs_rms = venv.obs_rms
    per_key = obs_rms if isinstance(obs_rms, dict) else {"": obs_rms}
    for key, stats in data["obs"].items():
        per_key[key].mean = np.asarray(stats["mean"], np.float64)
        per_key[key].var = np.asarray(stats["var"], np.float64)
        per_key[key].count = stats["count"]
    venv.ret_rms.mean = np.asarray(data["ret"]["mean"], np.float64)
    venv.ret_rms.var = np.asarray(data["ret"]["var"], np.float64)
    venv.ret_rms.count = data["ret"]["count"]
    venv.returns = np.asarray(data["returns"], np.float64)


def normalize_obs(obs: dict[str, np.ndarray], stats: dict[str, Any]) -> dict[str, np.ndarray]:
    """Apply saved observation statistics to one (batched) observation dict."""
    out = dict(obs)
    eps, clip = stats["epsilon"], stats["clip_obs"]
    for key, s in stats["obs"].items():
        mean, var = np.asarray(s["mean"]), np.asarray(s["var"])
        out[key] = np.clip((obs[key] - mean) / np.sqrt(var + eps), -clip, clip).astype(
            np.float32)
    return out


def _for_keys(stats: dict[str, Any] | None, space: spaces.Space[Any]) -> dict[str, Any] | None:
    """Observation statistics restricted to the keys of ``space`` (a saved actor without
    the privileged input must not be asked to normalise it)."""
    if not stats or not isinstance(space, spaces.Dict):
        return stats
    return {**stats, "obs": {k: v for k, v in stats["obs"].items() if k in space.spaces}}


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def encoder_reference(path: str | None) -> dict[str, Any] | None:
    """Path and weights hash of an encoder checkpoint (``None``: no encoder)."""
    if not path:
        return None
    weights = Path(path) / "encoder.safetensors"
    return {"path": str(Path(path).resolve()),
            "sha256": file_sha256(weights) if weights.is_file() else None}


def save_agent(directory: str | Path, model: Any, cfg: Any, venv: VecNormalize | None,
               algo: str | None = None, normalization: dict[str, Any] | None = None,
               extra: dict[str, Any] | None = None) -> Path:
    """Write an agent directory (atomically, file by file) and return it.

    Args:
        directory: Agent directory.
        model: An SB3 algorithm or a bare SB3 policy.
        cfg: The run's :class:`agents.config.TrainConfig`.
        venv: The training :class:`VecNormalize` (its statistics are saved), or ``None``.
        algo: Algorithm name (default ``cfg.algo``).
        normalization: Statistics to save when there is no ``venv`` (behaviour cloning).
        extra: More JSON-able facts for ``agent.json``.
    """
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    policy = model.policy if hasattr(model, "policy") else model
    # A policy with a training-only privileged critic saves its deployable actor.
    actor_only = hasattr(policy, "actor_state_dict")
    state = policy.actor_state_dict() if actor_only else policy.state_dict()
    obs_space = policy.actor_observation_space if actor_only else policy.observation_space
    if isinstance(obs_space, spaces.Dict):  # guided PPO's labels are training-only
        obs_space = spaces.Dict({k: v for k, v in obs_space.spaces.items() if k != EXPERT_KEY})
    tensors = {k: v.detach().cpu().clone() for k, v in state.items()}
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        save_file(tensors, str(tmp))
    meta = {
        "format": AGENT_FORMAT, "format_version": AGENT_FORMAT_VERSION,
        "algo": algo or cfg.algo, "obs": cfg.obs, "action_mode": cfg.action_mode,
        "env_id": cfg.env_id, "config": to_dict(cfg),
        "observation_space": space_to_json(obs_space),
        "action_space": space_to_json(policy.action_space),
        "normalization": _for_keys(vecnormalize_to_json(venv) if venv is not None
                                   else normalization, obs_space),
        "encoder": encoder_reference(cfg.encoder),
        "num_timesteps": int(getattr(model, "num_timesteps", 0)),
        "weights_sha256": file_sha256(out / WEIGHTS_FILE),
        "torch": torch.__version__,
        **(extra or {}),
    }
    atomic_write_text(out / AGENT_FILE, json.dumps(meta, indent=1))
    return out
