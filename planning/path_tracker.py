"""Track a reference path at a target speed: pure pursuit for steering, PID for speed.

This is the executor under the ``behavior`` and ``trajectory`` action modes. It does
not look at other road users: avoiding them is the decision layer's job.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import NDArray

from common.config import require
from envs.sim.vehicle import VehicleConfig, VehicleState
from planning.controllers import PIDGains, PIDState, pid_step, pure_pursuit_steer
from planning.reference_path import ReferencePath


@dataclass(frozen=True)
class TrackerConfig:
    """Path-tracking gains.

    Attributes:
        lookahead_s: Pure-pursuit look-ahead time [s].
        min_lookahead_m: Shortest look-ahead distance [m].
        speed_pid: PID from speed error [m/s] to acceleration [m/s^2].
        max_accel_mps2: Largest acceleration commanded [m/s^2].
    """

    lookahead_s: float = 0.8
    min_lookahead_m: float = 6.0
    speed_pid: PIDGains = field(default_factory=lambda: PIDGains(
        kp=1.2, ki=0.1, kd=0.0, out_min=-8.0, out_max=3.0))
    max_accel_mps2: float = 2.5

    def __post_init__(self) -> None:
        require(self.lookahead_s >= 0 and self.min_lookahead_m > 0,
                "tracker look-ahead must be positive")


class PathTracker:
    """Stateful wrapper around the pure functions (keeps the PID memory).

    Args:
        vehicle: The ego's vehicle config (wheelbase, steering and pedal limits).
        cfg: Gains.
        dt: Control period [s].
    """

    def __init__(self, vehicle: VehicleConfig, dt: float,
                 cfg: TrackerConfig | None = None) -> None:
        self.vehicle = vehicle
        self.cfg = cfg or TrackerConfig()
        self.dt = dt
        self.pid = PIDState()

    def reset(self) -> None:
        """Forget the PID memory (new episode)."""
        self.pid = PIDState()

    def control(self, path: ReferencePath, state: VehicleState, target_speed_mps: float,
                max_decel_mps2: float) -> NDArray[np.float32]:
        """The ``[steer, accel]`` command in [-1, 1] for one control period.

        Args:
            path: Path to follow.
            state: Ego state.
            target_speed_mps: Speed to hold [m/s].
            max_decel_mps2: Largest deceleration to use on the way [m/s^2].
        """
        v = self.vehicle
        speed = max(state.speed_mps, 0.0)
        rear = np.array([state.x - math.cos(state.yaw) * v.wheelbase_m / 2.0,
                         state.y - math.sin(state.yaw) * v.wheelbase_m / 2.0])
        s_rear, _ = path.project(rear)
        lookahead = max(self.cfg.min_lookahead_m, self.cfg.lookahead_s * speed)
        tx, ty = path.position(s_rear + lookahead)
        c, s = math.cos(state.yaw), math.sin(state.yaw)
        lx = c * (tx - rear[0]) + s * (ty - rear[1])
        ly = -s * (tx - rear[0]) + c * (ty - rear[1])
        steer = pure_pursuit_steer(lx, ly, v.wheelbase_m) / v.max_steer_rad
        gains = self.cfg.speed_pid
        accel, self.pid = pid_step(gains, self.pid, target_speed_mps - speed, self.dt)
        accel = min(max(accel, -max_decel_mps2), self.cfg.max_accel_mps2)
        if target_speed_mps <= 0.0 and speed < 0.3:
            accel = -max_decel_mps2  # hold the car still
        cmd = accel / (v.max_accel_mps2 if accel > 0 else v.max_brake_mps2)
        return np.clip(np.array([steer, cmd], np.float32), -1.0, 1.0)
