"""Built-in policies by name: ``expert``, ``random`` and ``keep_lane``, in every action mode.

A policy maps ``(observation, env)`` to an action of the env's action mode. The env is
the (possibly wrapped) env being driven: the privileged expert reads the world from
``env.unwrapped`` and, in the ``behavior`` mode, the decision layer's target lane and
speed. ``agents`` adds trained policies loaded from a path.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

from envs.driving_env import DrivingEnv
from planning.action_modes import BehaviorWrapper, MetaAction, TrajectoryWrapper
from planning.expert import Expert, ExpertConfig, ExpertPlan
from planning.path_tracker import PathTracker
from planning.reference_path import build_reference_path, lanes_ahead


class Policy(Protocol):
    """Anything that drives a bulletdrive env."""

    name: str

    def reset(self, seed: int | None = None) -> None:
        """Start a new episode (``seed`` seeds any randomness of the policy)."""

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        """The action for the current step, in the env's action mode."""


def _driving(env: gym.Env[Any, Any]) -> DrivingEnv:
    driving = env.unwrapped
    if not isinstance(driving, DrivingEnv):
        raise TypeError("built-in policies drive bulletdrive envs only")
    return driving


def _layer(env: gym.Env[Any, Any], cls: type[Any]) -> Any:
    """The decision wrapper of type ``cls`` inside ``env``, or ``None``."""
    e: Any = env
    while isinstance(e, gym.Wrapper):
        if isinstance(e, cls):
            return e
        e = e.env
    return None


def _mode(env: gym.Env[Any, Any]) -> str:
    if _layer(env, BehaviorWrapper) is not None:
        return "behavior"
    if _layer(env, TrajectoryWrapper) is not None:
        return "trajectory"
    return "control"


#: How far the expert's target speed leads its current speed per m/s^2 it wants [s].
SPEED_LEAD_S = 1.0


class ExpertPolicy:
    """The privileged rule-based expert (:class:`planning.expert.Expert`) in any mode.

    ``control``: its own pure-pursuit/IDM command. ``behavior``: the meta-action that
    moves the layer's target towards the expert's lane and speed (braking first, then
    lane changes, then speed). ``trajectory``: the offset of the expert's lane, the
    speed it wants one decision ahead, and a 3 s horizon.
    """

    name = "expert"

    def __init__(self, cfg: ExpertConfig | None = None) -> None:
        self.expert = Expert(cfg)
        #: The plan behind the latest action (for datasets that keep the expert's reasons).
        self.last_plan: ExpertPlan | None = None

    def reset(self, seed: int | None = None) -> None:
        """The expert is deterministic; nothing to reset."""

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        """The expert's action in the env's mode."""
        driving = _driving(env)
        plan = self.expert.plan(driving)
        self.last_plan = plan
        behavior = _layer(env, BehaviorWrapper)
        if behavior is not None:
            return int(self._meta_action(driving, behavior, plan))
        trajectory = _layer(env, TrajectoryWrapper)
        if trajectory is not None:
            return self._trajectory_action(driving, trajectory, plan)
        return plan.control

    @staticmethod
    def _wanted_speed(driving: DrivingEnv, plan: ExpertPlan) -> float:
        """Target speed that makes the layer's speed PID (gain about 1/s) produce the
        expert's acceleration [m/s]."""
        return max(driving.state.speed_mps + plan.accel_mps2 * SPEED_LEAD_S, 0.0)

    def _meta_action(self, driving: DrivingEnv, layer: BehaviorWrapper,
                     plan: ExpertPlan) -> MetaAction:
        rm = driving.road_map
        assert rm is not None
        layer.sync_target_lane()
        want = self._wanted_speed(driving, plan)
        step = layer.cfg.speed_step_mps
        speed_action = MetaAction.KEEP_LANE
        if want < 0.5 and plan.accel_mps2 < 0.0:
            speed_action = MetaAction.STOP
        elif want < layer.target_speed_mps - 0.5 * step:
            speed_action = MetaAction.SLOWER
        elif want > layer.target_speed_mps + 0.5 * step:
            speed_action = MetaAction.FASTER
        if plan.accel_mps2 < -1.0 and speed_action != MetaAction.KEEP_LANE:
            return speed_action  # braking comes first
        if plan.lane is not None and layer.target_lane is not None \
                and plan.lane != layer.target_lane:
            target = rm.lane(layer.target_lane)
            if plan.lane == target.left:
                return MetaAction.CHANGE_LEFT
            if plan.lane == target.right:
                return MetaAction.CHANGE_RIGHT
        return speed_action

    def _trajectory_action(self, driving: DrivingEnv, layer: TrajectoryWrapper,
                           plan: ExpertPlan) -> NDArray[np.float32]:
        rm = driving.road_map
        cfg = layer.cfg
        layer.sync_base_lane()
        offset_lanes = 0.0
        if rm is not None and layer.base_lane is not None and plan.lane is not None:
            base = rm.lane(layer.base_lane)
            if plan.lane in (base.left, base.right):
                # Centre of the wanted lane relative to the centre of the base lane.
                xy = np.array([driving.state.x, driving.state.y])
                s_b, d_base = base.project(xy)
                _, d_wanted = rm.lane(plan.lane).project(xy)
                offset_lanes = (d_base - d_wanted) / float(base.width_at(s_b))
        speed = self._wanted_speed(driving, plan)
        lo, hi = cfg.horizon_s
        # Lane changes over 3 s; otherwise the shortest horizon, to stay centred.
        horizon = 3.0 if offset_lanes != 0.0 else lo
        return np.clip(np.array([offset_lanes / cfg.max_offset_lanes,
                                 2.0 * speed / cfg.max_speed_mps - 1.0,
                                 2.0 * (horizon - lo) / max(hi - lo, 1e-9) - 1.0], np.float32),
                       -1.0, 1.0)


class RandomPolicy:
    """Uniformly random actions from the env's action space, from its own seeded RNG."""

    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self.rng = np.random.default_rng(seed)

    def reset(self, seed: int | None = None) -> None:
        """Re-seed the RNG when ``seed`` is given."""
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        """A uniform sample of the action space."""
        space = env.action_space
        if isinstance(space, gym.spaces.Discrete):
            return int(space.start + self.rng.integers(space.n))
        if isinstance(space, gym.spaces.Box):
            return self.rng.uniform(space.low, space.high).astype(space.dtype)
        raise TypeError(f"random policy: unsupported action space {space}")


class KeepLanePolicy:
    """Constant behaviour: stay in the current lane at the speed it starts with.

    ``behavior``: always ``keep_lane``. ``trajectory``: zero offset at the start speed.
    ``control``: tracks the current lane at the start speed with the same path tracker
    as the decision layers. It ignores other road users and signals.
    """

    name = "keep_lane"

    def __init__(self) -> None:
        self.speed_mps: float | None = None
        self.tracker: PathTracker | None = None

    def reset(self, seed: int | None = None) -> None:
        """Forget the start speed."""
        self.speed_mps = None
        self.tracker = None

    def act(self, obs: Any, env: gym.Env[Any, Any]) -> Any:
        """Keep the lane and the speed."""
        driving = _driving(env)
        if self.speed_mps is None:
            self.speed_mps = max(driving.state.speed_mps, 0.0)
        mode = _mode(env)
        if mode == "behavior":
            return int(MetaAction.KEEP_LANE)
        if mode == "trajectory":
            cfg = _layer(env, TrajectoryWrapper).cfg
            lo, hi = cfg.horizon_s
            return np.array([0.0, 2.0 * self.speed_mps / cfg.max_speed_mps - 1.0,
                             2.0 * (3.0 - lo) / max(hi - lo, 1e-9) - 1.0], np.float32)
        lp, rm = driving.lane_point, driving.road_map
        if lp is None or rm is None:
            return np.array([0.0, -0.5], np.float32)
        if self.tracker is None:
            self.tracker = PathTracker(driving.config.vehicle, driving.dt)
        spans = lanes_ahead(rm, lp.lane, lp.s, 60.0, driving.route)
        path = build_reference_path(rm, spans, lp.d, 0.0, 20.0, extend_m=60.0)
        return self.tracker.control(path, driving.state, self.speed_mps, 4.0)


#: Built-in policy names.
POLICY_NAMES = ("expert", "random", "keep_lane")


def make_policy(name: str, seed: int | None = None) -> Policy:
    """A built-in policy by name.

    Raises:
        ValueError: Unknown name (the message lists the valid ones).
    """
    factories: dict[str, Callable[[], Policy]] = {
        "expert": ExpertPolicy, "random": lambda: RandomPolicy(seed),
        "keep_lane": KeepLanePolicy}
    if name not in factories:
        raise ValueError(f"unknown policy {name!r}; valid: {', '.join(POLICY_NAMES)}")
    return factories[name]()
