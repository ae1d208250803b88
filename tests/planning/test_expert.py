"""The expert drives both envs along their routes without at-fault collisions (smoke)."""

from __future__ import annotations

import pytest

from envs.highway_env import HighwayEnv
from envs.urban_env import UrbanEnv
from planning.expert import Expert


@pytest.mark.parametrize(("cls", "seed"), [(HighwayEnv, 0), (HighwayEnv, 1), (UrbanEnv, 0),
                                           (UrbanEnv, 2)])
def test_expert_makes_safe_progress(cls: type, seed: int) -> None:
    env = cls(overrides=["sensors.camera=false", "max_steps=250"])
    expert = Expert()
    try:
        env.reset(seed=seed)
        for _ in range(250):
            _, _, term, trunc, info = env.step(expert.act(env))
            for event in info["events"]:
                assert not (event["type"] == "collision" and event["at_fault"]), event
                assert event["type"] not in ("off_road", "red_light", "wrong_way"), event
            if term or trunc:
                break
        assert info["route_progress_m"] > 30.0  # urban routes wait at red lights
    finally:
        env.close()
