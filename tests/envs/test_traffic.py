"""Traffic: density around the ego, IDM following, MOBIL lane changes, respawning."""

from __future__ import annotations

import numpy as np
import pybullet as p
import pytest

from envs.maps.highway import HighwayMapConfig, generate_highway
from envs.traffic.idm import idm_equilibrium_gap
from envs.traffic.manager import EgoSlot, TrafficConfig, TrafficManager


@pytest.fixture
def client() -> int:
    c = p.connect(p.DIRECT)
    yield c
    p.disconnect(c)


def _manager(client: int, **kw: object) -> tuple[TrafficManager, int]:
    road, _ = generate_highway(HighwayMapConfig(), 1)
    cfg = TrafficConfig(**kw)  # type: ignore[arg-type]
    tm = TrafficManager(client, road, cfg, 0.1)
    lane = road.lane_index["main/f0"]
    return tm, lane


def test_spawn_keeps_density_and_gaps(client: int) -> None:
    tm, lane = _manager(client, num_vehicles=20)
    tm.reset(np.random.default_rng(0), lane, 300.0)
    assert tm.active.sum() >= 18
    for ln in np.unique(tm.lane[tm.active]):
        s = np.sort(tm.s[tm.active & (tm.lane == ln)])
        assert np.all(np.diff(s) >= tm.cfg.min_spawn_gap_m)
    # Bodies sit at their lane positions.
    i = int(np.flatnonzero(tm.active)[0])
    pos, _ = p.getBasePositionAndOrientation(tm.body_ids[i], physicsClientId=client)
    expect = tm.map.lanes[int(tm.lane[i])].position(tm.s[i], tm.d[i])
    assert np.allclose(pos[:2], expect)


def test_follower_converges_to_idm_equilibrium_gap(client: int) -> None:
    tm, lane = _manager(client, num_vehicles=2, opposite_fraction=0.0, ramp_fraction=0.0)
    tm.reset(np.random.default_rng(0), lane, 100.0)
    ego = EgoSlot(-1)
    # Leader at constant 20 m/s far ahead of a faster-wishing follower, same lane.
    tm.lane[:] = lane
    tm.active[:] = True
    tm.s[:] = [200.0, 150.0]
    tm.v[:] = [20.0, 20.0]
    tm.d[:] = 0.0
    tm.can_change[:] = False
    limit = tm.speed_limit[lane]
    tm.speed_factor[:] = [20.0 / limit, 30.0 / limit]
    # The leader drives exactly at its desired speed of 20 m/s.
    for _ in range(900):
        tm.step(ego)
        tm.timer[:] = 1e9
    gap = tm.s[0] - tm.s[1] - (tm.length[0] + tm.length[1]) / 2.0
    expect = idm_equilibrium_gap(20.0, 30.0, tm.headway[1], tm.cfg.idm.min_gap_m)
    assert abs(tm.v[1] - 20.0) < 0.05
    assert abs(gap - float(expect)) < 0.5


def test_slow_leader_triggers_lane_change(client: int) -> None:
    tm, lane = _manager(client, num_vehicles=2, opposite_fraction=0.0, ramp_fraction=0.0,
                        politeness=(0.0, 0.0))
    tm.reset(np.random.default_rng(0), lane, 100.0)
    f1 = tm.map.lane_index["main/f1"]
    tm.lane[:] = f1
    tm.active[:] = True
    tm.s[:] = [260.0, 200.0]
    tm.v[:] = [10.0, 28.0]
    tm.d[:] = 0.0
    limit = tm.speed_limit[f1]
    tm.speed_factor[:] = [10.0 / limit, 30.0 / limit]
    changed = False
    for _ in range(40):
        tm.step(EgoSlot(-1))
        changed |= tm.lane[1] != f1
    assert changed
    assert abs(tm.d[1]) < 0.5  # lateral move finished within a few seconds


def test_vehicles_are_recycled_around_the_ego(client: int) -> None:
    tm, lane = _manager(client, num_vehicles=10)
    tm.reset(np.random.default_rng(1), lane, 300.0)
    ego_lane = tm.map.lanes[lane]
    for k in range(300):  # the ego races ahead at 40 m/s
        s = 300.0 + 4.0 * k
        if s > ego_lane.length - 100:
            break
        tm.step(EgoSlot(lane, s, 40.0))
    st = tm.stations()
    ego_station = float(ego_lane.station_at(s))
    rel = st[tm.active] - ego_station
    assert tm.active.sum() >= 8
    assert np.all(rel > -tm.cfg.window_behind_m - 15) and np.all(rel < tm.cfg.window_ahead_m + 15)
