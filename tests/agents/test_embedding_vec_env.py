"""EmbeddingVecEnv: embeddings equal the encoder's, spaces, terminal observations, SB3 PPO on top;
and a smoke run of the rollout benchmark."""

from __future__ import annotations

import functools
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from gymnasium import spaces
from stable_baselines3 import PPO
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.embedding_vec_env import EmbeddingVecEnv
from agents.rollout_bench import bench_rollouts, torch_threads
from agents.shm_vec_env import SharedMemoryVecEnv
from perception.checkpoint import save_encoder
from perception.encoders import build_encoder
from planning.make import make_env

# Nature CNN needs frames of at least 36x36; 64x64 keeps the envs quick.
OVERRIDES = ("camera.width=64", "camera.height=64", "traffic.num_vehicles=2", "max_steps=8")
CONTROL_FN = functools.partial(make_env, "Highway-v0", action_mode="control", overrides=OVERRIDES)
# Full-length episodes: a reset costs as much as tens of steps.
BEHAVIOR_FN = functools.partial(make_env, "Highway-v0", action_mode="behavior",
                                overrides=OVERRIDES[:-1])
ACTIONS = np.array([[0.1, 0.5], [-0.2, 0.3]], dtype=np.float32)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # As in the benchmark: worker processes already use the cores, and on a busy small
    # machine OpenMP threads waiting for a preempted sibling make tiny forward passes
    # ~100x slower.
    with torch_threads(1):
        yield


def _reference(encoder: torch.nn.Module, frames: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out: np.ndarray = encoder(torch.from_numpy(frames.copy())).numpy()
    return out


def test_embeddings_equal_the_encoder_and_terminal_observations_are_embedded() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("nature_cnn", embed_dim=32, image_size=(64, 64))
    camera_env = DummyVecEnv([CONTROL_FN, CONTROL_FN])  # the same envs, frames kept
    venv = EmbeddingVecEnv(DummyVecEnv([CONTROL_FN, CONTROL_FN]), encoder, device="auto")
    try:
        assert venv.device.type == ("cuda" if torch.cuda.is_available() else "cpu")
        space = venv.observation_space
        assert isinstance(space, spaces.Dict)
        assert set(space.spaces) == {"embedding", "measurements"}
        emb_space = space.spaces["embedding"]
        assert isinstance(emb_space, spaces.Box)
        assert emb_space.shape == (32,) and emb_space.dtype == np.float32
        assert np.all(np.isinf(emb_space.low)) and np.all(np.isinf(emb_space.high))
        # Frozen: eval mode that train() cannot undo, no gradients.
        encoder.train()
        assert not encoder.training and encoder.frozen
        assert not any(p.requires_grad for p in encoder.parameters())

        venv.seed(3)
        camera_env.seed(3)
        obs, frames = venv.reset(), camera_env.reset()
        assert isinstance(obs, dict) and isinstance(frames, dict)
        assert obs["embedding"].shape == (2, 32) and obs["embedding"].dtype == np.float32
        np.testing.assert_allclose(obs["embedding"], _reference(encoder, frames["camera"]),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(obs["measurements"], frames["measurements"])
        ended = 0
        for _ in range(10):
            obs, _, dones, infos = venv.step(ACTIONS)
            frames, _, _, cam_infos = camera_env.step(ACTIONS)
            assert isinstance(obs, dict) and isinstance(frames, dict)
            np.testing.assert_allclose(obs["embedding"], _reference(encoder, frames["camera"]),
                                       rtol=1e-5, atol=1e-6)
            for i in np.flatnonzero(dones):
                ended += 1
                term = infos[i]["terminal_observation"]
                assert set(term) == {"embedding", "measurements"}
                cam_term = cam_infos[i]["terminal_observation"]
                np.testing.assert_allclose(
                    term["embedding"], _reference(encoder, cam_term["camera"][None])[0],
                    rtol=1e-5, atol=1e-6)
        assert ended >= 2
        assert venv.encoder_calls == 11  # one forward pass per reset/step, terminals included
    finally:
        venv.close()
        camera_env.close()


def test_encoder_from_checkpoint_and_size_mismatch(tmp_path: Path) -> None:
    path = save_encoder(tmp_path / "enc", build_encoder("nature_cnn", embed_dim=16,
                                                       image_size=(64, 64)))
    venv = EmbeddingVecEnv(DummyVecEnv([CONTROL_FN]), path, device="cpu")
    try:
        assert venv.embed_dim == 16
        assert venv.reset()["embedding"].shape == (1, 16)  # type: ignore[call-overload]
    finally:
        venv.close()
    with pytest.raises(ValueError, match="84x84"):
        EmbeddingVecEnv(DummyVecEnv([CONTROL_FN]), build_encoder("nature_cnn"), device="cpu")


def test_ppo_learns_on_embeddings_of_shared_memory_envs() -> None:
    shm = SharedMemoryVecEnv([BEHAVIOR_FN, BEHAVIOR_FN], copy_obs=False)
    venv = EmbeddingVecEnv(shm, "nature_cnn", device="cpu")
    try:
        model = PPO("MultiInputPolicy", venv, n_steps=16, batch_size=16, n_epochs=1, seed=0,
                    device="cpu", verbose=0)
        model.learn(total_timesteps=64)
        assert model.num_timesteps >= 64
        obs = venv.reset()
        actions, _ = model.predict(obs, deterministic=True)  # type: ignore[arg-type]
        assert actions.shape == (2,)
    finally:
        venv.close()
    assert shm.closed


def test_bench_rollouts_smoke() -> None:
    report = bench_rollouts(num_envs_list=(1, 2), steps=5, warmup_steps=1,
                            overrides=("camera.width=64", "camera.height=64",
                                       "traffic.num_vehicles=2"), device="cpu", repeats=3)
    rows = report["results"]
    assert report["config"]["repeats"] == 3
    assert [r["num_envs"] for r in rows] == [1, 2]
    for row in rows:
        for key in ("env_steps_per_s", "ms_per_vector_step", "ms_encoder_per_step",
                    "speedup_vs_1"):
            assert row[key] > 0, key
        runs = row["env_steps_per_s_runs"]
        assert len(runs) == 3 and row["env_steps_per_s"] == pytest.approx(float(np.median(runs)))
    assert rows[0]["speedup_vs_1"] == pytest.approx(1.0)
    # The speed-up is the median of each round's own ratio, not a ratio of medians.
    ratios = np.array(rows[1]["env_steps_per_s_runs"]) / np.array(rows[0]["env_steps_per_s_runs"])
    assert rows[1]["speedup_vs_1"] == pytest.approx(float(np.median(ratios)))
    with pytest.raises(ValueError, match="repeats must be >= 1"):
        bench_rollouts(num_envs_list=(1,), repeats=0)


def test_compiled_encoder_gives_the_same_embeddings() -> None:
    torch.manual_seed(0)
    encoder = build_encoder("nature_cnn", embed_dim=16, image_size=(64, 64))
    camera_env = DummyVecEnv([CONTROL_FN])
    venv = EmbeddingVecEnv(DummyVecEnv([CONTROL_FN]), encoder, device="cpu",
                           compile_encoder=True)
    try:
        assert venv.compiled
        venv.seed(3)
        camera_env.seed(3)
        obs = venv.reset()
        frames = camera_env.reset()["camera"]
        np.testing.assert_allclose(obs["embedding"], _reference(venv.encoder, frames),
                                   rtol=1e-4, atol=1e-5)
        assert venv.device_seconds is None  # GPU time is only measured on CUDA
    finally:
        venv.close()
        camera_env.close()


def test_embedding_on_arrival_matches_the_batched_pass() -> None:
    # Same envs, same actions: embedding each frame as its worker finishes gives the
    # batched pass's embeddings, terminal observations included.
    torch.manual_seed(0)
    encoder = build_encoder("nature_cnn", embed_dim=16, image_size=(64, 64))
    arrival = EmbeddingVecEnv(SharedMemoryVecEnv([CONTROL_FN, CONTROL_FN], copy_obs=False),
                              encoder, device="cpu", embed_on_arrival=True)
    batched = EmbeddingVecEnv(SharedMemoryVecEnv([CONTROL_FN, CONTROL_FN], copy_obs=False),
                              encoder, device="cpu", embed_on_arrival=False)
    try:
        assert arrival.embed_on_arrival and not batched.embed_on_arrival
        arrival.seed(4)
        batched.seed(4)
        arrival.reset()
        batched.reset()
        ended = 0
        for _ in range(10):
            a, _, done_a, info_a = arrival.step(ACTIONS)
            b, _, done_b, info_b = batched.step(ACTIONS)
            assert isinstance(a, dict) and isinstance(b, dict)
            np.testing.assert_allclose(a["embedding"], b["embedding"], rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(done_a, done_b)
            for i in np.flatnonzero(done_a):
                ended += 1
                np.testing.assert_allclose(info_a[i]["terminal_observation"]["embedding"],
                                           info_b[i]["terminal_observation"]["embedding"],
                                           rtol=1e-5, atol=1e-6)
        assert ended >= 2
        # One forward pass per env and step, plus one for the reset and one per step
        # that ended episodes (their last frames).
        assert arrival.encoder_calls > batched.encoder_calls
    finally:
        arrival.close()
        batched.close()
    with pytest.raises(ValueError, match="needs a SharedMemoryVecEnv"):
        EmbeddingVecEnv(DummyVecEnv([CONTROL_FN]), encoder, device="cpu", embed_on_arrival=True)
    auto = EmbeddingVecEnv(DummyVecEnv([CONTROL_FN]), encoder, device="cpu")
    assert not auto.embed_on_arrival  # only a SharedMemoryVecEnv reports arrivals
    auto.close()
