"""Safety measures in closed form: the time to collision with the vehicle ahead, and the
gap and speeds the expert's IDM follows."""

from __future__ import annotations

import math

import pytest

import envs
from envs.driving_env import DrivingEnv
from envs.traffic.idm import FREE_ROAD_GAP_M
from planning.expert import Expert
from planning.safety import time_to_collision

QUIET = ["sensors.camera=false", "ramp_start_prob=0", "traffic.num_vehicles=6", "max_steps=24"]


def place_vehicle(env: DrivingEnv, ahead_m: float, speed: float, lane_offset: int = 0) -> None:
    """Put traffic vehicle 0 ``ahead_m`` ahead of the ego (on its lane, or a neighbour)."""
    lp = env.lane_point
    assert lp is not None and env.road_map is not None
    lane = env.road_map.lane(lp.lane)
    if lane_offset:
        other = lane.left if lane_offset > 0 else lane.right
        assert other is not None
        lane = env.road_map.lane(other)
    t = env.traffic
    t.active[:] = False
    t.active[0], t.lane[0] = True, env.road_map.lane_index[lane.id]
    t.s[0], t.v[0], t.d[0], t.d_rate[0] = lp.s + ahead_m, speed, 0.0, 0.0
    t._update_poses()


def test_time_to_collision_with_a_vehicle_ahead() -> None:
    env = envs.make("Highway-v0", overrides=[*QUIET, "traffic.num_vehicles=1"])
    try:
        env.reset(seed=299_702, options={"start_lane": "main/f1", "start_s_m": 100.0})
        st = env.state
        length = env.config.vehicle.length_m
        place_vehicle(env, 30.0, 5.0)
        ttc, nearest = time_to_collision(env)
        gap = 30.0 - (length + float(env.traffic.length[0])) / 2.0
        assert ttc == pytest.approx(gap / (st.speed_mps - 5.0), rel=2e-3)
        assert nearest == pytest.approx(30.0, abs=0.1)
        place_vehicle(env, 30.0, st.speed_mps + 1.0)  # pulling away
        assert time_to_collision(env)[0] == math.inf
        place_vehicle(env, 120.0, 0.0)  # beyond 100 m
        assert time_to_collision(env)[0] == math.inf
        place_vehicle(env, 30.0, 0.0, lane_offset=1)  # in the next lane: not on the path
        assert time_to_collision(env)[0] == math.inf
        place_vehicle(env, 3.0, 0.0)  # boxes overlap
        assert time_to_collision(env)[0] == 0.0
        env.traffic.active[:] = False
        assert time_to_collision(env) == (math.inf, math.inf)
    finally:
        env.close()


def test_the_expert_reports_what_it_brakes_for() -> None:
    env = envs.make("Highway-v0", overrides=[*QUIET, "traffic.num_vehicles=1"])
    expert = Expert()
    try:
        env.reset(seed=299_702, options={"start_lane": "main/f1", "start_s_m": 100.0})
        place_vehicle(env, 30.0, 5.0)
        plan = expert.plan(env)
        length = env.config.vehicle.length_m
        assert plan.gap_m == pytest.approx(30.0 - (length + float(env.traffic.length[0])) / 2,
                                           abs=1e-6)
        assert plan.lead_speed_mps == 5.0
        assert env.lane_point is not None and env.road_map is not None
        limit = env.road_map.lane(env.lane_point.lane).speed_limit_mps
        assert plan.desired_speed_mps == pytest.approx(expert.cfg.speed_factor * limit)
        assert plan.accel_mps2 < 0.0  # closing on a slow car 30 m ahead
        env.traffic.active[:] = False
        free = expert.plan(env)
        assert free.gap_m == FREE_ROAD_GAP_M and free.lead_speed_mps == 0.0
    finally:
        env.close()
