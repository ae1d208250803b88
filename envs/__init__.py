"""The driving world: maps, pybullet scene, vehicles, traffic, sensors and gymnasium envs.

Importing this package registers the envs under the ``bulletdrive/`` namespace:

>>> import gymnasium as gym, envs
>>> env = gym.make("bulletdrive/Highway-v0")
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gymnasium.envs.registration import register, registry

if TYPE_CHECKING:
    from envs.driving_env import DrivingEnv

ENV_IDS = ("bulletdrive/Highway-v0", "bulletdrive/Urban-v0")
_ENTRY_POINTS = {"bulletdrive/Highway-v0": "envs.highway_env:HighwayEnv",
                 "bulletdrive/Urban-v0": "envs.urban_env:UrbanEnv"}

for _env_id, _entry in _ENTRY_POINTS.items():
    if _env_id not in registry:
        register(id=_env_id, entry_point=_entry)


def make(env_id: str, **kwargs: object) -> DrivingEnv:
    """Create a bulletdrive env by id, with a clear error naming the valid ids.

    Keyword arguments go to the env (``config=``, ``overrides=``, ``render_mode=``).
    The env is created directly (not wrapped), so its attributes are at hand.
    """
    import importlib

    short = env_id if env_id.startswith("bulletdrive/") else f"bulletdrive/{env_id}"
    if short not in ENV_IDS:
        raise ValueError(f"unknown env id {env_id!r}; valid: {', '.join(ENV_IDS)}")
    module, cls = str(registry[short].entry_point).split(":")
    env = getattr(importlib.import_module(module), cls)(**kwargs)
    return env
