"""A VecEnv wrapper that replaces camera frames with the embeddings of a frozen encoder.

:class:`EmbeddingVecEnv` embeds the frames of all N envs in one forward pass per step,
on the encoder's device, and hands the policy a ``Dict(embedding=Box((D,)), ...)``
observation without the camera. SB3's ``MultiInputPolicy`` then sees small vectors, and
rollout and replay buffers store D floats per step instead of H*W*3 bytes.

Per step, one uint8 batch ``(B, H, W, 3)`` crosses to the device (through a pinned host
buffer on CUDA, so the copy is asynchronous and DMA-friendly) and ``(B, D)`` float32
comes back; the uint8 to float conversion happens on the device. On CUDA the forward
pass runs under ``torch.autocast(dtype=torch.bfloat16)``; on the CPU it stays float32
(CPU bf16 is slower than float32 on most CPUs and would change the features).
``compile_encoder=True`` runs the forward pass through ``torch.compile`` (worth it on a GPU,
where it fuses the small convolutions' kernels; on the CPU it costs a compile of about a
minute for little gain). On CUDA the wrapper also times the device work with CUDA
events, so that a benchmark can report how busy the GPU was (:attr:`device_seconds`).

Truncated episodes: SB3 bootstraps the value of ``infos[i]["terminal_observation"]``,
so those observations are embedded too, in the same forward pass as the batch.

Embedding on arrival (CPU): a synchronous vec env waits for its slowest env at every step,
and the cores of the envs that finished early sit idle meanwhile. On the CPU, with no more
worker envs than cores, the wrapper therefore embeds each env's frame as soon as that env
has stepped (one forward pass of batch 1 per env, through
:meth:`agents.shm_vec_env.SharedMemoryVecEnv.step_wait`'s ``on_ready`` hook), so the
encoder runs while the slower envs still step. On CUDA the whole batch crosses in one copy
and one forward pass, as above. Each frame is embedded alone either way the arrivals fall,
so the embeddings do not depend on which env finished first.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.vec_env.base_vec_env import (
    VecEnv,
    VecEnvObs,
    VecEnvStepReturn,
    VecEnvWrapper,
)

from agents.shm_vec_env import SharedMemoryVecEnv, available_cpus
from perception.checkpoint import load_encoder
from perception.encoders import Encoder, build_encoder, freeze

#: Key of the embedding in the wrapped observation.
EMBEDDING_KEY = "embedding"


def resolve_device(device: torch.device | str) -> torch.device:
    """``"auto"`` becomes ``cuda`` when a GPU is available, else ``cpu``."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_encoder(spec: Encoder | str | Path, image_size: tuple[int, int]) -> Encoder:
    """An encoder from an instance, a checkpoint directory or an architecture name.

    Args:
        spec: An :class:`Encoder`; a path to an encoder checkpoint directory (a
            :class:`Path`, or a string naming an existing path); or an architecture
            name for :func:`perception.encoders.build_encoder` (random init, built for
            ``image_size``).
        image_size: Frame size ``(H, W)`` for an encoder built by name.

    Returns:
        The encoder (not yet frozen or moved).
    """
    if isinstance(spec, Encoder):
        return spec
    if isinstance(spec, Path) or Path(spec).exists():
        return load_encoder(spec)
    return build_encoder(spec, image_size=image_size)


class EmbeddingVecEnv(VecEnvWrapper):
    """Replace the ``camera`` key of a Dict-observation VecEnv with frozen-encoder embeddings.

    The encoder is frozen in place (:func:`perception.encoders.freeze`: no gradients,
    eval mode that ``train()`` cannot undo, so batch-norm statistics stay fixed) and
    moved to ``device``. Other observation keys pass through unchanged.

    Args:
        venv: A VecEnv whose observation space is a Dict with a uint8 ``(H, W, 3)``
            image under ``image_key``. A :class:`agents.shm_vec_env.SharedMemoryVecEnv`
            may use ``copy_obs=False``: frames are consumed before the next step.
        encoder: An :class:`Encoder`, a checkpoint directory, or an architecture name
            (see :func:`resolve_encoder`).
        device: ``"auto"`` (CUDA if available), or any torch device.
        image_key: The observation key holding the frames.
        bf16: Run the encoder under bfloat16 autocast on CUDA (ignored on the CPU).
        compile_encoder: Run the encoder's forward pass through ``torch.compile``.
        embed_on_arrival: Embed each env's frame as soon as it has stepped (see the
            module docstring). None (the default) turns it on where it pays: a CPU
            device, a :class:`~agents.shm_vec_env.SharedMemoryVecEnv`, and no more envs
            than CPU cores. True requires a ``SharedMemoryVecEnv``.

    Attributes:
        encoder: The frozen encoder.
        device: Where it runs.
        encoder_seconds: Wall time spent embedding (host-to-device copy, forward pass
            and copy back), summed since construction or :meth:`reset_timing`.
        encoder_calls: Number of forward passes in that time.
        device_seconds: On CUDA, GPU time of the copy in, forward pass and copy out, as
            measured by CUDA events over the same calls (None on the CPU).

    Raises:
        ValueError: If the observation space has no suitable image key, the
            encoder's ``image_size`` differs from the frames, or ``embed_on_arrival`` is
            True for a vec env that is not a ``SharedMemoryVecEnv``.
    """

    def __init__(self, venv: VecEnv, encoder: Encoder | str | Path = "nature_cnn",
                 device: torch.device | str = "auto", image_key: str = "camera",
                 bf16: bool = True, compile_encoder: bool = False,
                 embed_on_arrival: bool | None = None) -> None:
        space = venv.observation_space
        if not isinstance(space, spaces.Dict) or image_key not in space.spaces:
            raise ValueError(f"EmbeddingVecEnv needs a Dict observation space with a "
                             f"'{image_key}' key, got {space}")
        image_space = space.spaces[image_key]
        if (not isinstance(image_space, spaces.Box) or image_space.dtype != np.uint8
                or len(image_space.shape) != 3 or image_space.shape[2] != 3):
            raise ValueError(f"observation '{image_key}' must be a uint8 Box (H, W, 3), "
                             f"got {image_space}")
        height, width = int(image_space.shape[0]), int(image_space.shape[1])
        self.device = resolve_device(device)
        enc = resolve_encoder(encoder, (height, width))
        if enc.image_size != (height, width):
            raise ValueError(f"encoder '{enc.name}' expects {enc.image_size[0]}x"
                             f"{enc.image_size[1]} frames but '{image_key}' is {height}x{width}")
        self.encoder: Encoder = freeze(enc).to(self.device)
        self.image_key = image_key
        self._frame_shape = (height, width, 3)
        self._autocast = bf16 and self.device.type == "cuda"
        self._pinned: torch.Tensor | None = None
        # Typed loosely: torch.compile returns a callable wrapper, not an Encoder.
        self._forward: Any = torch.compile(self.encoder) if compile_encoder else self.encoder
        self.compiled = compile_encoder
        self.encoder_seconds = 0.0
        self.encoder_calls = 0
        self._events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []
        self._device_seconds = 0.0
        shared = isinstance(venv, SharedMemoryVecEnv)
        if embed_on_arrival is None:
            embed_on_arrival = (shared and self.device.type == "cpu"
                                and venv.num_envs <= available_cpus())
        if embed_on_arrival and not shared:
            raise ValueError("embed_on_arrival needs a SharedMemoryVecEnv (its step_wait "
                             f"reports each env as it finishes), got {type(venv).__name__}")
        self.embed_on_arrival = bool(embed_on_arrival)

        embed_space = spaces.Box(-np.inf, np.inf, (self.encoder.embed_dim,), np.float32)
        kept = {k: v for k, v in space.spaces.items() if k != image_key}
        super().__init__(venv, observation_space=spaces.Dict({EMBEDDING_KEY: embed_space,
                                                              **kept}))

    @property
    def embed_dim(self) -> int:
        """Size D of the embeddings."""
        return self.encoder.embed_dim

    def reset_timing(self) -> None:
        """Zero :attr:`encoder_seconds`, :attr:`encoder_calls` and :attr:`device_seconds`."""
        self.encoder_seconds = 0.0
        self.encoder_calls = 0
        self._events.clear()
        self._device_seconds = 0.0

    @property
    def device_seconds(self) -> float | None:
        """GPU time of the embedding calls since :meth:`reset_timing` [s] (None on CPU)."""
        if self.device.type != "cuda":
            return None
        for start, end in self._events:
            end.synchronize()
            self._device_seconds += start.elapsed_time(end) / 1000.0
        self._events.clear()
        return self._device_seconds

    def _to_device(self, frames: np.ndarray) -> torch.Tensor:
        """Move a uint8 batch to the device: one copy, asynchronous on CUDA."""
        if not frames.flags.writeable:
            frames = frames.copy()  # torch.from_numpy warns on read-only memory
        host = torch.from_numpy(np.ascontiguousarray(frames))
        if self.device.type != "cuda":
            return host.to(self.device)
        batch = host.shape[0]
        if self._pinned is None or self._pinned.shape[0] < batch:
            # Room for a full batch plus one terminal frame per env; reused every step.
            # Safe to overwrite next step: embed() waits for the result, which waits
            # for this copy (same stream).
            rows = max(batch, 2 * self.num_envs)
            self._pinned = torch.empty((rows, *self._frame_shape), dtype=torch.uint8,
                                       pin_memory=True)
        staging = self._pinned[:batch]
        staging.copy_(host)
        return staging.to(self.device, non_blocking=True)

    def embed(self, frames: np.ndarray) -> np.ndarray:
        """Embed a uint8 batch ``(B, H, W, 3)`` in one forward pass.

        Returns:
            float32 embeddings ``(B, D)``.
        """
        start = time.perf_counter()
        events = None
        if self.device.type == "cuda":
            events = (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
            events[0].record()
        x = self._to_device(frames)
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if self._autocast
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self._forward(x)
        result: np.ndarray = out.float().cpu().numpy()
        if events is not None:
            events[1].record()
            self._events.append(events)
        self.encoder_seconds += time.perf_counter() - start
        self.encoder_calls += 1
        return result

    def _replace(self, obs: Mapping[str, np.ndarray], embedding: np.ndarray
                 ) -> dict[str, np.ndarray]:
        out = {EMBEDDING_KEY: embedding}
        out.update((k, v) for k, v in obs.items() if k != self.image_key)
        return out

    def _transform(self, obs: VecEnvObs, infos: list[dict[str, Any]] | None = None,
                   embedded: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """Swap frames for embeddings in ``obs`` and in the infos' terminal observations;
        ``embedded`` holds the batch's embeddings when they were computed on arrival."""
        assert isinstance(obs, dict), "EmbeddingVecEnv wraps Dict observations only"
        frames = obs[self.image_key]
        terminal = [i for i, info in enumerate(infos or ())
                    if info.get("terminal_observation") is not None]
        if terminal:
            assert infos is not None
            extra = np.stack([infos[i]["terminal_observation"][self.image_key]
                              for i in terminal])
            if embedded is None:
                # One forward pass for the batch and the ended episodes' last frames.
                both = self.embed(np.concatenate([frames, extra]))
                embedded, last = both[:len(frames)], both[len(frames):]
            else:
                last = self.embed(extra)
            for row, i in enumerate(terminal):
                infos[i]["terminal_observation"] = self._replace(
                    infos[i]["terminal_observation"], last[row].copy())
        elif embedded is None:
            embedded = self.embed(frames)
        return self._replace(obs, embedded)

    def reset(self) -> VecEnvObs:
        """Reset the wrapped envs and embed the first frames."""
        obs = self.venv.reset()
        self.reset_infos = list(getattr(self.venv, "reset_infos", self.reset_infos))
        return self._transform(obs)

    def step_wait(self) -> VecEnvStepReturn:
        """Step the wrapped envs and embed the frames (terminal ones included)."""
        embedded: np.ndarray | None = None
        if self.embed_on_arrival:
            assert isinstance(self.venv, SharedMemoryVecEnv)
            frames = self.venv.shared_array(self.image_key)
            embedded = np.empty((self.num_envs, self.embed_dim), dtype=np.float32)

            def embed_row(i: int) -> None:
                embedded[i] = self.embed(frames[i:i + 1])[0]

            obs, rewards, dones, infos = self.venv.step_wait(on_ready=embed_row)
        else:
            obs, rewards, dones, infos = self.venv.step_wait()
        infos = list(infos)
        out = self._transform(obs, infos, embedded)
        self.reset_infos = list(getattr(self.venv, "reset_infos", self.reset_infos))
        return out, rewards, dones, infos


__all__ = ["EMBEDDING_KEY", "EmbeddingVecEnv", "resolve_device", "resolve_encoder"]
