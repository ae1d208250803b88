"""The driving world: maps, pybullet scene, vehicles, traffic, sensors and gymnasium envs.

Importing this package registers the envs under the ``bulletdrive/`` namespace:

>>> import gymnasium as gym, envs
>>> env = gym.make("bulletdrive/Highway-v0", action_mode="behavior")

A registered id is the world plus its action interface, so its entry point is
:func:`planning.make.make_env`, which applies the ``behavior`` / ``trajectory`` decision
layers. gymnasium imports it by name when an env is made; ``envs`` itself never imports
``planning``. :func:`make` builds the bare world (``control`` actions only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from gymnasium.envs.registration import register, registry

if TYPE_CHECKING:
    from envs.config import EnvConfig
    from envs.driving_env import DrivingEnv

ENV_IDS = ("bulletdrive/Highway-v0", "bulletdrive/Urban-v0")
_CLASSES = {"bulletdrive/Highway-v0": "envs.highway_env:HighwayEnv",
            "bulletdrive/Urban-v0": "envs.urban_env:UrbanEnv"}

for _env_id in _CLASSES:
    if _env_id not in registry:
        register(id=_env_id, entry_point="planning.make:make_env", kwargs={"env_id": _env_id})


def _env_class(env_id: str) -> type[DrivingEnv]:
    """The env class of an id (with or without ``bulletdrive/``), imported on demand."""
    import importlib

    short = env_id if env_id.startswith("bulletdrive/") else f"bulletdrive/{env_id}"
    if short not in ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; valid: {', '.join(ENV_IDS)}")
    module, cls = _CLASSES[short].split(":")
    found: type[DrivingEnv] = getattr(importlib.import_module(module), cls)
    return found


def config_class(env_id: str) -> type[EnvConfig]:
    """The config dataclass of a bulletdrive env id (with or without ``bulletdrive/``).

    Raises:
        ValueError: Unknown env id (the message lists the valid ones).
    """
    return _env_class(env_id).config_class


def make(env_id: str, **kwargs: object) -> DrivingEnv:
    """Create the bare world of a bulletdrive env by id (``control`` actions), with a
    clear error naming the valid ids.

    Keyword arguments go to the env (``config=``, ``overrides=``, ``render_mode=``).
    The env is created directly (not wrapped), so its attributes are at hand; use
    :func:`planning.make.make_env` for the other action modes.
    """
    env_cls: Any = _env_class(env_id)  # its keywords are checked by the env itself
    env: DrivingEnv = env_cls(**kwargs)
    return env
