"""Behaviour cloning from the expert (``bulletdrive train --set algo=bc``), plain or DAgger.

1. Drive ``bc.episodes`` expert episodes (train seeds) in the run's action mode and keep
   every decision's observation (through the run's observation path) and the expert's
   action.
2. Fit an SB3 actor-critic policy (the same network PPO would train) by maximum
   likelihood of the expert's actions.
3. DAgger (``bc.dagger_iterations > 0``): drive the learner, label the states it visits
   with the expert, add them and fit again.
4. Save it as an agent directory, loadable wherever a policy name is accepted.

Focus episodes (``bc.focus_episodes``, ``bc.focus_dagger_episodes``) are short extra
episodes, expert (step 1) and DAgger (step 3), in a variant of the env
(``bc.focus_overrides``) that makes a rare situation common, such as starting on the
on-ramp.

With ``bc.save_dataset`` the labelled decisions are also written to
``<out>/bc_dataset.npz`` (:data:`DATASET_FILE`), with the expert's reasons beside each
label, for offline studies such as ``python -m agents.label_study``.
"""

from __future__ import annotations

import copy
import math
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
import yaml
from gymnasium import spaces
from stable_baselines3.common.policies import MultiInputActorCriticPolicy
from tqdm import tqdm

from agents.config import TrainConfig
from agents.embedding_history import EpisodeHistory, stacked_space
from agents.embedding_penalty import add_embedding_l2_gradient, zero_embedding_weights
from agents.env_factory import VECTOR_KEYS, build_env, env_overrides, lane_options
from agents.extractors import extractor_kwargs, policy_input
from agents.saving import normalize_obs, save_agent
from common.config import to_dict
from common.io import atomic_write_text, atomic_write_with
from perception.checkpoint import load_encoder
from perception.encoders import Encoder
from planning.action_modes import MetaAction
from planning.policies import ExpertPolicy

#: Added to variances so constant features do not divide by zero.
EPSILON = 1e-8
#: Normalised observations are clipped to +-this, as SB3's VecNormalize does.
CLIP_OBS = 10.0


class ObservationPath:
    """Turns single env observations into the policy's input for one observation path.

    With ``history.frames > 1`` it remembers the episode's past embeddings: call
    :meth:`start_episode` after every env reset.
    """

    def __init__(self, cfg: TrainConfig, env_space: spaces.Dict, device: torch.device) -> None:
        self.obs = cfg.obs
        self.encoder: Encoder | None = None
        self.history: EpisodeHistory | None = None
        parts: dict[str, spaces.Space[Any]] = {}
        if cfg.obs == "frozen":
            assert cfg.encoder is not None
            self.encoder = load_encoder(cfg.encoder, device=device)
            parts["embedding"] = stacked_space(self.encoder.embed_dim, cfg.history)
            if cfg.history.frames > 1:
                self.history = EpisodeHistory(self.encoder.embed_dim, cfg.history)
        elif cfg.obs in ("finetune", "scratch"):
            h, w, c = env_space["camera"].shape  # type: ignore[misc]
            parts["camera"] = spaces.Box(0, 255, (c, h, w), np.uint8)
        for key in VECTOR_KEYS:
            if key in env_space.spaces:
                parts[key] = env_space.spaces[key]
        self.space = spaces.Dict(parts)

    def start_episode(self) -> None:
        """The next observation is an episode's first."""
        if self.history is not None:
            self.history.start_episode()

    def __call__(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One observation, unbatched, unnormalised."""
        out = policy_input(obs, self.space.spaces, self.encoder)
        if self.history is not None:
            out["embedding"] = self.history(out["embedding"])
        return out


def normalization_stats(data: list[dict[str, np.ndarray]], keys: list[str]) -> dict[str, Any]:
    """Mean/variance of the vector keys, in the format :func:`normalize_obs` reads."""
    stats = {}
    for key in keys:
        arr = np.stack([d[key] for d in data]).astype(np.float64)
        stats[key] = {"mean": arr.mean(0).tolist(), "var": arr.var(0).tolist(),
                      "count": float(len(arr))}
    return {"obs": stats, "epsilon": EPSILON, "clip_obs": CLIP_OBS, "keys": keys}


#: File name of the labelled decisions written with ``bc.save_dataset``.
DATASET_FILE = "bc_dataset.npz"
#: The expert's reasons stored per decision (columns of the dataset's ``expert_reasons``).
REASON_COLUMNS = ("speed_mps", "gap_m", "lead_speed_mps", "desired_speed_mps")
#: One driven episode, per decision: observations, the expert's labels, its reasons and
#: whether the learner's action differed from the label (always False when the expert
#: drives, and in the continuous modes).
Episode = tuple[list[dict[str, np.ndarray]], list[Any], list[tuple[float, ...]], list[bool]]


def drive(env: gym.Env[Any, Any], path: ObservationPath, expert: ExpertPolicy,
          learner: MultiInputActorCriticPolicy | None, stats: dict[str, Any] | None,
          max_steps: int, seed: int | None) -> Episode:
    """One episode; the learner drives when given (DAgger), else the expert. Returns the
    visited observations, the expert's action at each, its reasons
    (:data:`REASON_COLUMNS`: ego speed and the inputs of the expert's IDM) and whether the
    learner chose another ``behavior`` meta-action than the expert."""
    obs, _ = env.reset(seed=seed)
    path.start_episode()
    observations: list[dict[str, np.ndarray]] = []
    labels: list[Any] = []
    reasons: list[tuple[float, ...]] = []
    disagrees: list[bool] = []
    driving: Any = env.unwrapped
    for _ in range(max_steps):
        x = path(obs)
        label = expert.act(obs, env)
        plan = expert.last_plan
        assert plan is not None
        observations.append(x)
        labels.append(label)
        reasons.append((float(driving.state.speed_mps), plan.gap_m, plan.lead_speed_mps,
                        plan.desired_speed_mps))
        action = label
        if learner is not None and stats is not None:
            batch = normalize_obs({k: v[None] for k, v in x.items()}, stats)
            action, _ = learner.predict(batch, deterministic=True)
            action = action[0]
        disagrees.append(bool(np.ndim(label) == 0 and int(action) != int(label)))
        obs, _, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            break
    return observations, labels, reasons, disagrees


def save_dataset(path: Path, data: list[dict[str, np.ndarray]], actions: list[Any],
                 reasons: list[tuple[float, ...]], lengths: list[int],
                 differs: list[bool]) -> None:
    """Write the labelled decisions to ``path`` (atomically): one array per observation
    key (rows = decisions), ``label``, ``episode`` (index of the recorded episode, in
    the order driven: the expert's ordinary then focus episodes, then each DAgger
    round's ordinary then focus episodes), ``expert_reasons``
    ``(rows, 4)`` in :data:`REASON_COLUMNS` order and ``learner_differs`` (the DAgger
    learner chose another action than the label)."""
    arrays: dict[str, Any] = {k: np.stack([d[k] for d in data]) for k in data[0]}
    arrays["label"] = np.asarray(actions)
    arrays["episode"] = np.repeat(np.arange(len(lengths)), lengths)
    arrays["expert_reasons"] = np.asarray(reasons, np.float64)
    arrays["learner_differs"] = np.asarray(differs, bool)

    def write(tmp: Path) -> None:
        with tmp.open("wb") as f:
            np.savez(f, **arrays)

    atomic_write_with(path, write)


class EpisodeSplit:
    """Assigns each recorded episode to training or validation once, when it is recorded,
    so that a policy trained again after every DAgger round never trains on the episodes
    that pick its epoch. The first episode always trains.

    Args:
        val_fraction: Probability that an episode is held out.
        seed: Seed of the draws.
    """

    def __init__(self, val_fraction: float, seed: int) -> None:
        self.val_fraction = val_fraction
        self.rng = np.random.default_rng(seed)
        self.rows: list[bool] = []
        self.episodes = 0

    def add(self, length: int) -> None:
        """Record an episode of ``length`` rows."""
        held_out = self.episodes > 0 and bool(self.rng.random() < self.val_fraction)
        self.rows += [held_out] * length
        self.episodes += 1

    def is_val(self) -> np.ndarray:
        """Boolean per recorded row: True for the validation rows."""
        return np.asarray(self.rows, bool)


def fit(policy: MultiInputActorCriticPolicy, data: list[dict[str, np.ndarray]],
        actions: list[Any], is_val: np.ndarray, stats: dict[str, Any], cfg: TrainConfig,
        generator: torch.Generator, device: torch.device,
        row_weights: np.ndarray | None = None) -> dict[str, float]:
    """Maximum-likelihood fit of the policy's action distribution, with early stopping on
    held-out episodes (``is_val`` per row, see :class:`EpisodeSplit`; ``bc.patience``).
    Each row's log-likelihood is weighted by ``bc.action_weights`` of its label times
    ``row_weights`` (per row; None: all 1).

    Returns:
        ``train_nll`` (mean over the last epoch's minibatches), ``val_nll`` (of the kept
        weights; NaN without validation) and ``epochs`` run.
    """
    keys = list(data[0])
    arrays = normalize_obs({k: np.stack([d[k] for d in data]) for k in keys}, stats)
    tensors = {k: torch.as_tensor(v, device=device) for k, v in arrays.items()}
    target = torch.as_tensor(np.asarray(actions), device=device)
    train_idx = torch.as_tensor(np.flatnonzero(~is_val), device=device)
    val_idx = torch.as_tensor(np.flatnonzero(is_val), device=device)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.bc.learning_rate)
    # Per-row loss weights (bc.action_weights); all 1 without them.
    row_weight = (torch.as_tensor(cfg.bc.action_weights, dtype=torch.float32,
                                  device=device)[target.long()]
                  if cfg.bc.action_weights else torch.ones(len(target), device=device))
    if row_weights is not None:
        row_weight = row_weight * torch.as_tensor(row_weights, dtype=torch.float32,
                                                  device=device)
    # bc.embedding_l2: the same gradient hook PPO uses, for this fit only.
    penalty = (add_embedding_l2_gradient(policy, cfg.bc.embedding_l2)
               if cfg.bc.embedding_l2 > 0.0 else None)
    best_val, best_state, stale = math.inf, None, 0
    last, epochs = float("nan"), 0
    try:
        for epochs in range(1, cfg.bc.epochs + 1):  # noqa: B007 (reported after the loop)
            policy.set_training_mode(True)
            order = train_idx[torch.randperm(len(train_idx), generator=generator).to(device)]
            losses = []
            for start in range(0, len(order), cfg.bc.batch_size):
                idx = order[start:start + cfg.bc.batch_size]
                batch = {k: v[idx] for k, v in tensors.items()}
                _, log_prob, _ = policy.evaluate_actions(batch, target[idx])
                loss = -(row_weight[idx] * log_prob).sum() / row_weight[idx].sum()
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
            last = float(np.mean(losses))
            if len(val_idx) == 0:
                continue
            policy.set_training_mode(False)
            val_batch = {k: v[val_idx] for k, v in tensors.items()}
            with torch.no_grad():
                _, log_prob, _ = policy.evaluate_actions(val_batch, target[val_idx])
            val = float(-(row_weight[val_idx] * log_prob).sum() / row_weight[val_idx].sum())
            if val < best_val:
                best_val, stale = val, 0
                best_state = copy.deepcopy(policy.state_dict())
            else:
                stale += 1
                if stale >= cfg.bc.patience:
                    break
    finally:
        # Removed even when a fit fails, so the policy keeps no stale hook.
        if penalty is not None:
            penalty.remove()
    if best_state is not None:
        policy.load_state_dict(best_state)
    policy.set_training_mode(False)
    return {"train_nll": last, "val_nll": best_val if best_state is not None else math.nan,
            "epochs": float(epochs)}


def label_counts(actions: list[Any]) -> dict[str, int] | None:
    """How often each ``behavior`` meta-action was the expert's label (``None`` for the
    continuous modes), for choosing ``bc.action_weights``."""
    if not actions or np.ndim(actions[0]) != 0:
        return None
    counts = np.bincount(np.asarray(actions, int), minlength=len(MetaAction))
    return {a.name.lower(): int(counts[a.value]) for a in MetaAction}


def train_bc(cfg: TrainConfig, out_dir: str | Path, progress: bool = True) -> Any:
    """Behaviour cloning (and DAgger) from the expert; see the module docstring.

    Returns:
        A :class:`agents.train.TrainResult` (``num_timesteps`` = labelled decisions).
    """
    from agents.train import TrainResult, resolve_device

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.yaml", yaml.safe_dump(to_dict(cfg), sort_keys=False))
    start = time.perf_counter()
    device = resolve_device(cfg.device)
    env = build_env(cfg.env_id, cfg.action_mode, env_overrides(cfg), **lane_options(cfg))
    assert isinstance(env.observation_space, spaces.Dict)
    path = ObservationPath(cfg, env.observation_space, device)
    expert = ExpertPolicy()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        policy = MultiInputActorCriticPolicy(
            path.space, env.action_space, lambda _: cfg.bc.learning_rate,
            net_arch=list(cfg.ppo.net_arch), **extractor_kwargs(cfg.obs, cfg.encoder, cfg.seed))
    if cfg.bc.embedding_l2 > 0.0:
        zero_embedding_weights(policy)
    policy.to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    data: list[dict[str, np.ndarray]] = []
    actions: list[Any] = []
    split = EpisodeSplit(cfg.bc.val_fraction, cfg.seed)
    bc = cfg.bc
    # Focus episodes: the same observation path and wrappers, the variant's overrides.
    focus_env = (build_env(cfg.env_id, cfg.action_mode,
                           [*env_overrides(cfg), *bc.focus_overrides], **lane_options(cfg))
                 if bc.focus_episodes + bc.focus_dagger_episodes > 0 else None)
    bar = tqdm(total=bc.episodes + bc.focus_episodes
               + bc.dagger_iterations * (bc.dagger_episodes + bc.focus_dagger_episodes),
               desc="bc episodes", disable=not progress)
    reasons: list[tuple[float, ...]] = []
    lengths: list[int] = []
    disagrees: list[bool] = []

    def keep(episode: Episode) -> None:
        obs, acts, why, differs = episode
        split.add(len(obs))
        data.extend(obs)
        actions.extend(acts)
        reasons.extend(why)
        disagrees.extend(differs)
        lengths.append(len(obs))
        bar.update(1)

    def weights() -> np.ndarray:
        # bc.disagreement_weight on the DAgger rows where the learner erred, 1 elsewhere.
        return np.where(np.asarray(disagrees, bool), bc.disagreement_weight, 1.0)

    # Each env's first reset is seeded, later ones draw train seeds; the focus env has
    # its own sequence, so adding focus episodes leaves the ordinary ones as they were.
    next_seed: dict[int, int | None] = {id(env): cfg.seed, id(focus_env): cfg.seed + 1}

    def run(on: gym.Env[Any, Any] | None, count: int, max_steps: int,
            learner: MultiInputActorCriticPolicy | None, stats: dict[str, Any] | None
            ) -> None:
        if on is None:  # no focus env
            return
        for _ in range(count):
            keep(drive(on, path, expert, learner, stats, max_steps, next_seed[id(on)]))
            next_seed[id(on)] = None

    run(env, bc.episodes, bc.max_steps, None, None)
    run(focus_env, bc.focus_episodes, bc.focus_max_steps, None, None)
    vector_keys = [k for k in path.space.spaces if k != "camera"]
    stats = normalization_stats(data, vector_keys)
    fit_info = fit(policy, data, actions, split.is_val(), stats, cfg, generator, device)
    for _ in range(bc.dagger_iterations):
        run(env, bc.dagger_episodes, bc.max_steps, policy, stats)
        run(focus_env, bc.focus_dagger_episodes, bc.focus_max_steps, policy, stats)
        stats = normalization_stats(data, vector_keys)
        fit_info = fit(policy, data, actions, split.is_val(), stats, cfg, generator, device,
                       weights())
    bar.close()
    env.close()
    if focus_env is not None:
        focus_env.close()
    if cfg.bc.save_dataset:
        save_dataset(out / DATASET_FILE, data, actions, reasons, lengths, disagrees)
    agent_dir = save_agent(out / "final", policy, cfg, None, algo="bc", normalization=stats,
                           extra={"bc_samples": len(data), "bc_final_nll": fit_info["train_nll"],
                                  "bc_val_nll": (None if math.isnan(fit_info["val_nll"])
                                                 else fit_info["val_nll"]),
                                  "bc_epochs": fit_info["epochs"],
                                  "bc_learner_disagreements": int(np.sum(disagrees)),
                                  "bc_label_counts": label_counts(actions)})
    return TrainResult(out, agent_dir, len(data), 0, (time.perf_counter() - start) / 60.0)
