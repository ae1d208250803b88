"""Training configuration: one frozen dataclass per component, loaded from
``configs/agents/*.yaml`` (unknown keys rejected with the valid ones)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import envs
from common.config import ConfigError, apply_overrides, load_config, require
from envs.config import ACTION_MODES, load_env_config
from planning.action_modes import MetaAction

#: Observation paths (design brief section 5).
OBS_PATHS = ("frozen", "finetune", "scratch", "privileged")
#: Training algorithms.
ALGOS = ("ppo", "sac", "bc")
#: Action modes with a continuous action space (SAC needs one).
CONTINUOUS_MODES = ("control", "trajectory")
#: Training episodes draw their seeds from this range: the train split of
#: :data:`evaluation.suites.SPLIT_SEED_RANGES` (validation and test suites start at 100000).
TRAIN_SEED_RANGE = (0, 100_000)


@dataclass(frozen=True)
class PPOConfig:
    """stable-baselines3 PPO hyper-parameters (see its documentation).

    ``value_warmup_steps``: with ``init_from``, train only the value function for this many
    decisions first, so that the starting policy is not pushed around by advantages from
    an untrained critic. ``target_kl``: stop an update's epochs once the approximate KL
    divergence from the rollout policy exceeds it (None: never); fine-tuning a cloned
    policy needs it, or the first updates move it far from what it imitated.
    ``privileged_critic``: the critic also reads the privileged ``state`` vector (the
    envs turn ``sensors.state`` on); the actor never sees it and the saved agent drives
    without it (asymmetric actor-critic, :mod:`agents.privileged_critic`; ``frozen``
    observation path only). ``embedding_l2``: ``frozen`` path: L2 penalty on the actor's
    first-layer weights that read the embedding, as ``bc.embedding_l2`` (a fresh policy
    starts with them at zero; :mod:`agents.embedding_penalty`). ``anneal_lr``: the
    learning rate falls linearly from ``learning_rate`` to 0 at ``total_timesteps``
    (CleanRL's ``anneal_lr``), so that late updates cannot undo what early ones learned.
    ``expert_coef``: expert-guided PPO (:mod:`agents.guided_ppo`): the envs label every
    state the learner visits with the privileged expert's action, and each update ends
    with ``expert_epochs`` passes of behaviour cloning on those labels, the negative
    log-likelihood scaled by ``expert_coef`` (0, the default: plain PPO).
    ``expert_action_weights``: ``behavior`` mode: weight of each meta-action's labels in
    that phase, in ``MetaAction`` order as ``bc.action_weights`` (empty: all 1).
    ``expert_memory``: labelled states of past rollouts kept for that phase [decisions]
    (:mod:`agents.expert_memory`, DAgger's aggregated dataset); each of its minibatches
    adds as many states drawn from them (0, the default: the current rollout only).
    Needs ``expert_coef > 0``; it is saved with the resumable checkpoint (about 2.4 kB a
    decision on the ``frozen`` path, 21 kB more with an 84 x 84 image).
    """

    n_steps: int = 128
    batch_size: int = 64
    n_epochs: int = 4
    learning_rate: float = 3e-4
    gamma: float = 0.99
    gae_lambda: float = 0.95
    clip_range: float = 0.2
    ent_coef: float = 0.01
    vf_coef: float = 0.5
    max_grad_norm: float = 0.5
    net_arch: tuple[int, ...] = (256, 256)
    value_warmup_steps: int = 0
    target_kl: float | None = None
    privileged_critic: bool = False
    embedding_l2: float = 0.0
    anneal_lr: bool = False
    expert_coef: float = 0.0
    expert_epochs: int = 1
    expert_action_weights: tuple[float, ...] = ()
    expert_memory: int = 0

    def __post_init__(self) -> None:
        require(self.value_warmup_steps >= 0, "ppo.value_warmup_steps must be >= 0")
        require(self.expert_coef >= 0.0, f"ppo.expert_coef must be >= 0, got {self.expert_coef}")
        require(self.expert_epochs >= 1, f"ppo.expert_epochs must be >= 1, got "
                f"{self.expert_epochs}")
        require(all(w > 0.0 for w in self.expert_action_weights),
                f"ppo.expert_action_weights must all be > 0, got "
                f"{list(self.expert_action_weights)}")
        require(self.expert_memory >= 0,
                f"ppo.expert_memory must be >= 0, got {self.expert_memory}")
        require(self.expert_memory == 0 or self.expert_coef > 0.0,
                "ppo.expert_memory needs ppo.expert_coef > 0 (it feeds the expert phase)")
        require(self.embedding_l2 >= 0.0,
                f"ppo.embedding_l2 must be >= 0, got {self.embedding_l2}")
        require(self.target_kl is None or self.target_kl > 0, "ppo.target_kl must be > 0 or null")
        require(self.n_steps >= 2 and self.batch_size >= 2, "ppo.n_steps and ppo.batch_size "
                "must be >= 2")


@dataclass(frozen=True)
class SACConfig:
    """stable-baselines3 SAC hyper-parameters."""

    buffer_size: int = 50_000
    learning_starts: int = 500
    batch_size: int = 128
    learning_rate: float = 3e-4
    tau: float = 0.005
    gamma: float = 0.99
    train_freq: int = 1
    gradient_steps: int = 1
    net_arch: tuple[int, ...] = (256, 256)


@dataclass(frozen=True)
class BCConfig:
    """Behaviour cloning from the expert (``algo: bc``).

    Attributes:
        episodes: Expert episodes recorded first.
        max_steps: Decisions per episode at most.
        dagger_iterations: DAgger rounds after plain BC (0: plain BC); each rolls out
            the learner for ``dagger_episodes`` episodes, labels its states with the
            expert and retrains on everything.
        dagger_episodes: Learner episodes per DAgger round.
        epochs: Passes over the data per fit at most.
        batch_size: Minibatch size.
        learning_rate: Adam learning rate.
        val_fraction: Share of the recorded episodes held out of every fit (drawn once
            per episode); the fit keeps the weights of the epoch with the lowest
            validation negative log-likelihood and stops after ``patience`` epochs
            without a better one. 0 (the default): no hold-out, every fit runs ``epochs``
            epochs and keeps the last weights, which drove best in our runs (README).
        patience: Epochs without a better validation loss before a fit stops.
        action_weights: ``behavior`` mode: weight of each meta-action's labels in the
            negative log-likelihood, one per action in ``MetaAction`` order (keep, left,
            right, faster, slower, stop); empty (the default): all 1. Up-weighting the
            rare braking labels (README, agents section).
        disagreement_weight: ``behavior`` mode with DAgger: weight in the negative
            log-likelihood of the DAgger decisions where the learner's own action (the one
            it drove with) differed from the expert's label; the other rows weigh 1.
            A rare mistake that ends an episode (a lane change into a car on the on-ramp)
            otherwise counts once among hundreds of cruising decisions. 1 (the default):
            no change. Multiplies ``action_weights``. In our runs it made the clone merge
            worse (README, agents section): the weight goes to every kind of mistake.
        focus_overrides: Env overrides (on top of the run's ``env_overrides``) of a
            variant of the env for focus episodes: a rare situation that ordinary
            episodes hold only a few decisions of, such as the on-ramp merge
            (``[ramp_start_prob=1.0]``: about one ordinary episode in six merges, and
            the merge is decided in a handful of its 400 decisions).
        focus_episodes: Expert episodes in the focus variant, recorded after the
            ``episodes`` ordinary ones.
        focus_dagger_episodes: Learner episodes in the focus variant per DAgger round,
            after the round's ``dagger_episodes`` ordinary ones.
        focus_max_steps: Decisions per focus episode at most (short: the situation is
            near the start).
        save_dataset: Also write the labelled decisions, with the expert's reasons, to
            ``<out>/bc_dataset.npz`` (``agents.bc.save_dataset``).
        embedding_l2: ``frozen`` path: L2 penalty on the actor's first-layer weights that
            read the embedding (summed squares, added to the mean negative
            log-likelihood); with a penalty they also start at zero, so the policy
            leans on the embedding only as far as it pays. 0 (the default): none. Lets a
            few vector inputs (``lane_gaps``) count beside 512 embedding features that
            the clone otherwise memorises (README, agents section).
    """

    episodes: int = 20
    max_steps: int = 400
    dagger_iterations: int = 0
    dagger_episodes: int = 5
    epochs: int = 20
    batch_size: int = 256
    learning_rate: float = 1e-3
    val_fraction: float = 0.0
    patience: int = 5
    action_weights: tuple[float, ...] = ()
    disagreement_weight: float = 1.0
    focus_overrides: tuple[str, ...] = ()
    focus_episodes: int = 0
    focus_dagger_episodes: int = 0
    focus_max_steps: int = 100
    save_dataset: bool = False
    embedding_l2: float = 0.0

    def __post_init__(self) -> None:
        require(0.0 <= self.val_fraction < 1.0, "bc.val_fraction must be in [0, 1)")
        require(self.embedding_l2 >= 0.0, f"bc.embedding_l2 must be >= 0, got {self.embedding_l2}")
        require(all(w > 0.0 for w in self.action_weights),
                f"bc.action_weights must all be > 0, got {list(self.action_weights)}")
        require(self.patience >= 1 and self.epochs >= 1, "bc.patience and bc.epochs must be "
                ">= 1")
        require(self.focus_episodes >= 0 and self.focus_dagger_episodes >= 0
                and self.focus_max_steps >= 1, "bc.focus_episodes and "
                "bc.focus_dagger_episodes must be >= 0, bc.focus_max_steps >= 1")
        require(not self.focus_overrides or self.focus_episodes + self.focus_dagger_episodes > 0,
                "bc.focus_overrides needs bc.focus_episodes or bc.focus_dagger_episodes > 0")
        require(self.focus_dagger_episodes == 0 or self.dagger_iterations >= 1,
                "bc.focus_dagger_episodes needs DAgger rounds: set bc.dagger_iterations >= 1")
        require(self.disagreement_weight > 0.0,
                f"bc.disagreement_weight must be > 0, got {self.disagreement_weight}")


@dataclass(frozen=True)
class HistoryConfig:
    """How many past embeddings the policy sees (``frozen`` observation path).

    Attributes:
        frames: Embeddings concatenated per observation, the current one included
            (1: no memory).
        stride: Decisions between two of them (1: consecutive decisions; with the
            ``behavior`` layer's 0.3 s decisions, ``frames=4, stride=2`` reaches 1.8 s
            back).
    """

    frames: int = 1
    stride: int = 1

    def __post_init__(self) -> None:
        require(self.frames >= 1 and self.stride >= 1,
                "history.frames and history.stride must be >= 1")

    @property
    def span(self) -> int:
        """Embeddings each env must remember: ``(frames - 1) * stride + 1``."""
        return (self.frames - 1) * self.stride + 1


@dataclass(frozen=True)
class ShapingConfig:
    """Training reward shaping (:mod:`agents.shaping`; evaluation is unaffected).

    Attributes:
        ttc_threshold_s: Times to collision with the vehicle ahead below this are
            penalised [s].
        ttc_weight: Penalty per decision at contact (TTC 0), falling linearly to 0 at
            the threshold; 0 (the default) turns shaping off.
    """

    ttc_threshold_s: float = 3.0
    ttc_weight: float = 0.0

    def __post_init__(self) -> None:
        require(self.ttc_threshold_s > 0, "shaping.ttc_threshold_s must be > 0")
        require(self.ttc_weight >= 0, "shaping.ttc_weight must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """A training run.

    Attributes:
        env_id: ``Highway-v0`` or ``Urban-v0``.
        action_mode: ``control``, ``behavior`` or ``trajectory``.
        algo: ``ppo`` (any mode), ``sac`` (continuous modes) or ``bc``.
        obs: Observation path: ``frozen`` (embeddings of a pretrained encoder computed once
            per step for the batch), ``finetune`` (the encoder trained with the policy),
            ``scratch`` (a Nature CNN from scratch with random-shift augmentation),
            ``privileged`` (the state vector).
        encoder: Encoder checkpoint directory (``frozen`` / ``finetune``); the default is
            where ``bulletdrive pretrain`` writes it.
        num_envs: Parallel envs (worker processes when > 1).
        total_timesteps: Decisions to train for (PPO / SAC).
        seed: Seed of the run (policy initialisation, sampling, episode seeds).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        compile_encoder: ``frozen`` path: run the encoder through ``torch.compile``
            (pays off on a GPU; a minute of compiling on the CPU).
        checkpoint_every_steps: Decisions between checkpoints.
        max_minutes: Wall-clock budget of one invocation [min] (PPO/SAC stop at the
            first step past it; ``None``: no limit).
        init_from: Agent directory whose policy weights and observation statistics start
            the run (e.g. a behaviour-cloning agent with the same observation path and
            action mode, to fine-tune it with PPO); ``None``: random initialisation.
        env_overrides: Env config overrides (``key.sub=value``).
        lane_gaps: Add ``lane_gaps`` (:mod:`planning.lane_gaps`: the free length ahead and
            behind in the ego's and the neighbouring lanes, measured with the lidar and
            the map) to the policy's inputs, in place of the raw lidar ranges; needs
            ``sensors.lidar=true`` in ``env_overrides``.
        lane_presence: With ``lane_gaps``, two more inputs say whether a lane exists
            left and right of the ego's (from the map), since a guard rail reads like a
            car beside the ego (:data:`planning.lane_gaps.PRESENCE_FEATURES`).
        lane_rear_closing: With ``lane_gaps``, two more inputs say how fast the nearest
            car behind in the left and the right lane comes nearer [m/s], which a lane
            change must leave room for
            (:data:`planning.lane_gaps.REAR_CLOSING_FEATURES`).
        history: How many past embeddings the policy sees (``frozen`` path only).
        shaping: Training reward shaping (a time-to-collision penalty).
        ppo / sac / bc: Algorithm settings.
    """

    env_id: str = "Highway-v0"
    action_mode: Literal["control", "behavior", "trajectory"] = "behavior"
    algo: Literal["ppo", "sac", "bc"] = "ppo"
    obs: Literal["frozen", "finetune", "scratch", "privileged"] = "frozen"
    encoder: str | None = "runs/pretrain/encoder"
    num_envs: int = 2
    total_timesteps: int = 20_000
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile_encoder: bool = False
    checkpoint_every_steps: int = 2_048
    max_minutes: float | None = None
    init_from: str | None = None
    env_overrides: tuple[str, ...] = ()
    lane_gaps: bool = False
    lane_presence: bool = False
    lane_rear_closing: bool = False
    history: HistoryConfig = field(default_factory=HistoryConfig)
    shaping: ShapingConfig = field(default_factory=ShapingConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    bc: BCConfig = field(default_factory=BCConfig)

    def __post_init__(self) -> None:
        short = self.env_id.removeprefix("bulletdrive/")
        if f"bulletdrive/{short}" not in envs.ENV_IDS:
            raise ConfigError(f"env_id: unknown env id {self.env_id!r}; valid: "
                              f"{', '.join(envs.ENV_IDS)}")
        require(self.action_mode in ACTION_MODES, f"action_mode must be one of {ACTION_MODES}")
        # Bad env overrides are refused here, before a run writes anything, with the env
        # config's message (the env applies them the same way when it is built).
        env_cls = envs.config_class(self.env_id)
        for name, extra in (("env_overrides", self.env_overrides),
                            ("bc.focus_overrides", (*self.env_overrides,
                                                    *self.bc.focus_overrides))):
            if extra:
                try:
                    load_env_config(overrides=list(extra), cls=env_cls)
                except ConfigError as exc:
                    raise ConfigError(f"{name}: {exc}") from None
        if self.algo == "sac" and self.action_mode not in CONTINUOUS_MODES:
            raise ConfigError(f"algo 'sac' needs a continuous action mode "
                              f"({', '.join(CONTINUOUS_MODES)}), not '{self.action_mode}'; "
                              "use algo 'ppo' or 'bc' for behavior")
        if self.obs in ("frozen", "finetune") and not self.encoder:
            raise ConfigError(f"obs '{self.obs}' needs an encoder checkpoint: set "
                              "encoder=<dir> (made by `bulletdrive pretrain`)")
        require(self.num_envs >= 1 and self.total_timesteps >= 1,
                "num_envs and total_timesteps must be >= 1")
        require(self.checkpoint_every_steps >= 1, "checkpoint_every_steps must be >= 1")
        if self.algo == "ppo" and self.ppo.privileged_critic and self.obs != "frozen":
            raise ConfigError(f"ppo.privileged_critic works with obs 'frozen' only, not "
                              f"'{self.obs}'")
        for name, weights in (("bc.action_weights", self.bc.action_weights),
                              ("ppo.expert_action_weights", self.ppo.expert_action_weights)):
            if weights and (self.action_mode != "behavior" or len(weights) != len(MetaAction)):
                raise ConfigError(f"{name} needs action_mode 'behavior' and one weight per "
                                  f"meta-action ({', '.join(a.name.lower() for a in MetaAction)}"
                                  f"), got {len(weights)} for '{self.action_mode}'")
        if self.bc.disagreement_weight != 1.0 and (self.action_mode != "behavior"
                                                   or self.bc.dagger_iterations == 0):
            raise ConfigError("bc.disagreement_weight weighs the DAgger decisions where the "
                              "learner's meta-action differs from the expert's: it needs "
                              "action_mode 'behavior' and bc.dagger_iterations >= 1, got "
                              f"'{self.action_mode}' and {self.bc.dagger_iterations}")
        for name, l2 in (("bc", self.bc.embedding_l2), ("ppo", self.ppo.embedding_l2)):
            if l2 > 0.0 and self.obs != "frozen":
                raise ConfigError(f"{name}.embedding_l2 penalises the frozen path's embedding "
                                  f"weights; obs '{self.obs}' has none (use obs 'frozen')")
        if self.lane_gaps and apply_overrides({}, self.env_overrides).get(
                "sensors", {}).get("lidar") is not True:
            raise ConfigError("lane_gaps needs the lidar: add sensors.lidar=true to "
                              "env_overrides")
        if self.lane_presence and not self.lane_gaps:
            raise ConfigError("lane_presence extends the lane gaps: set lane_gaps=true too")
        if self.lane_rear_closing and not self.lane_gaps:
            raise ConfigError("lane_rear_closing extends the lane gaps: set lane_gaps=true "
                              "too")
        if self.history.frames > 1 and self.obs != "frozen":
            raise ConfigError(f"history.frames > 1 works with obs 'frozen' only (it stacks "
                              f"embeddings), not '{self.obs}'")

    @property
    def expert_guided(self) -> bool:
        """Whether this is an expert-guided PPO run (``ppo.expert_coef > 0``): its envs
        label each state with the expert's action and the model is ``GuidedPPO``."""
        return self.algo == "ppo" and self.ppo.expert_coef > 0.0


def load_train_config(source: str | Path | Mapping[str, Any] | None = None,
                      overrides: Sequence[str] = ()) -> TrainConfig:
    """Load a :class:`TrainConfig` from ``configs/agents/<name>.yaml``, a path or a mapping."""
    return load_config(TrainConfig, source or "ppo_behavior", overrides, group="agents")
