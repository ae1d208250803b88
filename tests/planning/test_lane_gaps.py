"""Lane gaps from the lidar in closed form: a vehicle placed ahead, beside or behind in a
known lane reads as the bumper-to-bumper gap in that lane's slot; the closing speed is
the lead's rear tracked from one scan to the next over the decision period; the wrapper
and the config check."""

from __future__ import annotations

from collections.abc import Iterator

import gymnasium as gym
import numpy as np
import pytest

import envs
from agents.config import load_train_config
from common.config import ConfigError
from envs.driving_env import DrivingEnv
from planning.lane_gaps import (
    FEATURES,
    PRESENCE_FEATURES,
    REAR_CLOSING_FEATURES,
    LaneGaps,
    LaneGapSensor,
    closing_speed,
    decision_period_s,
    lane_gaps,
    lanes_beside,
    rear_closing_speed,
)
from planning.make import make_env
from tests.planning.test_safety import QUIET, place_vehicle

#: A flat 1-degree lidar at bumper height, so that every car in range is hit.
LIDAR = ["sensors.lidar=true", "sensors.lidar_config.beams=360",
         "sensors.lidar_config.elevations_rad=[0.0]", "sensors.lidar_config.range_m=80.0",
         "sensors.lidar_config.mount_xyz_m=[0.0,0.0,0.3]"]


def scan(env: DrivingEnv) -> np.ndarray:
    st = env.state
    assert env.lidar is not None
    return env.lidar.scan(st.x, st.y, st.z, st.yaw)


@pytest.fixture(scope="module")
def env() -> Iterator[DrivingEnv]:
    e = envs.make("Highway-v0", overrides=[*QUIET, *LIDAR, "traffic.num_vehicles=1",
                                           "traffic.truck_fraction=0"])
    e.reset(seed=299_702, options={"start_lane": "main/f1", "start_s_m": 100.0})
    yield e
    e.close()


def expected_gap(env: DrivingEnv, centre_m: float) -> float:
    """Bumper-to-bumper gap to vehicle 0 whose centre is ``centre_m`` along the lane."""
    return centre_m - (env.config.vehicle.length_m + float(env.traffic.length[0])) / 2.0


def test_a_vehicle_ahead_in_the_ego_lane(env: DrivingEnv) -> None:
    place_vehicle(env, 30.0, 5.0)
    gaps = lane_gaps(env, scan(env))
    assert gaps[0] == pytest.approx(expected_gap(env, 30.0), abs=0.3)
    assert gaps[1] > 60.0  # nothing in the left lane ahead


def test_vehicles_in_the_neighbouring_lanes(env: DrivingEnv) -> None:
    place_vehicle(env, 20.0, 5.0, lane_offset=1)  # left lane, ahead
    gaps = lane_gaps(env, scan(env))
    assert gaps[1] == pytest.approx(expected_gap(env, 20.0), abs=0.3)
    assert gaps[0] > 60.0  # not in the ego's lane
    place_vehicle(env, -15.0, 5.0, lane_offset=-1)  # right lane, behind
    gaps = lane_gaps(env, scan(env))
    assert gaps[4] == pytest.approx(expected_gap(env, 15.0), abs=0.3)
    assert gaps[0] > 60.0 and gaps[2] > 60.0
    place_vehicle(env, 0.0, 5.0, lane_offset=1)  # beside the ego: no room ahead or behind
    gaps = lane_gaps(env, scan(env))
    assert gaps[1] == 0.0 and gaps[2] == 0.0


def test_nothing_in_range_reads_the_range(env: DrivingEnv) -> None:
    limit = env.config.sensors.lidar_config.range_m
    assert (lane_gaps(env, np.full(env.lidar.cfg.num_rays, limit, np.float32))  # type: ignore[union-attr]
            == limit).all()


def test_closing_speed_is_the_gap_change_over_the_period(env: DrivingEnv) -> None:
    sensor = LaneGapSensor(period_s=0.3)
    place_vehicle(env, 30.0, 5.0)
    first = sensor(env, scan(env))
    assert first[1] == 0.0  # nothing to compare with yet
    place_vehicle(env, 27.0, 5.0)
    second = sensor(env, scan(env))
    assert second[1] == pytest.approx((first[0] - second[0]) / 0.3, rel=1e-5)
    assert second[1] == pytest.approx(10.0, abs=1.0)
    sensor.reset()
    assert sensor(env, scan(env))[1] == 0.0


def test_rear_closing_speed_is_the_gap_behind_shrinking_over_the_period(
        env: DrivingEnv) -> None:
    sensor = LaneGapSensor(period_s=0.3, rear_closing=True)
    place_vehicle(env, -25.0, 5.0, lane_offset=1)  # left lane, behind
    first = sensor(env, scan(env))
    assert first.shape == (len(FEATURES) + len(REAR_CLOSING_FEATURES),)
    assert first[-2:].tolist() == [0.0, 0.0]  # nothing to compare with yet
    place_vehicle(env, -22.0, 5.0, lane_offset=1)  # 3 m nearer in 0.3 s: 10 m/s faster
    second = sensor(env, scan(env))
    assert second[3] == pytest.approx(expected_gap(env, 22.0), abs=0.3)
    assert second[-2] == pytest.approx((first[3] - second[3]) / 0.3, rel=1e-5)
    assert second[-2] == pytest.approx(10.0, abs=1.0)
    assert second[-1] == 0.0  # nothing behind on the right
    place_vehicle(env, -23.5, 5.0, lane_offset=1)  # falling back at 5 m/s
    assert sensor(env, scan(env))[-2] == pytest.approx(-5.0, abs=1.0)
    sensor.reset()
    place_vehicle(env, -15.0, 5.0, lane_offset=-1)  # right lane
    sensor(env, scan(env))
    place_vehicle(env, -14.4, 5.0, lane_offset=-1)
    now = sensor(env, scan(env))
    assert now[-2] == 0.0 and now[-1] == pytest.approx(2.0, abs=1.0)


def test_rear_closing_speed_tracks_the_front_of_the_car_behind() -> None:
    # Previous scan: the front of a car behind in the left lane at -20 m, a beam on its
    # side at -22 m; a car ahead in the same lane that must not be taken for it.
    previous = np.array([[-20.0, 3.5], [-22.0, 4.4], [15.0, 3.5]])
    # Now the nearest return is the side (a beam missed the front), the front is 1 m
    # nearer than before.
    points = np.array([[-19.2, 4.4], [-19.0, 3.4], [15.0, 3.5]])
    rear = points[0]
    assert rear_closing_speed(rear, points, previous, 0.5) == pytest.approx(2.0)
    assert rear_closing_speed(rear, points, None, 0.5) == 0.0  # first scan
    assert rear_closing_speed(None, points, previous, 0.5) == 0.0  # nothing behind
    # Falling back: its front was at -18 m.
    assert rear_closing_speed(rear, points, previous + [2.0, 0.0], 0.5) == pytest.approx(-2.0)


def test_a_lead_without_a_past_reads_no_closing_speed(env: DrivingEnv) -> None:
    sensor = LaneGapSensor(period_s=0.3)
    place_vehicle(env, 60.0, 5.0)
    sensor(env, scan(env))
    place_vehicle(env, 25.0, 5.0)  # 35 m nearer in 0.3 s: not the same car
    now = sensor(env, scan(env))
    assert now[0] == pytest.approx(expected_gap(env, 25.0), abs=0.3)
    assert now[1] == 0.0


def test_closing_speed_compares_the_rear_of_the_lead_on_both_scans() -> None:
    # Previous scan: the lead's rear at 50 m and a beam on its side further on; a car in
    # the next lane (3.5 m to the left) nearer still.
    previous = np.array([[50.0, 0.0], [52.5, 0.9], [45.0, 3.5]])
    # Now: the nearest return is the side (a beam missed the rear's centre), the rear is
    # 1 m nearer than before.
    points = np.array([[49.3, 0.9], [49.0, -0.4], [44.0, 3.5]])
    lead = points[0]
    assert closing_speed(lead, points, previous, 0.5) == pytest.approx((50.0 - 49.0) / 0.5)
    assert closing_speed(lead, points, None, 0.5) == 0.0  # first scan of an episode
    assert closing_speed(None, points, previous, 0.5) == 0.0  # no lead
    # Receding: the rear was at 48 m.
    assert closing_speed(lead, points, previous - [2.0, 0.0], 0.5) == pytest.approx(-2.0)


def test_wrapper_replaces_the_ranges_by_the_gaps() -> None:
    env = LaneGaps(make_env("Highway-v0", action_mode="behavior",
                            overrides=[*QUIET, *LIDAR]))
    try:
        obs, _ = env.reset(seed=3)
        assert isinstance(env.observation_space, gym.spaces.Dict)
        assert "lidar" not in obs and "lidar" not in env.observation_space.spaces
        assert obs["lane_gaps"].shape == (len(FEATURES),)
        assert env.observation_space.contains(obs)
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
    finally:
        env.close()
    kept = LaneGaps(make_env("Highway-v0", action_mode="behavior",
                             overrides=[*QUIET, *LIDAR]), keep_ranges=True)
    assert isinstance(kept.observation_space, gym.spaces.Dict)
    assert "lidar" in kept.observation_space.spaces
    kept.close()


def test_lane_presence_reads_the_neighbours_beside_the_ego_from_the_map() -> None:
    # Map of seed 299_702: four lanes f0 (leftmost) to f3, an acceleration lane right of
    # f3 from station 472 m to 722 m, fed by the on-ramp r0.
    env = envs.make("Highway-v0", overrides=[*QUIET, "traffic.num_vehicles=1"])
    try:
        for lane, s_m, expected in (("main/f0", 100.0, (0.0, 1.0)),
                                    ("main/f1", 100.0, (1.0, 1.0)),
                                    ("main/f3", 100.0, (1.0, 0.0)),  # before the merge lane
                                    ("main/f3", 522.0, (1.0, 1.0)),  # beside it
                                    ("main/f3", 900.0, (1.0, 0.0)),  # after it
                                    ("ramp/r0", 20.0, (0.0, 0.0))):  # on the ramp
            env.reset(seed=299_702, options={"start_lane": lane, "start_s_m": s_m})
            assert lanes_beside(env) == expected, (lane, s_m)
        acc = env.road_map.lane("main/acc")  # type: ignore[union-attr]
        assert (acc.station[0], acc.station[-1]) == (472.0, 722.0)
    finally:
        env.close()


def test_the_wrapper_appends_the_presence_on_request() -> None:
    env = LaneGaps(make_env("Highway-v0", action_mode="behavior", overrides=[*QUIET, *LIDAR]),
                   presence=True)
    try:
        obs, _ = env.reset(seed=299_702, options={"start_lane": "main/f0", "start_s_m": 100.0})
        assert obs["lane_gaps"].shape == (len(FEATURES) + len(PRESENCE_FEATURES),)
        assert env.observation_space.contains(obs)
        assert obs["lane_gaps"][-2:].tolist() == [0.0, 1.0]
        obs, *_ = env.step(0)
        assert env.observation_space.contains(obs)
    finally:
        env.close()
    with pytest.raises(ConfigError, match="lane_presence extends the lane gaps: set "
                                          "lane_gaps=true too"):
        load_train_config(overrides=["lane_presence=true"])


def test_the_wrapper_appends_the_rear_closing_speeds_after_the_presence() -> None:
    env = LaneGaps(make_env("Highway-v0", action_mode="behavior", overrides=[*QUIET, *LIDAR]),
                   presence=True, rear_closing=True)
    try:
        space = env.observation_space["lane_gaps"]  # type: ignore[index]
        width = len(FEATURES) + len(PRESENCE_FEATURES) + len(REAR_CLOSING_FEATURES)
        assert space.shape == (width,)
        assert space.high[-4:-2].tolist() == [1.0, 1.0]  # the presence flags
        assert space.low[-2:].tolist() == [-25.0, -25.0]
        assert space.high[-2:].tolist() == [25.0, 25.0]
        obs, _ = env.reset(seed=299_702, options={"start_lane": "main/f0", "start_s_m": 100.0})
        assert obs["lane_gaps"][-4:-2].tolist() == [0.0, 1.0]
        for _ in range(3):
            assert env.observation_space.contains(obs)
            obs, *_ = env.step(0)
    finally:
        env.close()
    with pytest.raises(ConfigError, match="lane_rear_closing extends the lane gaps: set "
                                          "lane_gaps=true too"):
        load_train_config(overrides=["lane_rear_closing=true"])


def test_without_the_lidar_is_a_clear_error() -> None:
    env = make_env("Highway-v0", action_mode="behavior", overrides=QUIET)
    with pytest.raises(ValueError, match="add sensors.lidar=true"):
        LaneGaps(env)
    env.close()
    with pytest.raises(ConfigError, match="lane_gaps needs the lidar"):
        load_train_config(overrides=["lane_gaps=true"])
    with pytest.raises(ConfigError, match="lane_gaps needs the lidar"):  # turned off again
        load_train_config(overrides=[
            "lane_gaps=true", "env_overrides=[sensors.lidar=true,sensors.lidar=false]"])
    cfg = load_train_config(overrides=["lane_gaps=true", "env_overrides=[sensors.lidar=True]"])
    assert cfg.lane_gaps


@pytest.mark.parametrize(("mode", "period_s"), [("behavior", 0.3), ("control", 0.1)])
def test_the_closing_speed_period_is_the_decision_period(mode: str, period_s: float) -> None:
    env = make_env("Highway-v0", action_mode=mode, overrides=QUIET)
    assert decision_period_s(env) == pytest.approx(period_s)
    env.close()
