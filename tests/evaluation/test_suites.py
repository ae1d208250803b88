"""Evaluation suites: shipped YAML, seeds per split, disjointness, malformed input."""

from __future__ import annotations

import itertools
import typing
from pathlib import Path

import pytest

from common.config import ConfigError, from_dict
from evaluation.suites import (
    ACTION_MODES,
    SPLIT_SEED_RANGES,
    TIMES_OF_DAY,
    SuiteConfig,
    check_disjoint,
    list_suites,
    load_suite,
)

SHIPPED = ("highway-test", "urban-test", "urban-night-fog", "highway-val", "highway-merge-val",
           "smoke", "demo")


def suite(**fields: object) -> SuiteConfig:
    data: dict[str, object] = {"name": "s", "env_id": "bulletdrive/Highway-v0",
                               "split": "test", "episodes": 3}
    data.update(fields)
    return from_dict(SuiteConfig, data)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "my_suite.yaml"
    path.write_text(text)
    return path


def test_shipped_suites_load_and_are_disjoint() -> None:
    assert set(SHIPPED) == set(list_suites())
    suites = {name: load_suite(name) for name in SHIPPED}
    for name, s in suites.items():
        assert s.name == name
        assert s.action_mode == ("behavior" if name == "demo" else "control")
        low, high = SPLIT_SEED_RANGES[s.split]
        seeds = s.episode_seeds()
        assert len(seeds) == {"smoke": 2, "demo": 4, "highway-merge-val": 30}.get(name, 20)
        assert all(low <= x < high for x in seeds)
    check_disjoint(suites.values())
    fog = suites["urban-night-fog"]
    assert fog.split == "test" and fog.env_id == "bulletdrive/Urban-v0"
    assert {"visual.time_of_day=night", "visual.corruption.name=fog"} <= set(
        fog.env_overrides())
    assert fog.episode_seeds() == suites["urban-test"].episode_seeds()
    assert suites["urban-test"].num_pedestrians == 10
    assert "pedestrians.num_pedestrians=10" in suites["urban-test"].env_overrides()
    assert suites["highway-val"].split == "val"
    merge = suites["highway-merge-val"]
    assert merge.split == "val" and "ramp_start_prob=1.0" in merge.env_overrides()
    smoke = suites["smoke"]
    assert (smoke.env_id, smoke.split, smoke.max_steps) == ("bulletdrive/Highway-v0", "test", 60)
    others = {x for n, s in suites.items() if n != "smoke" for x in s.episode_seeds()}
    assert not others & set(smoke.episode_seeds())  # seeds of its own


def test_action_mode_and_pedestrians() -> None:
    from envs.config import ACTION_MODES as ENV_ACTION_MODES

    assert ENV_ACTION_MODES == ACTION_MODES
    s = suite(env_id="Urban-v0", action_mode="behavior", num_pedestrians=4)
    assert s.env_overrides() == ["pedestrians.num_pedestrians=4"]
    cfg = s.env_config()
    assert cfg.action.mode == "behavior" and cfg.pedestrians.num_pedestrians == 4
    with pytest.raises(ConfigError, match="'action_mode' has invalid value 'steering'; valid "
                                          "choices: control, behavior, trajectory"):
        suite(action_mode="steering")
    with pytest.raises(ConfigError, match="num_pedestrians applies to bulletdrive/Urban-v0 only"):
        suite(num_pedestrians=3)
    with pytest.raises(ConfigError, match=r"num_pedestrians must be null or in \[0, 200\]"):
        suite(env_id="Urban-v0", num_pedestrians=-1)
    with pytest.raises(ConfigError, match="repeat the suite field 'action_mode'"):
        suite(overrides=["action.mode=behavior"])
    with pytest.raises(ConfigError, match="repeat the suite field 'num_pedestrians'"):
        suite(env_id="Urban-v0", num_pedestrians=2, overrides=["pedestrians.num_pedestrians=3"])
    assert load_suite("smoke", ["action_mode=trajectory"]).action_mode == "trajectory"


def test_env_overrides_reach_the_env_config() -> None:
    s = suite(num_vehicles=5, max_steps=50, visual={"time_of_day": "night",
                                                    "corruption": "rain", "severity": 4},
              overrides=["traffic.aggressive_fraction=0.3"])
    assert s.env_overrides() == [
        "traffic.num_vehicles=5", "max_steps=50", "visual.time_of_day=night",
        "visual.corruption.name=rain", "visual.corruption.severity=4",
        "traffic.aggressive_fraction=0.3"]
    cfg = s.env_config()
    assert cfg.traffic.num_vehicles == 5 and cfg.max_steps == 50
    assert cfg.visual.time_of_day == "night"
    assert (cfg.visual.corruption.name, cfg.visual.corruption.severity) == ("rain", 4)
    assert cfg.traffic.aggressive_fraction == 0.3
    assert suite().env_overrides() == []  # env defaults untouched


def test_every_merge_suite_episode_starts_on_the_on_ramp() -> None:
    import envs

    merge = load_suite("highway-merge-val")
    env = envs.make(merge.env_id, overrides=[*merge.env_overrides(), "sensors.camera=false",
                                             "traffic.num_vehicles=1"])
    try:
        for seed in merge.episode_seeds()[:5]:
            env.reset(seed=seed)
            assert env.unwrapped.lane_point.lane.startswith("ramp/"), seed
    finally:
        env.close()


def test_split_ranges_are_disjoint() -> None:
    ranges = sorted(SPLIT_SEED_RANGES.values())
    assert all(a[1] <= b[0] for a, b in itertools.pairwise(ranges))
    assert set(SPLIT_SEED_RANGES) == {"train", "val", "test"}


def test_episode_seeds() -> None:
    assert suite().episode_seeds() == [200_000, 200_001, 200_002]  # default: range start
    assert suite(first_seed=250_000, episodes=2).episode_seeds() == [250_000, 250_001]
    assert suite(episodes=None, seeds=[200_005, 200_001]).episode_seeds() == [200_005, 200_001]
    assert suite(split="train", episodes=2).episode_seeds() == [0, 1]


@pytest.mark.parametrize(("fields", "message"), [
    ({"first_seed": 5}, r"outside the 'test' seed range \[200000, 300000\)"),
    ({"split": "val", "first_seed": 199_999, "episodes": 2}, "200000 outside the 'val'"),
    ({"episodes": None, "seeds": [200_001, 200_001]}, "duplicates"),
    ({"seeds": [200_001]}, "not both"),
    ({"episodes": None}, "give 'seeds'"),
    ({"episodes": 0}, ">= 1"),
    ({"overrides": ["num_maps=10"]}, "map seed"),
])
def test_bad_seeds(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        suite(**fields)


def test_map_seeds_follow_the_env_rule() -> None:
    s = suite(episodes=12, overrides=["num_maps=5", "map_seed_offset=200000"])
    assert s.map_seeds()[:6] == [200_000, 200_001, 200_002, 200_003, 200_004, 200_000]
    assert suite().map_seeds() == suite().episode_seeds()


def test_check_disjoint_catches_shared_seeds(monkeypatch: pytest.MonkeyPatch) -> None:
    # Seeds cannot clash across splits by construction, so overlap the ranges here.
    monkeypatch.setitem(SPLIT_SEED_RANGES, "val", (0, 300_000))
    val = suite(name="v", split="val", first_seed=200_001, episodes=3)
    test = suite(name="t")
    with pytest.raises(ConfigError, match=r"episode seeds shared between splits: 200001 "
                                          r"\(t: test, v: val\)"):
        check_disjoint([test, val])
    check_disjoint([test, suite(name="t2")])  # the same split may share seeds


@pytest.mark.parametrize(("text", "message"), [
    ("env_id: bulletdrive/Highway-v0\nsplit: test\nepisodes: 2\ncolour: red\n",
     "unknown config key 'colour'; valid keys: action_mode, description, env_id"),
    ("env_id: bulletdrive/Highway-v0\nsplit: test\nepisodes: ten\n",
     "config key 'episodes' must be int or null, got 'ten'"),
    ("env_id: Racing-v0\nsplit: test\nepisodes: 2\n",
     "valid choices: bulletdrive/Highway-v0, bulletdrive/Urban-v0"),
    ("split: test\nepisodes: 2\n", "key 'env_id' has invalid value ''"),
    ("env_id: Highway-v0\nsplit: holdout\nepisodes: 2\n", "valid choices: train, val, test"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\nvisual: {corruption: snow}\n",
     "'snow'; valid choices: null, gaussian_noise, motion_blur, fog"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\nvisual: {corruption: fog, severity: 9}\n",
     "must be one of 1, 2, 3, 4, 5"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\nvisual: {time_of_day: noon}\n",
     "valid choices: null, day, dusk, night"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\nnum_vehicles: 3\n"
     "overrides: [traffic.num_vehicles=4]\n", "repeat the suite field 'num_vehicles'"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\noverrides: [traffic.bogus=1]\n",
     "unknown config key 'traffic.bogus'"),
    ("env_id: Highway-v0\nsplit: test\nepisodes: 2\noverrides: [nonsense]\n",
     "must have the form key.sub=value"),
    ("env_id: [unclosed\n", "not valid YAML"),
    ("- a list\n", "mapping at the top level"),
])
def test_malformed_suite_yaml(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_suite(write(tmp_path, text))


def test_load_suite_from_path_with_overrides(tmp_path: Path) -> None:
    path = write(tmp_path, "env_id: Urban-v0\nsplit: val\nepisodes: 4\n")
    s = load_suite(path, overrides=["episodes=2", "visual.corruption=low_light"])
    assert s.name == "my_suite" and s.env_id == "bulletdrive/Urban-v0"
    assert s.episode_seeds() == [100_000, 100_001]
    assert s.visual.corruption == "low_light"


def test_unknown_suite_name_lists_shipped() -> None:
    with pytest.raises(ConfigError, match="valid names: .*highway-test"):
        load_suite("no_such_suite")


def test_times_of_day_match_the_env() -> None:
    from envs.config import VisualConfig

    hint = typing.get_type_hints(VisualConfig)["time_of_day"]
    assert tuple(typing.get_args(hint)) == TIMES_OF_DAY
