"""Evaluation suites: which env, which seeds, which traffic and visual conditions.

A suite is a YAML file in ``configs/suites/`` (or any path) holding the fields of
:class:`SuiteConfig`::

    name: highway-test
    env_id: bulletdrive/Highway-v0
    action_mode: control
    split: test
    first_seed: 200000
    episodes: 20
    num_vehicles: 20
    visual: {time_of_day: day, corruption: fog, severity: 3}
    max_steps: 1000
    overrides: [traffic.aggressive_fraction=0.2]

Urban suites may also set ``num_pedestrians``.

Seeds are disjoint between splits BY CONSTRUCTION: every split owns a half-open range of
:data:`SPLIT_SEED_RANGES` and a suite whose episode seeds (or the map seeds they select,
see :meth:`SuiteConfig.map_seeds`) leave its split's range is rejected. Training code
should draw its seeds from the ``train`` range. :func:`check_disjoint` re-checks a set of
suites as a safety net.

The suite's env overrides (:meth:`SuiteConfig.env_overrides`) apply on top of the env's
embedded default configuration; :meth:`SuiteConfig.env_config` builds and validates it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.config import (
    CONFIG_DIR,
    ConfigError,
    load_config,
    parse_override,
    read_yaml,
    require,
    resolve_config_path,
)
from envs import ENV_IDS
from envs.sim.corruptions import CORRUPTIONS, SEVERITIES

if TYPE_CHECKING:
    from envs.config import EnvConfig

#: Dataset splits of evaluation seeds.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Half-open seed range ``[low, high)`` owned by each split; the ranges do not overlap.
SPLIT_SEED_RANGES: dict[str, tuple[int, int]] = {
    "train": (0, 100_000),
    "val": (100_000, 200_000),
    "test": (200_000, 300_000),
}

#: Valid ``visual.time_of_day`` values (those of ``envs.config.VisualConfig``).
TIMES_OF_DAY: tuple[str, ...] = ("day", "dusk", "night")

#: Valid ``action_mode`` values (those of ``envs.config.ACTION_MODES``; repeated here so
#: that loading a suite does not import the whole env configuration).
ACTION_MODES: tuple[str, ...] = ("control", "behavior", "trajectory")

#: The ``configs/`` sub-folder holding shipped suites.
SUITE_GROUP = "suites"

#: Env config keys that a suite sets through a dedicated field, by field.
_MANAGED_KEYS: dict[str, tuple[str, ...]] = {
    "num_vehicles": ("traffic.num_vehicles",),
    "num_pedestrians": ("pedestrians.num_pedestrians",),
    "action_mode": ("action.mode",),
    "max_steps": ("max_steps",),
    "visual.time_of_day": ("visual.time_of_day",),
    "visual.corruption": ("visual.corruption", "visual.corruption.name",
                          "visual.corruption.severity"),
}


@dataclass(frozen=True)
class VisualCondition:
    """Visual conditions of a suite's episodes.

    Attributes:
        time_of_day: ``day``, ``dusk`` or ``night``; null keeps the env's default.
        corruption: Camera image corruption (a name of ``envs.sim.corruptions.CORRUPTIONS``);
            null for clean frames (the env's default).
        severity: Corruption strength in 1..5.
    """

    time_of_day: str | None = None
    corruption: str | None = None
    severity: int = 1

    def __post_init__(self) -> None:
        require(self.time_of_day is None or self.time_of_day in TIMES_OF_DAY,
                f"config key 'visual.time_of_day' has invalid value {self.time_of_day!r}; "
                f"valid choices: null, {', '.join(TIMES_OF_DAY)}")
        require(self.corruption is None or self.corruption in CORRUPTIONS,
                f"config key 'visual.corruption' has invalid value {self.corruption!r}; "
                f"valid choices: null, {', '.join(CORRUPTIONS)}")
        require(not isinstance(self.severity, bool) and self.severity in SEVERITIES,
                f"config key 'visual.severity' must be one of "
                f"{', '.join(map(str, SEVERITIES))}, got {self.severity!r}")

    def env_overrides(self) -> list[str]:
        """Env overrides (``visual.*``) for these conditions; none for env defaults."""
        out = []
        if self.time_of_day is not None:
            out.append(f"visual.time_of_day={self.time_of_day}")
        if self.corruption is not None:
            out.append(f"visual.corruption.name={self.corruption}")
            out.append(f"visual.corruption.severity={self.severity}")
        return out


@dataclass(frozen=True)
class SuiteConfig:
    """An evaluation suite: env, seeds, traffic and visual conditions.

    Seeds are given either as an explicit ``seeds`` list or as ``episodes`` consecutive
    seeds from ``first_seed`` (default: the first seed of the split's range).

    Attributes:
        name: Suite name (defaults to the YAML file's stem when loaded from a file).
        description: Free text for reports.
        env_id: ``bulletdrive/Highway-v0`` or ``bulletdrive/Urban-v0`` (the short forms
            ``Highway-v0`` / ``Urban-v0`` are accepted and expanded).
        action_mode: The agent's action interface: ``control``, ``behavior`` or
            ``trajectory`` (env ``action.mode``; the runner applies the decision layer).
        split: ``train``, ``val`` or ``test``; all seeds must lie in its range of
            :data:`SPLIT_SEED_RANGES`.
        seeds: Explicit episode seeds (distinct).
        first_seed: First seed of a consecutive block (with ``episodes``).
        episodes: Number of consecutive seeds.
        num_vehicles: Traffic vehicles around the ego (env ``traffic.num_vehicles``);
            null keeps the env default.
        num_pedestrians: Pedestrians at crossings (env ``pedestrians.num_pedestrians``,
            ``Urban-v0`` only); null keeps the env default.
        visual: Time of day and camera corruption.
        max_steps: Episode step limit (env ``max_steps``); null keeps the env default.
        overrides: Further env overrides ``key.sub=value`` (applied last); keys set by the
            fields above may not be repeated here.
    """

    name: str = ""
    description: str = ""
    env_id: str = ""
    action_mode: str = "control"
    split: str = ""
    seeds: tuple[int, ...] | None = None
    first_seed: int | None = None
    episodes: int | None = None
    num_vehicles: int | None = None
    num_pedestrians: int | None = None
    visual: VisualCondition = field(default_factory=VisualCondition)
    max_steps: int | None = None
    overrides: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        require(bool(self.name), "suite key 'name' must be a non-empty string")
        env_id = self.env_id
        if env_id and not env_id.startswith("bulletdrive/"):
            env_id = f"bulletdrive/{env_id}"
            object.__setattr__(self, "env_id", env_id)  # frozen: normalise once, here
        require(env_id in ENV_IDS,
                f"suite '{self.name}': key 'env_id' has invalid value {self.env_id!r}; "
                f"valid choices: {', '.join(ENV_IDS)}")
        require(self.action_mode in ACTION_MODES,
                f"suite '{self.name}': key 'action_mode' has invalid value "
                f"{self.action_mode!r}; valid choices: {', '.join(ACTION_MODES)}")
        require(self.split in SPLITS,
                f"suite '{self.name}': key 'split' has invalid value {self.split!r}; "
                f"valid choices: {', '.join(SPLITS)}")
        self._check_seeds()
        require(self.num_vehicles is None or 0 <= self.num_vehicles <= 200,
                f"suite '{self.name}': num_vehicles must be null or in [0, 200], got "
                f"{self.num_vehicles}")
        require(self.num_pedestrians is None or 0 <= self.num_pedestrians <= 200,
                f"suite '{self.name}': num_pedestrians must be null or in [0, 200], got "
                f"{self.num_pedestrians}")
        require(self.num_pedestrians is None or env_id.endswith("Urban-v0"),
                f"suite '{self.name}': num_pedestrians applies to bulletdrive/Urban-v0 only "
                f"(env_id is {env_id})")
        require(self.max_steps is None or self.max_steps >= 1,
                f"suite '{self.name}': max_steps must be null or >= 1, got {self.max_steps}")
        self._check_overrides()

    # ------------------------------------------------------------------ validation
    def _check_seeds(self) -> None:
        low, high = SPLIT_SEED_RANGES[self.split]
        block = self.first_seed is not None or self.episodes is not None
        require(not (self.seeds is not None and block),
                f"suite '{self.name}': give either 'seeds' or 'first_seed' + 'episodes', "
                "not both")
        require(self.seeds is not None or self.episodes is not None,
                f"suite '{self.name}': give 'seeds' (a list) or 'episodes' (with optional "
                f"'first_seed', default {low})")
        if self.seeds is not None:
            require(len(self.seeds) > 0, f"suite '{self.name}': 'seeds' must not be empty")
            require(len(set(self.seeds)) == len(self.seeds),
                    f"suite '{self.name}': 'seeds' has duplicates")
        else:
            require(self.episodes is not None and self.episodes >= 1,
                    f"suite '{self.name}': 'episodes' must be >= 1, got {self.episodes}")
        seeds = self.episode_seeds()
        outside = [s for s in seeds if not low <= s < high]
        require(not outside,
                f"suite '{self.name}': seed(s) {_preview(outside)} outside the "
                f"'{self.split}' seed range [{low}, {high}); split seed ranges: "
                + ", ".join(f"{k} [{a}, {b})" for k, (a, b) in SPLIT_SEED_RANGES.items()))
        maps_outside = [m for m in self.map_seeds() if not low <= m < high]
        require(not maps_outside,
                f"suite '{self.name}': map seed(s) {_preview(maps_outside)} (from num_maps / "
                f"map_seed_offset overrides) outside the '{self.split}' seed range "
                f"[{low}, {high}), so maps could repeat across splits")

    def _check_overrides(self) -> None:
        keys = []
        for text in self.overrides:
            path, _ = parse_override(text)  # raises ConfigError on a malformed override
            keys.append(".".join(path))
        for fld, managed in _MANAGED_KEYS.items():
            value: Any = self
            for part in fld.split("."):
                value = getattr(value, part)
            if value is None:
                continue
            clash = [k for k in keys if any(k == m or k.startswith(m + ".") for m in managed)]
            require(not clash,
                    f"suite '{self.name}': override(s) {', '.join(clash)} repeat the suite "
                    f"field '{fld}'; set it in one place")

    # ------------------------------------------------------------------ derived values
    def episode_seeds(self) -> list[int]:
        """The episode seeds, in order."""
        if self.seeds is not None:
            return list(self.seeds)
        assert self.episodes is not None
        first = self.first_seed if self.first_seed is not None else SPLIT_SEED_RANGES[
            self.split][0]
        return list(range(first, first + self.episodes))

    def _override_int(self, key: str, default: int) -> int:
        value = default
        for text in self.overrides:
            path, parsed = parse_override(text)
            if ".".join(path) == key:
                require(isinstance(parsed, int) and not isinstance(parsed, bool),
                        f"suite '{self.name}': override {key} must be an integer, got "
                        f"{parsed!r}")
                value = int(parsed)
        return value

    def map_seeds(self) -> list[int]:
        """Map seed of each episode, as the env derives it (``envs.config.EnvConfig``:
        ``map_seed_offset + seed % num_maps``, or ``map_seed_offset + seed`` when
        ``num_maps`` is 0), from the suite's overrides and the defaults (0, 0)."""
        num_maps = self._override_int("num_maps", 0)
        offset = self._override_int("map_seed_offset", 0)
        return [offset + (s % num_maps if num_maps > 0 else s) for s in self.episode_seeds()]

    def env_overrides(self) -> list[str]:
        """Env config overrides ``key.sub=value`` for this suite (dedicated fields first,
        then ``overrides``).

        The action mode is not among them: :func:`planning.make.make_env` (or the
        evaluation runner) sets ``action.mode`` when it applies the decision layer.
        """
        out = []
        if self.num_vehicles is not None:
            out.append(f"traffic.num_vehicles={self.num_vehicles}")
        if self.num_pedestrians is not None:
            out.append(f"pedestrians.num_pedestrians={self.num_pedestrians}")
        if self.max_steps is not None:
            out.append(f"max_steps={self.max_steps}")
        out.extend(self.visual.env_overrides())
        out.extend(self.overrides)
        return out

    def env_config(self) -> EnvConfig:
        """The env's embedded default config with this suite's overrides and action mode,
        validated.

        Raises:
            ConfigError: If an override names an unknown key or has a bad value.
        """
        from envs.config import HighwayEnvConfig, UrbanEnvConfig, load_env_config

        cls = HighwayEnvConfig if self.env_id.endswith("Highway-v0") else UrbanEnvConfig
        try:
            return load_env_config(None, [*self.env_overrides(),
                                          f"action.mode={self.action_mode}"], cls)
        except ConfigError as exc:
            raise ConfigError(f"suite '{self.name}': env override rejected: {exc}") from None


def _preview(values: Sequence[int], limit: int = 5) -> str:
    shown = ", ".join(map(str, values[:limit]))
    return shown + (f" (+{len(values) - limit} more)" if len(values) > limit else "")


def list_suites() -> list[str]:
    """Names of the suites shipped in ``configs/suites/``."""
    return sorted(p.stem for p in (CONFIG_DIR / SUITE_GROUP).glob("*.yaml"))


def load_suite(name_or_path: str | Path, overrides: Sequence[str] = (),
               validate_env: bool = True) -> SuiteConfig:
    """Load a suite from ``configs/suites/<name>.yaml`` or a YAML path.

    Args:
        name_or_path: A shipped suite name (see :func:`list_suites`) or a YAML file.
        overrides: Suite overrides ``key=value`` (e.g. ``episodes=5``,
            ``visual.severity=2``), parsed as YAML.
        validate_env: Also build the env config with the suite's env overrides, so a
            bad override key fails here rather than when the first env is made.

    Returns:
        The validated suite; ``name`` defaults to the file's stem.

    Raises:
        ConfigError: Unknown suite, malformed YAML, unknown key (listing the valid keys),
            wrong type, bad env id / split / corruption (listing the valid choices), seeds
            outside the split's range.
    """
    path = resolve_config_path(name_or_path, SUITE_GROUP)
    data = read_yaml(path)
    data.setdefault("name", path.stem)
    try:
        suite = load_config(SuiteConfig, data, overrides)
    except ConfigError as exc:
        raise ConfigError(f"suite file '{path}': {exc}") from None
    if validate_env:
        suite.env_config()
    return suite


def check_disjoint(suites: Iterable[SuiteConfig]) -> None:
    """Raise if an episode seed or a map seed is used by suites of different splits.

    Raises:
        ConfigError: Naming the first clashing seeds, their suites and splits.
    """
    materialised = list(suites)  # iterated once per seed kind
    for kind in ("episode", "map"):
        owner: dict[int, tuple[str, str]] = {}
        clashes: list[str] = []
        for suite in materialised:
            seeds = suite.episode_seeds() if kind == "episode" else suite.map_seeds()
            for seed in seeds:
                prev = owner.setdefault(seed, (suite.split, suite.name))
                if prev[0] != suite.split:
                    clashes.append(f"{seed} ({prev[1]}: {prev[0]}, {suite.name}: "
                                   f"{suite.split})")
        if clashes:
            raise ConfigError(f"{kind} seeds shared between splits: {_preview_text(clashes)}")


def _preview_text(items: Sequence[str], limit: int = 5) -> str:
    shown = "; ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


__all__ = [
    "ACTION_MODES",
    "SPLITS",
    "SPLIT_SEED_RANGES",
    "TIMES_OF_DAY",
    "SuiteConfig",
    "VisualCondition",
    "check_disjoint",
    "list_suites",
    "load_suite",
]
