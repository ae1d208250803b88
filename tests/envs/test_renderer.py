"""camera.renderer: tiny always works; egl loads or fails naming EGL; auto falls back."""

from __future__ import annotations

import logging
import subprocess
import sys

import pytest

import envs
from envs.sim import camera

EGL_SCRIPT = """
import envs
try:
    env = envs.make("bulletdrive/Highway-v0", overrides=["camera.renderer=egl",
                                                        "traffic.num_vehicles=2"])
except ValueError as exc:
    print("FAILED:", exc)
else:
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(env.action_space.sample())
    print("LOADED:", env.renderer_in_use, obs["camera"].shape)
    env.close()
"""


def test_tiny_renders() -> None:
    env = envs.make("bulletdrive/Highway-v0", overrides=["camera.renderer=tiny",
                                                         "traffic.num_vehicles=2"])
    try:
        obs, _ = env.reset(seed=0)
        assert env.unwrapped.renderer_in_use == "tiny"
        assert obs["camera"].shape == (84, 84, 3) and obs["camera"].std() > 0
    finally:
        env.close()


def test_egl_loads_or_fails_clearly() -> None:
    # In a child process: a broken EGL driver may crash the process, not raise.
    out = subprocess.run([sys.executable, "-c", EGL_SCRIPT], capture_output=True, text=True,
                         timeout=120)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith(("FAILED:", "LOADED:"))]
    assert out.returncode == 0 and len(lines) == 1, out.stderr[-2000:]
    if lines[0].startswith("FAILED:"):
        assert "EGL" in lines[0]
    else:
        assert lines[0] == "LOADED: egl (84, 84, 3)"


def test_auto_falls_back_to_tiny_with_reason(monkeypatch: pytest.MonkeyPatch,
                                             caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(camera, "gpu_seems_present", lambda: False)
    monkeypatch.setattr(camera, "_logged_fallbacks", set())
    with caplog.at_level(logging.INFO, logger="bulletdrive.render"):
        for _ in range(2):
            env = envs.make("bulletdrive/Highway-v0", overrides=["traffic.num_vehicles=2"])
            try:
                assert env.unwrapped.renderer_in_use == "tiny"
            finally:
                env.close()
    msgs = [r.getMessage() for r in caplog.records if r.name == "bulletdrive.render"]
    assert len(msgs) == 1 and "tiny" in msgs[0] and "no GPU" in msgs[0]


def test_renderer_choices_are_checked() -> None:
    from common.config import ConfigError
    from envs.config import load_env_config

    with pytest.raises(ConfigError, match="valid choices"):
        load_env_config("highway", ["camera.renderer=vulkan"])
