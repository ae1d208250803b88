"""A short stable-baselines3 PPO run on Highway-v0 with MultiInputPolicy completes."""

from __future__ import annotations

import numpy as np
from stable_baselines3 import PPO

from envs.highway_env import HighwayEnv


def test_ppo_multi_input_policy_runs() -> None:
    env = HighwayEnv(overrides=["traffic.num_vehicles=4", "max_steps=40",
                                "camera.width=64", "camera.height=64"])
    try:
        model = PPO("MultiInputPolicy", env, n_steps=64, batch_size=32, n_epochs=1,
                    seed=0, device="cpu", verbose=0)
        model.learn(total_timesteps=64)
        obs, _ = env.reset(seed=1)
        action, _ = model.predict(obs, deterministic=True)
        assert action.shape == (2,) and np.all(np.abs(action) <= 1.0)
    finally:
        env.close()
