"""Create a bulletdrive env with its action mode applied: the registered entry point.

``gymnasium.make("bulletdrive/Highway-v0", action_mode="behavior")`` lands here: the
world comes from :mod:`envs` (which always takes ``control`` actions) and the decision
layer from :mod:`planning.action_modes`. The mode is written into the env's config
(``action.mode``), so a recorded config says how the actions were meant.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym

import envs
from envs.config import ACTION_MODES, EnvConfig
from planning.action_modes import wrap_action_mode


def make_env(env_id: str, action_mode: str | None = None,
             config: EnvConfig | str | Path | Mapping[str, Any] | None = None,
             overrides: Sequence[str] = (), render_mode: str | None = None
             ) -> gym.Env[Any, Any]:
    """A bulletdrive env with the decision layer for its action mode.

    Args:
        env_id: ``Highway-v0`` / ``Urban-v0`` (with or without ``bulletdrive/``).
        action_mode: ``control``, ``behavior`` or ``trajectory``; ``None`` keeps the
            config's ``action.mode``.
        config: Env config (dataclass, YAML name or path, or mapping).
        overrides: ``key.sub=value`` overrides applied to the config.
        render_mode: ``None`` or ``"rgb_array"``.

    Raises:
        ValueError: Unknown env id or action mode (the message lists the valid ones).
    """
    extra = list(overrides)
    if action_mode is not None:
        if action_mode not in ACTION_MODES:
            raise ValueError(f"unknown action mode {action_mode!r}; valid: "
                             f"{', '.join(ACTION_MODES)}")
        extra.append(f"action.mode={action_mode}")
    env = envs.make(env_id, config=config, overrides=extra, render_mode=render_mode)
    return wrap_action_mode(env)
