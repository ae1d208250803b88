"""Decision layers over the ``control`` action: the ``behavior`` and ``trajectory`` modes.

Each is a gymnasium wrapper around a :class:`envs.driving_env.DrivingEnv` (which always
takes ``[steer, accel]``). A decision is held for ``steps_per_decision`` control steps:
it is turned into a reference path (:mod:`planning.reference_path`) and a target speed,
tracked by :class:`planning.path_tracker.PathTracker`. The rewards of the control steps
are summed and their ``events`` concatenated in ``info["events"]``; ``info`` also gets
``control_steps`` and ``decision`` (what the layer is doing).

The ``behavior`` layer holds state a policy cannot see in the camera or the measurements
(its target speed and target lane), so its observations gain a ``decision`` vector;
without it, whether to press ``faster`` again is not a function of the observation.

Neither layer looks at other road users or signals: a policy that keeps choosing
``faster`` crashes, and one that never chooses ``stop`` runs red lights.
"""

from __future__ import annotations

import enum
import math
from typing import Any, cast

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from numpy.typing import NDArray

from envs.config import ACTION_MODES, BehaviorConfig, TrajectoryConfig
from envs.driving_env import DrivingEnv
from planning.path_tracker import PathTracker
from planning.reference_path import ReferencePath, build_reference_path, lanes_ahead, next_lane

#: Shortest lateral transition, so that slow driving does not give sharp paths [m].
MIN_TRANSITION_M = 8.0
#: Duration over which the layer re-centres on a lane when not changing lanes [s].
RECENTRE_S = 1.5
#: Path length beyond the transition and the decision's travel [m].
PATH_MARGIN_M = 40.0
#: Clip of the ``behavior`` observation's target-lane offset [m].
DECISION_OFFSET_CLIP_M = 10.0


class MetaAction(enum.IntEnum):
    """The ``behavior`` mode's discrete actions."""

    KEEP_LANE = 0
    CHANGE_LEFT = 1
    CHANGE_RIGHT = 2
    FASTER = 3
    SLOWER = 4
    STOP = 5


_META_NAMES = ", ".join(f"{m.value}={m.name.lower()}" for m in MetaAction)


class DecisionWrapper(gym.Wrapper[dict[str, NDArray[Any]], Any, dict[str, NDArray[Any]],
                                  NDArray[np.float32]]):
    """Common part: hold a decision for several control steps and track its path.

    Subclasses implement :meth:`decide` (validate the action, set :attr:`path`,
    :attr:`target_speed_mps` and :attr:`max_decel_mps2`) and :meth:`describe`.
    """

    def __init__(self, env: gym.Env[Any, Any], steps_per_decision: int) -> None:
        super().__init__(env)
        driving = env.unwrapped
        if not isinstance(driving, DrivingEnv):
            raise TypeError("action-mode wrappers need a bulletdrive DrivingEnv")
        self.driving: DrivingEnv = driving
        self.steps_per_decision = steps_per_decision
        self.tracker = PathTracker(driving.config.vehicle, driving.dt)
        self.path: ReferencePath | None = None
        self.target_speed_mps = 0.0
        self.max_decel_mps2 = 4.0

    # ------------------------------------------------------------------ hooks
    def decide(self, action: Any) -> None:
        """Turn ``action`` into :attr:`path` and :attr:`target_speed_mps`."""
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What the layer is doing, for ``info["decision"]``."""
        return {"target_speed_mps": self.target_speed_mps}

    def on_reset(self) -> None:
        """Initialise the decision state after a reset."""

    def observe(self, obs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """The layer's observation (default: the env's, unchanged)."""
        return obs

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[dict[str, NDArray[Any]], dict[str, Any]]:
        """Reset the env and the decision state."""
        obs, info = self.env.reset(seed=seed, options=options)
        self.tracker.reset()
        self.target_speed_mps = max(self.driving.state.speed_mps, 0.0)
        self.path = None
        self.on_reset()
        info = dict(info)
        info["decision"] = self.describe()
        return self.observe(obs), info

    def step(self, action: Any) -> tuple[dict[str, NDArray[Any]], float, bool, bool,
                                         dict[str, Any]]:
        """Apply one decision for up to ``steps_per_decision`` control steps."""
        self.decide(action)
        total = 0.0
        events: list[Any] = []
        obs: dict[str, NDArray[Any]] = {}
        info: dict[str, Any] = {}
        terminated = truncated = False
        done_steps = 0
        for done_steps in range(1, self.steps_per_decision + 1):  # noqa: B007
            if self.path is None:  # off every lane: brake
                control = np.array([0.0, -self.max_decel_mps2
                                    / self.driving.config.vehicle.max_brake_mps2], np.float32)
            else:
                control = self.tracker.control(self.path, self.driving.state,
                                               self.target_speed_mps, self.max_decel_mps2)
            obs, reward, terminated, truncated, info = self.env.step(control)
            total += float(reward)
            events.extend(info["events"])
            if terminated or truncated:
                break
        info = dict(info)
        info["events"] = events
        info["control_steps"] = done_steps
        info["decision"] = self.describe()
        return self.observe(obs), total, terminated, truncated, info

    # ------------------------------------------------------------------ helpers
    def ego_relative_to(self, lane_id: str) -> tuple[float, float, float]:
        """Arc length [m], lateral offset [m] and lateral slope [-] of the ego on a lane."""
        st = self.driving.state
        rm = self.driving.road_map
        assert rm is not None
        lane = rm.lane(lane_id)
        s, d = lane.project(np.array([st.x, st.y]))
        err = float(np.angle(np.exp(1j * (st.yaw - float(lane.heading_at(s))))))
        return s, d, math.tan(float(np.clip(err, -0.6, 0.6)))

    def carry_lane(self, lane_id: str | None) -> str | None:
        """Carry a lane the layer follows past lane ends (along the route at forks), and
        re-anchor it on the ego's lane when the ego has left it for good (for example on
        a different connector through a junction)."""
        rm = self.driving.road_map
        assert rm is not None
        lp = self.driving.lane_point
        if lane_id is None:
            return None if lp is None else lp.lane
        d = 0.0
        for _ in range(8):
            lane = rm.lane(lane_id)
            s, d, _ = self.ego_relative_to(lane.id)
            if s < lane.length - 0.1 or not lane.successors:
                break
            lane_id = next_lane(rm, lane, self.driving.route)
        if lp is not None and abs(d) > 2.2 * float(rm.lane(lp.lane).width_at(lp.s)):
            return lp.lane
        return lane_id

    def path_on(self, lane_id: str, d1: float, transition_m: float) -> ReferencePath:
        """Path from the ego along ``lane_id`` (and the lanes after it) to offset ``d1``."""
        rm = self.driving.road_map
        assert rm is not None
        s, d0, slope0 = self.ego_relative_to(lane_id)
        speed = max(self.driving.state.speed_mps, 0.0)
        travel = speed * self.driving.dt * self.steps_per_decision
        needed = transition_m + travel + PATH_MARGIN_M
        spans = lanes_ahead(rm, lane_id, s, needed, self.driving.route)
        covered = sum(sp.s_to - sp.s_from for sp in spans)
        # Past the end of a lane without successors, go on straight: the path must still
        # have a look-ahead point (the ego then leaves the road, as it should).
        return build_reference_path(rm, spans, d0, d1, transition_m, slope0,
                                    extend_m=max(needed - covered, 0.0) + 5.0)


class BehaviorWrapper(DecisionWrapper):
    """``behavior`` mode: ``Discrete(6)`` meta-actions (see :class:`MetaAction`).

    Observations gain ``decision``: float32 (3,) = target speed [m/s], lateral position
    of the target lane's centre relative to the ego (left positive, clipped to
    +-``DECISION_OFFSET_CLIP_M``) [m], time left in the current lane change [s].

    ``change_left`` / ``change_right`` move the target lane to the neighbour (if there is
    none the action keeps the lane), completing the move over ``lane_change_s``;
    ``faster`` / ``slower`` change the target speed by ``speed_step_mps``; ``stop`` sets
    it to zero. The target lane follows the route at forks.

    Args:
        env: A bulletdrive env (or a wrapper of one).
        cfg: Mode settings; defaults to the env's ``action.behavior``.
    """

    def __init__(self, env: gym.Env[Any, Any], cfg: BehaviorConfig | None = None) -> None:
        driving = env.unwrapped
        assert isinstance(driving, DrivingEnv)
        self.cfg = cfg or driving.config.action.behavior
        super().__init__(env, self.cfg.steps_per_decision)
        self.action_space = spaces.Discrete(len(MetaAction))
        self.max_decel_mps2 = self.cfg.max_decel_mps2
        self.target_lane: str | None = None
        self.change_end_s = 0.0
        self.last_action = MetaAction.KEEP_LANE
        assert isinstance(env.observation_space, spaces.Dict)
        self.decision_space = spaces.Box(
            np.array([0.0, -DECISION_OFFSET_CLIP_M, 0.0], np.float32),
            np.array([self.cfg.max_speed_mps, DECISION_OFFSET_CLIP_M, self.cfg.lane_change_s],
                     np.float32), dtype=np.float32)
        self.observation_space = cast(
            spaces.Space[dict[str, NDArray[Any]]],
            spaces.Dict({**env.observation_space.spaces, "decision": self.decision_space}))

    def observe(self, obs: dict[str, NDArray[Any]]) -> dict[str, NDArray[Any]]:
        """Add the ``decision`` vector (see the class docstring)."""
        offset = 0.0
        lane = self.carry_lane(self.target_lane)  # where the next decide() will look
        if lane is not None:
            offset = -self.ego_relative_to(lane)[1]
        left = max(self.change_end_s - self.driving.sim_time_s, 0.0)
        vec = np.array([self.target_speed_mps, offset, left], np.float32)
        space = self.decision_space
        return {**obs, "decision": np.clip(vec, space.low, space.high)}

    def on_reset(self) -> None:
        """Start in the ego's lane at its speed."""
        lp = self.driving.lane_point
        self.target_lane = None if lp is None else lp.lane
        self.change_end_s = 0.0
        self.last_action = MetaAction.KEEP_LANE

    def describe(self) -> dict[str, Any]:
        """Target lane and speed, and the last meta-action."""
        return {"target_lane": self.target_lane, "target_speed_mps": self.target_speed_mps,
                "action": self.last_action.name.lower()}

    @staticmethod
    def parse(action: Any) -> MetaAction:
        """Check a ``behavior`` action and return it as a :class:`MetaAction`.

        Raises:
            ValueError: Not a single integer in ``0..5``.
        """
        arr = np.asarray(action)
        if arr.size != 1 or arr.dtype.kind not in "iuf" or not np.isfinite(arr).all() \
                or float(arr.reshape(-1)[0]) != int(arr.reshape(-1)[0]) \
                or not 0 <= int(arr.reshape(-1)[0]) < len(MetaAction):
            raise ValueError(f"behavior action must be one integer in 0..{len(MetaAction) - 1} "
                             f"({_META_NAMES}), got {action!r}")
        return MetaAction(int(arr.reshape(-1)[0]))

    def sync_target_lane(self) -> None:
        """Carry the target lane along (see :meth:`DecisionWrapper.carry_lane`)."""
        self.target_lane = self.carry_lane(self.target_lane)

    def decide(self, action: Any) -> None:
        """Apply a meta-action to the target lane and speed and plan the path."""
        meta = self.parse(action)
        self.last_action = meta
        self.sync_target_lane()
        rm = self.driving.road_map
        assert rm is not None
        now = self.driving.sim_time_s
        if self.target_lane is not None and meta in (MetaAction.CHANGE_LEFT,
                                                     MetaAction.CHANGE_RIGHT):
            lane = rm.lane(self.target_lane)
            neighbour = lane.left if meta == MetaAction.CHANGE_LEFT else lane.right
            if neighbour is not None:
                self.target_lane = neighbour
                self.change_end_s = now + self.cfg.lane_change_s
        elif meta == MetaAction.FASTER:
            self.target_speed_mps = min(self.target_speed_mps + self.cfg.speed_step_mps,
                                        self.cfg.max_speed_mps)
        elif meta == MetaAction.SLOWER:
            self.target_speed_mps = max(self.target_speed_mps - self.cfg.speed_step_mps, 0.0)
        elif meta == MetaAction.STOP:
            self.target_speed_mps = 0.0
        if self.target_lane is None:
            self.path = None
            return
        speed = max(self.driving.state.speed_mps, 3.0)
        duration = max(self.change_end_s - now, RECENTRE_S)
        self.path = self.path_on(self.target_lane, 0.0, max(speed * duration, MIN_TRANSITION_M))


class TrajectoryWrapper(DecisionWrapper):
    """``trajectory`` mode: ``Box([-1, 1]^3)`` = (lateral offset, target speed, horizon).

    The offset (times ``max_offset_lanes`` lane widths, left positive) is relative to the
    centre of the lane the ego is in (the layer follows that lane through junctions
    along the route, and moves to a neighbour once the ego is in it); the path reaches
    it with a quintic transition over the horizon (``horizon_s`` range) at the current
    speed, and is replanned at every decision. The target speed spans
    ``[0, max_speed_mps]``. Out-of-range values are clipped; NaN or inf raise
    ``ValueError``.

    Args:
        env: A bulletdrive env (or a wrapper of one).
        cfg: Mode settings; defaults to the env's ``action.trajectory``.
    """

    def __init__(self, env: gym.Env[Any, Any], cfg: TrajectoryConfig | None = None) -> None:
        driving = env.unwrapped
        assert isinstance(driving, DrivingEnv)
        self.cfg = cfg or driving.config.action.trajectory
        super().__init__(env, self.cfg.steps_per_decision)
        self.action_space = spaces.Box(-1.0, 1.0, shape=(3,),
                                       dtype=np.float32)
        self.max_decel_mps2 = driving.config.action.behavior.max_decel_mps2
        self.offset_m = 0.0
        self.horizon_s = 0.0
        self.base_lane: str | None = None

    def on_reset(self) -> None:
        """Start relative to the ego's lane."""
        lp = self.driving.lane_point
        self.base_lane = None if lp is None else lp.lane

    def sync_base_lane(self) -> None:
        """Follow the base lane along and onto a neighbour the ego has moved into."""
        self.base_lane = self.carry_lane(self.base_lane)
        lp, rm = self.driving.lane_point, self.driving.road_map
        if self.base_lane is None or lp is None or rm is None:
            return
        base = rm.lane(self.base_lane)
        if lp.lane in (base.left, base.right):
            self.base_lane = lp.lane

    def scale(self, action: Any) -> tuple[float, float, float]:
        """Check and scale an action to (offset [lanes], speed [m/s], horizon [s])."""
        act = np.asarray(action, dtype=np.float64).reshape(-1)
        if act.shape != (3,) or not np.all(np.isfinite(act)):
            raise ValueError(f"trajectory action must be 3 finite values [lateral offset, "
                             f"target speed, horizon] in [-1, 1], got {action!r}")
        a = np.clip(act, -1.0, 1.0)
        lo, hi = self.cfg.horizon_s
        return (float(a[0]) * self.cfg.max_offset_lanes,
                (float(a[1]) + 1.0) / 2.0 * self.cfg.max_speed_mps,
                lo + (float(a[2]) + 1.0) / 2.0 * (hi - lo))

    def describe(self) -> dict[str, Any]:
        """Target offset, speed and horizon."""
        return {"base_lane": self.base_lane, "offset_m": self.offset_m,
                "target_speed_mps": self.target_speed_mps, "horizon_s": self.horizon_s}

    def decide(self, action: Any) -> None:
        """Plan the path to the requested offset."""
        offset_lanes, self.target_speed_mps, self.horizon_s = self.scale(action)
        self.sync_base_lane()
        rm = self.driving.road_map
        if self.base_lane is None or rm is None:
            self.path = None
            return
        s, _, _ = self.ego_relative_to(self.base_lane)
        self.offset_m = offset_lanes * float(rm.lane(self.base_lane).width_at(s))
        speed = max(self.driving.state.speed_mps, 3.0)
        self.path = self.path_on(self.base_lane, self.offset_m,
                                 max(speed * self.horizon_s, MIN_TRANSITION_M))


def wrap_action_mode(env: gym.Env[Any, Any], mode: str | None = None) -> gym.Env[Any, Any]:
    """Put the decision layer for ``mode`` (default: the env's ``action.mode``) on ``env``.

    ``control`` returns ``env`` unchanged.

    Raises:
        ValueError: Unknown mode (the message lists the valid ones).
    """
    driving = env.unwrapped
    if not isinstance(driving, DrivingEnv):
        raise TypeError("wrap_action_mode needs a bulletdrive DrivingEnv")
    mode = mode or driving.config.action.mode
    if mode == "control":
        return env
    if mode == "behavior":
        return BehaviorWrapper(env)
    if mode == "trajectory":
        return TrajectoryWrapper(env)
    raise ValueError(f"unknown action mode {mode!r}; valid: {', '.join(ACTION_MODES)}")
