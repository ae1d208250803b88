"""Load a trained agent directory as a policy (``--agent runs/x/final``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from numpy.typing import NDArray
from safetensors import SafetensorError
from safetensors.torch import load_file
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from stable_baselines3.sac.policies import MultiInputPolicy as MultiInputSACPolicy

from agents.config import HistoryConfig
from agents.embedding_history import EpisodeHistory
from agents.extractors import extractor_kwargs, policy_input
from agents.saving import (
    AGENT_FILE,
    AGENT_FORMAT,
    AGENT_FORMAT_VERSION,
    WEIGHTS_FILE,
    file_sha256,
    normalize_obs,
    space_from_json,
)
from envs.driving_env import DrivingEnv
from perception.checkpoint import load_encoder
from planning.lane_gaps import LaneGapSensor, decision_period_s


class AgentLoadError(ValueError):
    """An agent directory is missing, corrupt or does not match its encoder."""


def read_agent_meta(path: str | Path) -> dict[str, Any]:
    """Read and check ``agent.json`` of an agent directory."""
    directory = Path(path)
    meta_path = directory / AGENT_FILE
    if not directory.is_dir() or not meta_path.is_file():
        raise AgentLoadError(f"no agent at {directory} (expected {AGENT_FILE} and "
                             f"{WEIGHTS_FILE}; train one with `bulletdrive train`)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AgentLoadError(f"corrupt {meta_path}: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != AGENT_FORMAT:
        raise AgentLoadError(f"{meta_path} is not a bulletdrive agent description")
    if int(meta.get("format_version", 0)) > AGENT_FORMAT_VERSION:
        raise AgentLoadError(f"{meta_path} has format version {meta['format_version']}; this "
                             f"package reads up to {AGENT_FORMAT_VERSION}")
    return meta


class TrainedPolicy:
    """A trained SB3 policy (PPO, SAC or behaviour cloning) acting on single env
    observations, with the observation path and normalisation it was trained with.

    Args:
        path: Agent directory (``<run>/final`` or ``<run>/checkpoint``'s sibling).
        device: Torch device for the policy and the encoder.
    """

    def __init__(self, path: str | Path, device: str = "cpu") -> None:
        directory = Path(path)
        meta = read_agent_meta(directory)
        self.meta = meta
        self.name = str(directory)
        self.obs_path: str = meta["obs"]
        cfg = meta["config"]
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise AgentLoadError(f"no agent weights at {weights}")
        if meta.get("weights_sha256") and file_sha256(weights) != meta["weights_sha256"]:
            raise AgentLoadError(f"{weights} does not match the hash in {AGENT_FILE} "
                                 "(corrupt or replaced file)")
        encoder_ref = meta.get("encoder")
        self.encoder = None
        if encoder_ref:
            enc_dir = Path(encoder_ref["path"])
            enc_weights = enc_dir / "encoder.safetensors"
            if encoder_ref.get("sha256") and (not enc_weights.is_file() or file_sha256(
                    enc_weights) != encoder_ref["sha256"]):
                raise AgentLoadError(f"the encoder checkpoint {enc_dir} does not match the one "
                                     "this agent was trained with (missing or different "
                                     "weights)")
            if self.obs_path == "frozen":
                self.encoder = load_encoder(enc_dir, device=device)
        obs_space = space_from_json(meta["observation_space"])
        act_space = space_from_json(meta["action_space"])
        assert isinstance(obs_space, gym.spaces.Dict)
        self.action_space = act_space
        extractor = extractor_kwargs(self.obs_path, cfg.get("encoder"), int(cfg.get("seed", 0)))
        if meta["algo"] == "sac":
            assert isinstance(act_space, gym.spaces.Box)
            self.policy: Any = MultiInputSACPolicy(
                obs_space, act_space, lambda _: 0.0,
                net_arch=list(cfg["sac"]["net_arch"]), **extractor)
        else:
            self.policy = MultiInputActorCriticPolicy(
                obs_space, act_space, lambda _: 0.0,
                net_arch=list(cfg["ppo"]["net_arch"]), **extractor)
        try:
            state = load_file(str(weights), device=device)
        except (SafetensorError, OSError) as exc:
            raise AgentLoadError(f"corrupt agent weights {weights}: {exc}") from None
        try:
            self.policy.load_state_dict(state)
        except RuntimeError as exc:
            raise AgentLoadError(f"agent weights {weights} do not fit the described "
                                 f"policy: {str(exc).splitlines()[0]}") from None
        self.policy.to(device)
        self.policy.set_training_mode(False)
        self.normalization = meta.get("normalization")
        # Agents saved before the history option have none (one embedding).
        self.history_cfg = HistoryConfig(**cfg.get("history", {}))
        self.history: EpisodeHistory | None = None
        if self.history_cfg.frames > 1 and self.encoder is not None:
            self.history = EpisodeHistory(self.encoder.embed_dim, self.history_cfg)
        self.lane_gaps: LaneGapSensor | None = None  # made on the first act() that needs it

    def reset(self, seed: int | None = None) -> None:
        """Start an episode: trained policies act deterministically, and an agent with
        an embedding history (or lane gaps' closing speed) forgets the last episode's."""
        if self.history is not None:
            self.history.start_episode()
        if self.lane_gaps is not None:
            self.lane_gaps.reset()

    def _with_lane_gaps(self, obs: dict[str, np.ndarray], env: gym.Env[Any, Any] | None
                        ) -> dict[str, np.ndarray]:
        """An agent trained with ``lane_gaps`` measures them itself when the env it drives
        does not add them (evaluation): from the lidar, its pose and the map."""
        if "lane_gaps" not in self.policy.observation_space.spaces or "lane_gaps" in obs:
            return obs
        if env is None or not isinstance(env.unwrapped, DrivingEnv):
            raise AgentLoadError(f"{self.name} measures lane gaps from the env it drives; "
                                 "pass the env to act()")
        if "lidar" not in obs:
            raise AgentLoadError(f"{self.name} measures lane gaps with the lidar; drive it "
                                 "in an env with sensors.lidar=true (its env overrides)")
        if self.lane_gaps is None:
            # Agents saved before these options have no key for them: off.
            cfg = self.meta["config"]
            presence = bool(cfg.get("lane_presence", False))
            rear_closing = bool(cfg.get("lane_rear_closing", False))
            width = LaneGapSensor.width(presence, rear_closing)
            space = self.policy.observation_space.spaces["lane_gaps"]
            if space.shape != (width,):
                raise AgentLoadError(f"{self.name} reads {space.shape[0]} lane-gap features "
                                     f"but its config (lane_presence={presence}, "
                                     f"lane_rear_closing={rear_closing}) gives {width}")
            self.lane_gaps = LaneGapSensor(decision_period_s(env), presence, rear_closing)
        return {**obs, "lane_gaps": self.lane_gaps(env.unwrapped, obs["lidar"])}

    def observation(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Turn one env observation into the policy's (batched, normalised) input; with
        an embedding history, call once per decision (and :meth:`reset` per episode)."""
        single = policy_input(obs, self.policy.observation_space.spaces, self.encoder)
        if self.history is not None:
            single["embedding"] = self.history(single["embedding"])
        batch = {key: value[None] for key, value in single.items()}
        if self.normalization:
            batch = normalize_obs(batch, self.normalization)
        return batch

    def act(self, obs: dict[str, np.ndarray], env: gym.Env[Any, Any] | None = None) -> Any:
        """The deterministic action for one observation."""
        return self.decide(obs, env)[0]

    def decide(self, obs: dict[str, np.ndarray], env: gym.Env[Any, Any] | None = None
               ) -> tuple[Any, NDArray[np.float32] | None]:
        """:meth:`act`'s action and, for a discrete action space, the policy's
        probability of each action (its argmax is the action); ``None`` otherwise.
        One call is one decision (lane gaps and the history advance once)."""
        obs = self._with_lane_gaps(obs, env)
        batch = self.observation(obs)
        if isinstance(self.action_space, gym.spaces.Discrete):
            with torch.no_grad():
                tensor, _ = self.policy.obs_to_tensor(batch)
                dist = self.policy.get_distribution(tensor).distribution
                probs = dist.probs[0].float().cpu().numpy()
            return int(probs.argmax()), probs
        action, _ = self.policy.predict(batch, deterministic=True)
        return np.asarray(action)[0].astype(np.float32), None


def load_agent(path: str | Path, device: str = "cpu") -> TrainedPolicy:
    """Load an agent directory written by ``bulletdrive train``.

    Raises:
        AgentLoadError: Missing, corrupt, or not matching its encoder checkpoint.
    """
    return TrainedPolicy(path, device)
