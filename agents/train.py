"""``bulletdrive train``: stable-baselines3 PPO / SAC on the driving envs, read top to bottom.

1. Resolve the config and write it beside the run (``<out>/config.yaml``).
2. Build N envs (worker processes with shared-memory frames when N > 1), the
   observation path (frozen encoder embeddings computed once per step for the batch,
   optionally with the last few stacked (``history``), or the camera for ``finetune`` /
   ``scratch``, or the privileged state) and
   observation normalisation (:class:`VecNormalize`).
   With ``ppo.expert_coef`` the envs also put the expert's action in each observation
   (:mod:`agents.expert_labels`) and the model is :class:`agents.guided_ppo.GuidedPPO`.
3. Build the model, or restore it from ``<out>/checkpoint`` (weights, optimizer,
   normalisation statistics, RNG states, a guided run's expert memory and every env's
   exact state, rebuilt by re-simulating its episode's seed and actions), and learn with
   a progress bar, TensorBoard logs (reward, episode length, route completion,
   collision rate, fps) and periodic checkpoints.
4. Save the final agent in ``<out>/final`` (weights only: safetensors + JSON), which
   ``--agent <out>/final`` loads wherever a policy name is accepted.
"""

from __future__ import annotations

import json
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium import spaces
from safetensors.torch import load_file, save_file
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import (
    DummyVecEnv,
    VecEnv,
    VecEnvWrapper,
    VecNormalize,
    unwrap_vec_normalize,
)

from agents.config import TrainConfig
from agents.embedding_history import EmbeddingHistoryVecEnv
from agents.embedding_penalty import add_embedding_l2_gradient, zero_embedding_weights
from agents.env_factory import VECTOR_KEYS, env_fns
from agents.expert_labels import EXPERT_KEY
from agents.extractors import extractor_kwargs
from agents.guided_ppo import GuidedPPO
from agents.privileged_critic import PRIVILEGED_KEY, PrivilegedCriticPolicy
from agents.saving import (
    AGENT_FILE,
    WEIGHTS_FILE,
    encoder_reference,
    save_agent,
    vecnormalize_from_json,
    vecnormalize_to_json,
)
from common.config import to_dict
from common.io import atomic_path, atomic_write_text

#: Config keys a resumed run may change (budgets; they do not change what is learned).
RESUME_FREE_KEYS = ("total_timesteps", "max_minutes", "checkpoint_every_steps")
CHECKPOINT_DIR = "checkpoint"
FINAL_DIR = "final"
STATE_FILE = "train_state.json"
TENSORS_FILE = "train_state.safetensors"


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available; ``cuda`` without CUDA is an error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available; use auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def build_vec_env(cfg: TrainConfig, device: torch.device) -> VecNormalize:
    """The vectorised env of a run, with its observation path and normalisation."""
    from agents.shm_vec_env import SharedMemoryVecEnv

    fns = env_fns(cfg)
    # The frozen path embeds frames before the next step, so zero-copy views are safe.
    venv: VecEnv = (SharedMemoryVecEnv(fns, copy_obs=cfg.obs != "frozen")
                    if cfg.num_envs > 1 else DummyVecEnv(fns))
    if cfg.obs == "frozen":
        from agents.embedding_vec_env import EmbeddingVecEnv

        assert cfg.encoder is not None
        venv = EmbeddingVecEnv(venv, Path(cfg.encoder), device=device,
                              compile_encoder=cfg.compile_encoder)
        if cfg.history.frames > 1:
            venv = EmbeddingHistoryVecEnv(venv, cfg.history)
    assert isinstance(venv.observation_space, spaces.Dict)
    keys = [k for k in ("embedding", *VECTOR_KEYS) if k in venv.observation_space.spaces]
    normalized = VecNormalize(venv, norm_obs=True, norm_reward=True, norm_obs_keys=keys,
                              gamma=cfg.ppo.gamma if cfg.algo == "ppo" else cfg.sac.gamma)
    if cfg.init_from:
        # The starting policy was fitted to the observation statistics it comes with
        # (initialise_from loads them); letting them drift with the new rollouts would
        # change its inputs under it. Reward statistics still adapt.
        # With a privileged critic the state vector only feeds that critic, which starts
        # from scratch: its statistics keep learning.
        critic_only = PRIVILEGED_KEY if cfg.algo == "ppo" and cfg.ppo.privileged_critic else None
        obs_rms = normalized.obs_rms
        assert isinstance(obs_rms, dict)
        for key in list(obs_rms):
            if key != critic_only:
                obs_rms[key] = FrozenRunningMeanStd(shape=obs_rms[key].mean.shape)
    return normalized


class FrozenRunningMeanStd(RunningMeanStd):
    """Running statistics that ignore updates (mean, var and count are set directly)."""

    def update(self, arr: np.ndarray) -> None:
        """Do nothing: the statistics stay as loaded."""


def annealed_learning_rate(model: BaseAlgorithm, learning_rate: float, total_timesteps: int
                           ) -> Callable[[float], float]:
    """``ppo.anneal_lr``'s schedule: ``learning_rate * (1 - decisions / total_timesteps)``.

    SB3's own progress restarts with each ``learn`` call (the value warm-up is one), so
    the schedule reads the model's decision count against the whole run instead; a
    resumed run continues on the same line.
    """

    def schedule(_progress_remaining: float) -> float:
        return learning_rate * max(1.0 - model.num_timesteps / total_timesteps, 0.0)

    return schedule


def build_model(cfg: TrainConfig, venv: VecEnv, device: torch.device, tb_dir: Path
                ) -> BaseAlgorithm:
    """A fresh PPO or SAC model for the run."""
    if cfg.algo == "ppo":
        p = cfg.ppo
        hidden = (EXPERT_KEY,) if cfg.expert_guided else ()
        policy: Any = "MultiInputPolicy"
        kwargs: dict[str, Any] = {"net_arch": list(p.net_arch),
                                  **extractor_kwargs(cfg.obs, cfg.encoder, cfg.seed, hidden)}
        if p.privileged_critic:  # its own extractor; the critic as wide as the actor
            policy = PrivilegedCriticPolicy
            kwargs = {"net_arch": list(p.net_arch), "critic_arch": list(p.net_arch),
                      "hidden_keys": hidden}
        algorithm: Any = PPO
        extra: dict[str, Any] = {}
        if cfg.expert_guided:
            algorithm = GuidedPPO
            extra = {"expert_coef": p.expert_coef, "expert_epochs": p.expert_epochs,
                     "expert_action_weights": p.expert_action_weights,
                     "expert_memory": p.expert_memory}
        model = algorithm(policy, venv, n_steps=p.n_steps, batch_size=p.batch_size,
                          n_epochs=p.n_epochs, learning_rate=p.learning_rate, gamma=p.gamma,
                          gae_lambda=p.gae_lambda, clip_range=p.clip_range,
                          ent_coef=p.ent_coef, vf_coef=p.vf_coef,
                          max_grad_norm=p.max_grad_norm, target_kl=p.target_kl,
                          policy_kwargs=kwargs, tensorboard_log=str(tb_dir), seed=cfg.seed,
                          device=device, verbose=0, **extra)
        if p.anneal_lr:
            model.lr_schedule = annealed_learning_rate(model, p.learning_rate,
                                                       cfg.total_timesteps)
        return model
    s = cfg.sac
    extractor = extractor_kwargs(cfg.obs, cfg.encoder, cfg.seed)
    return SAC("MultiInputPolicy", venv, buffer_size=s.buffer_size,
               learning_starts=s.learning_starts, batch_size=s.batch_size,
               learning_rate=s.learning_rate, tau=s.tau, gamma=s.gamma,
               train_freq=s.train_freq, gradient_steps=s.gradient_steps,
               policy_kwargs={"net_arch": list(s.net_arch), **extractor},
               tensorboard_log=str(tb_dir), seed=cfg.seed, device=device, verbose=0)


class DrivingMetricsCallback(BaseCallback):
    """Logs route completion and collision rate of finished episodes to TensorBoard
    (``rollout/route_completion``, ``rollout/collision_rate``) and the fps."""

    def __init__(self, window: int = 50) -> None:
        super().__init__()
        self.completion: deque[float] = deque(maxlen=window)
        self.collided: deque[float] = deque(maxlen=window)
        self._hit: np.ndarray | None = None
        self._t0 = time.perf_counter()
        self._steps0 = 0

    def _on_training_start(self) -> None:
        self._hit = np.zeros(self.training_env.num_envs, bool)
        self._t0, self._steps0 = time.perf_counter(), self.num_timesteps

    def _on_step(self) -> bool:
        assert self._hit is not None
        for i, (info, done) in enumerate(zip(self.locals["infos"], self.locals["dones"],
                                             strict=True)):
            if any(e.get("type") == "collision" for e in info.get("events", ())):
                self._hit[i] = True
            if done:
                self.completion.append(float(info.get("route_completion", 0.0)))
                self.collided.append(float(self._hit[i]))
                self._hit[i] = False
        return True

    def _on_rollout_end(self) -> None:
        if self.completion:
            self.logger.record("rollout/route_completion", float(np.mean(self.completion)))
            self.logger.record("rollout/collision_rate", float(np.mean(self.collided)))
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self.logger.record("time/decisions_per_s", (self.num_timesteps - self._steps0) / elapsed)


class TimeBudgetCallback(BaseCallback):
    """Stops learning at the first step after ``minutes`` of wall-clock time."""

    def __init__(self, minutes: float | None) -> None:
        super().__init__()
        self.deadline = None if minutes is None else time.perf_counter() + 60.0 * minutes

    def expired(self) -> bool:
        """Whether the budget is spent."""
        return self.deadline is not None and time.perf_counter() >= self.deadline

    def _on_step(self) -> bool:
        return not self.expired()


class ResumeCheckpointCallback(BaseCallback):
    """Writes the resumable training state every ``every`` decisions, at the start of a
    rollout (the buffer is empty and the weights just updated, so nothing else needs
    saving)."""

    def __init__(self, cfg: TrainConfig, out_dir: Path, every: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.out_dir = out_dir
        self.every = every
        self.last_saved = 0

    def _on_training_start(self) -> None:
        self.last_saved = self.num_timesteps

    def _on_rollout_start(self) -> None:
        if self.num_timesteps - self.last_saved >= self.every:
            save_training_state(self.out_dir / CHECKPOINT_DIR, self.model, self.cfg)
            self.last_saved = self.num_timesteps

    def _on_step(self) -> bool:
        return True


def _history(venv: VecEnv) -> EmbeddingHistoryVecEnv | None:
    """The run's embedding-history wrapper, if it has one, under ``venv``."""
    while isinstance(venv, VecEnvWrapper):
        if isinstance(venv, EmbeddingHistoryVecEnv):
            return venv
        venv = venv.venv
    return None


def _optimizers(model: BaseAlgorithm) -> dict[str, torch.optim.Optimizer]:
    if isinstance(model, SAC):
        opts = {"actor": model.actor.optimizer, "critic": model.critic.optimizer}
        if model.ent_coef_optimizer is not None:
            opts["ent_coef"] = model.ent_coef_optimizer
        return opts
    return {"policy": model.policy.optimizer}


def save_training_state(directory: Path, model: BaseAlgorithm, cfg: TrainConfig) -> None:
    """Everything a resumed run needs, as safetensors + JSON (nothing pickled).

    Tensors: policy weights, optimizer tensors, the last observation batch, the torch
    RNG state, with ``history.frames > 1`` every env's past embeddings and with
    ``ppo.expert_memory`` the remembered states. JSON: counters, optimizer scalars,
    numpy RNG state, normalisation statistics and each env's episode seed and actions so
    far.
    """
    directory.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {f"policy.{k}": v.detach().cpu().clone()
                                        for k, v in model.policy.state_dict().items()}
    scalars: dict[str, Any] = {}
    for name, opt in _optimizers(model).items():
        state = opt.state_dict()
        for idx, entries in state["state"].items():
            for key, value in entries.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optim.{name}.{idx}.{key}"] = value.detach().cpu().clone()
                else:
                    scalars[f"{name}.{idx}.{key}"] = value
        scalars[f"{name}.param_groups"] = [
            {k: v for k, v in g.items() if k != "params"} for g in state["param_groups"]]
    if isinstance(model, SAC):
        assert model.log_ent_coef is not None
        tensors["log_ent_coef"] = model.log_ent_coef.detach().cpu().reshape(1)
    last_obs = model._last_obs
    assert isinstance(last_obs, dict)
    for key, value in last_obs.items():
        tensors[f"last_obs.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    tensors["rng.torch"] = torch.get_rng_state()
    memory_counters = None
    if isinstance(model, GuidedPPO) and model.memory is not None:
        arrays, memory_counters = model.memory.state()
        tensors.update({f"expert_memory.{k}": torch.from_numpy(v) for k, v in arrays.items()})
    top = model.get_env()
    assert top is not None
    venv = unwrap_vec_normalize(top)  # image paths have SB3's VecTransposeImage on top
    assert venv is not None
    memory = _history(venv)
    if memory is not None:  # the past embeddings, which re-simulating would not restore
        tensors["history"] = torch.from_numpy(memory.history.buffer.copy())
    np_state: Any = np.random.get_state()
    meta = {
        "num_timesteps": model.num_timesteps,
        "n_updates": int(getattr(model, "_n_updates", 0)),
        "last_episode_starts": np.asarray(model._last_episode_starts).tolist(),
        "optimizer_scalars": scalars,
        "rng_numpy": [np_state[0], np.asarray(np_state[1]).tolist(), *np_state[2:]],
        "vecnormalize": vecnormalize_to_json(venv),
        "envs": venv.env_method("snapshot"),
        "config": to_dict(cfg),
        "expert_memory": memory_counters,
    }
    with atomic_path(directory / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp))
    atomic_write_text(directory / STATE_FILE, json.dumps(meta))


def restore_training_state(directory: Path, model: BaseAlgorithm) -> int:
    """Load :func:`save_training_state` into a freshly built model and its envs; returns
    the number of decisions already trained."""
    meta = json.loads((directory / STATE_FILE).read_text())
    tensors = load_file(str(directory / TENSORS_FILE))
    model.policy.load_state_dict({k[len("policy."):]: v for k, v in tensors.items()
                                  if k.startswith("policy.")})
    scalars = meta["optimizer_scalars"]
    for name, opt in _optimizers(model).items():
        state = opt.state_dict()
        for g, saved in zip(state["param_groups"], scalars[f"{name}.param_groups"],
                            strict=True):
            g.update(saved)
        new_state: dict[int, dict[str, Any]] = {}
        for key, value in tensors.items():
            if key.startswith(f"optim.{name}."):
                idx, field_name = key[len(f"optim.{name}."):].split(".", 1)
                new_state.setdefault(int(idx), {})[field_name] = value
        for key, value in scalars.items():
            parts = key.split(".", 2)
            if parts[0] == name and parts[1] != "param_groups":
                new_state.setdefault(int(parts[1]), {})[parts[2]] = value
        state["state"] = new_state
        opt.load_state_dict(state)
    if isinstance(model, SAC) and model.log_ent_coef is not None:
        with torch.no_grad():
            model.log_ent_coef.copy_(tensors["log_ent_coef"].reshape(model.log_ent_coef.shape))
    top = model.get_env()
    assert top is not None
    venv = unwrap_vec_normalize(top)
    assert venv is not None
    vecnormalize_from_json(venv, meta["vecnormalize"])
    for i, snap in enumerate(meta["envs"]):
        venv.env_method("restore", snap, indices=[i])
    memory = _history(venv)
    if memory is not None:
        memory.history.buffer[...] = tensors["history"].numpy()
    model._last_obs = {k[len("last_obs."):]: v.numpy() for k, v in tensors.items()
                       if k.startswith("last_obs.")}
    model._last_episode_starts = np.asarray(meta["last_episode_starts"], dtype=bool)
    if isinstance(model, GuidedPPO) and model.memory is not None and meta.get("expert_memory"):
        model.memory.load({k[len("expert_memory."):]: v.numpy() for k, v in tensors.items()
                           if k.startswith("expert_memory.")}, meta["expert_memory"])
    model.num_timesteps = int(meta["num_timesteps"])
    if hasattr(model, "_n_updates"):
        model._n_updates = int(meta["n_updates"])
    torch.set_rng_state(tensors["rng.torch"])
    np_state = meta["rng_numpy"]
    np.random.set_state((np_state[0], np.asarray(np_state[1], dtype=np.uint32),
                         *np_state[2:]))
    return model.num_timesteps


def actor_parameters(model: BaseAlgorithm) -> list[torch.nn.Parameter]:
    """Parameters of an actor-critic policy that only the action distribution uses."""
    policy: Any = model.policy
    value = {id(p) for p in policy.value_net.parameters()}
    value |= {id(p) for p in policy.mlp_extractor.value_net.parameters()}
    if isinstance(policy, PrivilegedCriticPolicy):
        value |= {id(p) for p in policy.critic_parameters()}
    return [p for p in policy.parameters() if id(p) not in value]


def initialise_from(model: BaseAlgorithm, venv: VecNormalize, agent_dir: Path,
                    cfg: TrainConfig) -> None:
    """Start from another agent's policy weights and observation statistics.

    Raises:
        ValueError: The agent was trained with another observation path or action mode,
            or its network does not fit.
    """
    from agents.load import read_agent_meta

    meta = read_agent_meta(agent_dir)
    if meta["obs"] != cfg.obs or meta["action_mode"] != cfg.action_mode:
        raise ValueError(f"init_from {agent_dir}: it was trained with obs '{meta['obs']}' and "
                         f"action mode '{meta['action_mode']}', this run uses '{cfg.obs}' and "
                         f"'{cfg.action_mode}'")
    weights = load_file(str(agent_dir / WEIGHTS_FILE))
    try:
        if isinstance(model.policy, PrivilegedCriticPolicy):
            # The saved agent is a plain actor; the privileged critic starts fresh.
            missing, unexpected = model.policy.load_state_dict(weights, strict=False)
            stray = [k for k in missing if not k.startswith("critic.")] + list(unexpected)
            if stray:
                raise RuntimeError(f"keys that do not fit: {', '.join(stray[:5])}")
        else:
            model.policy.load_state_dict(weights)
    except RuntimeError as exc:
        raise ValueError(f"init_from {agent_dir}: its network does not fit this run's "
                         f"policy ({str(exc).splitlines()[0]})") from None
    stats = meta.get("normalization")
    if stats:
        obs_rms = venv.obs_rms
        assert isinstance(obs_rms, dict)
        for key, s in stats["obs"].items():
            if key in obs_rms:
                obs_rms[key].mean = np.asarray(s["mean"], np.float64)
                obs_rms[key].var = np.asarray(s["var"], np.float64)
                obs_rms[key].count = float(s["count"])


def check_resumable(saved: dict[str, Any], cfg: TrainConfig) -> None:
    """A run resumes only with the config it was started with (the step budget aside).
    A section the saved config lacks predates its option and counts as its default."""
    current = to_dict(cfg)
    saved = {**to_dict(TrainConfig()), **saved}
    diffs = sorted(k for k in set(saved) | set(current)
                   if k not in RESUME_FREE_KEYS and saved.get(k) != current.get(k))
    if diffs:
        raise ValueError(f"cannot resume: the run's config differs in {', '.join(diffs)}; "
                         "use the same config, another --out, or --restart")


@dataclass(frozen=True)
class TrainResult:
    """What a run produced."""

    out_dir: Path
    agent_dir: Path
    num_timesteps: int
    resumed_from: int
    minutes: float


def train(cfg: TrainConfig, out_dir: str | Path, *, resume: bool = True,
          progress: bool = True) -> TrainResult:
    """Train an agent with PPO or SAC (behaviour cloning: :func:`agents.bc.train_bc`).

    Args:
        cfg: The run's config.
        out_dir: Run folder (``config.yaml``, ``tb/``, ``checkpoint/``, ``final/``).
        resume: Continue from ``<out>/checkpoint`` when it exists.
        progress: Show a progress bar.

    Raises:
        ValueError: Resuming with a different config, CUDA requested without CUDA.
    """
    if cfg.algo == "bc":
        from agents.bc import train_bc

        return train_bc(cfg, out_dir, progress=progress)
    out = Path(out_dir)
    ckpt = out / CHECKPOINT_DIR
    if resume and (ckpt / STATE_FILE).is_file():
        check_resumable(json.loads((ckpt / STATE_FILE).read_text())["config"], cfg)
    device = resolve_device(cfg.device)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = time.perf_counter()
    venv = build_vec_env(cfg, device)
    try:
        model = build_model(cfg, venv, device, out / "tb")
        done = 0
        if resume and (ckpt / STATE_FILE).is_file():
            done = restore_training_state(ckpt, model)
        else:
            venv.seed(cfg.seed)
            if cfg.init_from:
                initialise_from(model, venv, Path(cfg.init_from), cfg)
        if cfg.algo == "ppo" and cfg.ppo.embedding_l2 > 0.0:
            assert isinstance(model.policy, ActorCriticPolicy)
            if done == 0 and not cfg.init_from:  # a fresh actor starts blind to it
                zero_embedding_weights(model.policy)
            add_embedding_l2_gradient(model.policy, cfg.ppo.embedding_l2)
        remaining = max(cfg.total_timesteps - done, 0)
        budget = TimeBudgetCallback(cfg.max_minutes)
        callbacks = CallbackList([DrivingMetricsCallback(),
                                  ResumeCheckpointCallback(cfg, out, cfg.checkpoint_every_steps),
                                  budget])
        warmup = min(cfg.ppo.value_warmup_steps, remaining) if (
            cfg.algo == "ppo" and cfg.init_from and done == 0) else 0
        if warmup > 0:
            actor = actor_parameters(model)
            for param in actor:
                param.requires_grad_(False)
            model.learn(warmup, callback=callbacks, progress_bar=progress,
                        reset_num_timesteps=True, tb_log_name="run")
            for param in actor:
                param.requires_grad_(True)
            done, remaining = model.num_timesteps, max(cfg.total_timesteps
                                                       - model.num_timesteps, 0)
        if remaining > 0 and not budget.expired():
            model.learn(remaining, callback=callbacks, progress_bar=progress,
                        reset_num_timesteps=done == 0, tb_log_name="run")
        save_training_state(ckpt, model, cfg)
        agent_dir = save_agent(out / FINAL_DIR, model, cfg, venv)
    finally:
        venv.close()
    return TrainResult(out, agent_dir, model.num_timesteps, done,
                       (time.perf_counter() - start) / 60.0)


__all__ = ["AGENT_FILE", "WEIGHTS_FILE", "TrainResult", "encoder_reference", "train"]
