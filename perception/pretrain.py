"""Self-supervised pre-training of a perception encoder (``bulletdrive pretrain``).

:func:`pretrain` streams the frames of a dataset split, trains one objective (CURL,
BYOL, MAE or ATC, optionally with auxiliary heads) with AdamW, and writes into
``out_dir``::

    config.yaml                    the resolved PretrainConfig of the run
    tb/                            TensorBoard scalars: train/<log key>, train/lr,
                                   perf/frames_per_s
    checkpoint/state.safetensors   objective.* (online encoder, EMA targets, heads),
                                   optim.state.<i>.<name> (AdamW moments and steps),
                                   rng.objective (the augmentation/mask generator)
    checkpoint/state.json          step, data position, elapsed time, optimizer
                                   hyper-parameters, the resolved config
    encoder/                       the online encoder as a perception.checkpoint
                                   checkpoint, for probes and agents

Both checkpoint files are written atomically (temporary name, then rename). The
description in ``state.json`` is also embedded in the header of
``state.safetensors``, and resuming reads that embedded copy: the single weights file
is the commit point, so an interrupt between the two renames cannot pair new weights
with an old description. Nothing is ever unpickled.

Determinism: parameters are initialised from ``seed`` inside a forked global RNG (the
caller's RNG is untouched), augmentations and masks draw from one explicit generator,
and the data order depends only on ``(seed, epoch)``. A checkpoint stores the
generator state and the position in the epoch, so a resumed run continues with the
same batches and random draws as an uninterrupted one.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import math
import time
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import safetensors.torch
import torch
import yaml
from safetensors import safe_open
from torch import Tensor
from torch.utils.data import DataLoader
from tqdm import tqdm

from common.config import load_config, require, to_dict
from common.io import atomic_path, atomic_write_text
from perception.augment import AugmentConfig, Augmenter
from perception.checkpoint import CheckpointError, save_encoder
from perception.dataset import DatasetError, FrameDataset
from perception.encoders import EncoderConfig, build_encoder
from perception.objectives import Objective, ObjectiveConfig, build_objective

if TYPE_CHECKING:
    from torch.utils.tensorboard import SummaryWriter

#: ``configs/`` sub-folder of the shipped pre-training configs.
CONFIG_GROUP = "perception"
CONFIG_FILE = "config.yaml"
TB_DIR = "tb"
CHECKPOINT_DIR = "checkpoint"
ENCODER_DIR = "encoder"
STATE_WEIGHTS_FILE = "state.safetensors"
STATE_META_FILE = "state.json"
STATE_FORMAT = "bulletdrive.pretrain_state"
STATE_FORMAT_VERSION = 1
#: safetensors header metadata key holding the JSON description.
_EMBEDDED_META_KEY = "bulletdrive_state"

OBJECTIVE_PREFIX = "objective."
OPTIM_PREFIX = "optim.state."
RNG_KEY = "rng.objective"

#: Top-level config keys that may change between a run and its resumption: the
#: budgets, bookkeeping frequencies and the device do not change what is learned
#: from which batch (the device changes only rounding).
RESUME_IGNORED_KEYS: tuple[str, ...] = (
    "max_steps", "max_minutes", "checkpoint_every_steps", "log_every_steps", "device")

# Independent random streams derived from the one config seed, so that parameter
# initialisation and augmentation never draw the same numbers.
_STREAM_INIT = 0
_STREAM_OBJECTIVE = 1
_STREAM_LOADER = 2


@dataclass(frozen=True)
class PretrainConfig:
    """Settings of a pre-training run.

    Attributes:
        encoder: The encoder to train; its ``image_size`` must equal the dataset's.
        objective: The self-supervised objective and its auxiliary heads
            (``objective.aux``; their labels are read from the dataset).
        augment: Augmentations of the contrastive objectives (MAE ignores them).
        split: Dataset split to train on.
        batch_size: Samples per optimizer step (at least 2: contrastive losses need
            negatives and batch norm needs more than one sample).
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay.
        max_steps: Budget: total optimizer steps of the run, counting resumed ones.
        max_minutes: Budget: wall-clock minutes of one invocation (``None`` = no
            limit); 0 writes a checkpoint without training.
        checkpoint_every_steps: Steps between checkpoints (one is always written at
            the end).
        log_every_steps: Steps per TensorBoard/progress-bar log window.
        num_workers: DataLoader worker processes (0 loads in the training process).
            The data order depends on it, so a run resumes only with the same value.
        seed: Seed of parameter initialisation, augmentations and data order.
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        temporal_k: ATC only: the positive is the frame this many steps later.
        shuffle_buffer: Samples in the dataset's cross-shard shuffle buffer.
    """

    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    # Measured on 22k driving frames (README): without random shifts, at a lower learning
    # rate and for about 1000 steps, CURL features beat random initialisation on the
    # lane-offset and lead-distance probes; shifts and longer runs learned shortcuts.
    augment: AugmentConfig = field(default_factory=lambda: AugmentConfig(
        ops=("color_jitter", "cutout")))
    split: str = "train"
    batch_size: int = 128
    lr: float = 3e-4
    weight_decay: float = 0.0
    max_steps: int = 1_000
    max_minutes: float | None = None
    checkpoint_every_steps: int = 500
    log_every_steps: int = 25
    num_workers: int = 0
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    temporal_k: int = 3
    shuffle_buffer: int = 2048

    def __post_init__(self) -> None:
        require(bool(self.split), "split must be a non-empty split name, e.g. 'train'")
        require(self.batch_size >= 2, f"batch_size must be >= 2 (contrastive losses need "
                                      f"negatives), got {self.batch_size}")
        require(self.lr > 0.0, f"lr must be > 0, got {self.lr}")
        require(self.weight_decay >= 0.0, f"weight_decay must be >= 0, got {self.weight_decay}")
        require(self.max_steps >= 0, f"max_steps must be >= 0, got {self.max_steps}")
        require(self.max_minutes is None or self.max_minutes >= 0.0,
                f"max_minutes must be >= 0 or null, got {self.max_minutes}")
        require(self.checkpoint_every_steps >= 1,
                f"checkpoint_every_steps must be >= 1, got {self.checkpoint_every_steps}")
        require(self.log_every_steps >= 1,
                f"log_every_steps must be >= 1, got {self.log_every_steps}")
        require(self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}")
        require(self.seed >= 0, f"seed must be >= 0, got {self.seed}")
        require(self.temporal_k >= 1, f"temporal_k must be >= 1, got {self.temporal_k}")
        require(self.shuffle_buffer >= 0,
                f"shuffle_buffer must be >= 0, got {self.shuffle_buffer}")


def load_pretrain_config(source: str | Path | Mapping[str, Any] | PretrainConfig | None = None,
                         overrides: Sequence[str] = ()) -> PretrainConfig:
    """Load a pre-training config, applying ``key.sub=value`` overrides.

    Args:
        source: A YAML path, a config name in ``configs/perception/`` (``"pretrain"``),
            a mapping, a :class:`PretrainConfig`, or ``None`` for the defaults.
        overrides: Strings such as ``"objective.name=atc"``; values are YAML.

    Returns:
        The validated config.

    Raises:
        ConfigError: For a missing file, an unknown key or an invalid value.
    """
    if isinstance(source, PretrainConfig):
        if not overrides:
            return source
        source = to_dict(source)
    return load_config(PretrainConfig, source, overrides, group=CONFIG_GROUP)


@dataclass(frozen=True)
class PretrainResult:
    """What a :func:`pretrain` call did and where it wrote.

    Attributes:
        steps: Optimizer steps of the run so far, including resumed ones.
        steps_this_call: Steps taken by this call.
        final_loss: Mean loss of the last ``log_every_steps`` steps (``None`` before
            any step).
        minutes: Wall-clock minutes of this call.
        total_minutes: Wall-clock minutes of the run over all its invocations.
        resumed_from: Step of the checkpoint this call resumed from, else ``None``.
        out_dir / config_path / tb_dir / checkpoint_dir / encoder_dir: Outputs.
    """

    steps: int
    steps_this_call: int
    final_loss: float | None
    minutes: float
    total_minutes: float
    resumed_from: int | None
    out_dir: Path
    config_path: Path
    tb_dir: Path
    checkpoint_dir: Path
    encoder_dir: Path


# --------------------------------------------------------------------------- training


def pretrain(config: PretrainConfig, data_dir: str | Path, out_dir: str | Path, *,
             max_steps: int | None = None, max_minutes: float | None = None,
             resume: bool = True, progress: bool = True) -> PretrainResult:
    """Pre-train an encoder with a self-supervised objective.

    Args:
        config: The run's settings.
        data_dir: A frame dataset (``bulletdrive collect``).
        out_dir: Output directory (created); see the module docstring for its layout.
        max_steps: Overrides ``config.max_steps`` (total steps, resumed ones included).
        max_minutes: Overrides ``config.max_minutes`` (this invocation's wall clock).
        resume: Continue from ``out_dir/checkpoint`` if it exists; ``False`` deletes it
            and starts over.
        progress: Show a tqdm progress bar.

    Returns:
        Steps, final loss, duration and output paths.

    Raises:
        DatasetError: For a missing or corrupt dataset, split or aux label.
        ConfigError: For an invalid budget or unknown encoder/objective names.
        ValueError: If the dataset's frame size differs from ``encoder.image_size``,
            the split holds fewer samples than a batch, CUDA is requested but absent,
            or the checkpoint to resume was written with another config.
        CheckpointError: For a corrupt checkpoint.
        FloatingPointError: If the loss becomes NaN or infinite (weights untouched).
    """
    t_start = time.monotonic()
    # Explicit budgets (the CLI's --max-steps / --max-minutes) win over the config;
    # replace() re-runs the range checks.
    config = dataclasses.replace(
        config,
        max_steps=config.max_steps if max_steps is None else max_steps,
        max_minutes=config.max_minutes if max_minutes is None else max_minutes)
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    ckpt_dir, encoder_dir = out_dir / CHECKPOINT_DIR, out_dir / ENCODER_DIR
    tb_dir = out_dir / TB_DIR
    device = resolve_device(config.device)
    use_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()

    # 1. Data: everything is checked before anything is written.
    dataset = FrameDataset(
        data_dir, config.split,
        keys=[head.label for head in config.objective.aux.heads],  # [] = frames only
        shuffle_shards=True, shuffle_buffer=config.shuffle_buffer, seed=config.seed,
        temporal_offset_k=config.temporal_k if config.objective.name == "atc" else None)
    check_image_size(dataset.manifest.image_shape, config.encoder, data_dir)
    loader = DataLoader(
        dataset, batch_size=config.batch_size, drop_last=True, num_workers=config.num_workers,
        pin_memory=device.type == "cuda",
        # An own generator: otherwise each new iterator draws a seed from the global RNG.
        generator=torch.Generator().manual_seed(stream_seed(config.seed, _STREAM_LOADER)))

    # 2. Model, optimizer and the random stream of augmentations and masks.
    with torch.random.fork_rng(devices=[]):
        # Initialisation happens on the CPU, so only the CPU RNG needs seeding.
        torch.default_generator.manual_seed(stream_seed(config.seed, _STREAM_INIT))
        encoder = build_encoder(config.encoder).to(device)
        objective = build_objective(config.objective.name, encoder, config.objective,
                                    Augmenter(config.augment)).to(device)
    optimizer = torch.optim.AdamW(objective.trainable_parameters(), lr=config.lr,
                                  weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(stream_seed(config.seed, _STREAM_OBJECTIVE))

    # 3. Resume, or start over.
    step, epoch, batch_in_epoch, prior_s = 0, 0, 0, 0.0
    recent_losses: collections.deque[float] = collections.deque(maxlen=config.log_every_steps)
    resumed_from: int | None = None
    if resume and (ckpt_dir / STATE_WEIGHTS_FILE).exists():
        state = load_training_state(ckpt_dir)
        check_resumable(state.config, config, ckpt_dir)
        restore_training_state(state, objective, optimizer, generator)
        step, epoch, batch_in_epoch = state.step, state.epoch, state.batch_in_epoch
        prior_s = state.elapsed_s
        recent_losses.extend(state.recent_losses)
        resumed_from = step
    elif not resume:
        remove_training_state(ckpt_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out_dir / CONFIG_FILE, config_to_yaml(config))

    def save_checkpoint() -> None:
        save_training_state(
            ckpt_dir, objective, optimizer, generator, config=config, step=step, epoch=epoch,
            batch_in_epoch=batch_in_epoch, elapsed_s=prior_s + time.monotonic() - t_start,
            recent_losses=list(recent_losses))
        save_encoder(encoder_dir, encoder, config.encoder,
                     extra={"objective": config.objective.name, "steps": step,
                            "data": str(data_dir)})

    def out_of_time() -> bool:
        return (config.max_minutes is not None
                and time.monotonic() - t_start >= 60.0 * config.max_minutes)

    # 4. The loop.
    from torch.utils.tensorboard import SummaryWriter  # slow import, only when training

    # purge_step drops events a crashed earlier invocation logged after the checkpoint.
    writer = SummaryWriter(str(tb_dir), purge_step=resumed_from)
    bar = tqdm(total=config.max_steps, initial=step, disable=not progress, unit="step",
               desc=f"pretrain {config.objective.name}", dynamic_ncols=True)
    batches = batch_stream(loader, dataset, epoch, batch_in_epoch)
    window_logs: dict[str, list[float]] = collections.defaultdict(list)
    window_frames, window_t0 = 0, time.monotonic()
    start_step, saved_at = step, None
    objective.train()
    try:
        while step < config.max_steps and not out_of_time():
            epoch, batch_in_epoch, batch = next(batches)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                loss, logs = objective.loss(batch, generator)
            loss_value = float(loss.detach())
            if not math.isfinite(loss_value):
                # Raise before the update, so the weights (and checkpoints) stay finite.
                raise FloatingPointError(
                    f"pre-training loss is {loss_value} at step {step + 1}; the last "
                    f"checkpoint in {ckpt_dir} holds finite weights (try a lower lr)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            objective.after_step()  # EMA targets follow the online weights
            step += 1
            bar.update(1)

            recent_losses.append(loss_value)
            for key, value in {**logs, "loss": loss_value}.items():
                window_logs[key].append(float(value))
            window_frames += int(batch["frames"].shape[0])
            if step % config.log_every_steps == 0:
                log_window(writer, bar, step, window_logs, window_frames,
                           time.monotonic() - window_t0, optimizer)
                window_logs.clear()
                window_frames, window_t0 = 0, time.monotonic()
            if step % config.checkpoint_every_steps == 0:
                save_checkpoint()
                saved_at = step
        if window_logs:  # the partial last window
            log_window(writer, bar, step, window_logs, window_frames,
                       time.monotonic() - window_t0, optimizer)
        if saved_at != step:
            save_checkpoint()
    finally:
        batches.close()  # shuts down DataLoader workers
        bar.close()
        writer.close()

    minutes = (time.monotonic() - t_start) / 60.0
    return PretrainResult(
        steps=step, steps_this_call=step - start_step,
        final_loss=float(np.mean(recent_losses)) if recent_losses else None,
        minutes=minutes, total_minutes=prior_s / 60.0 + minutes, resumed_from=resumed_from,
        out_dir=out_dir, config_path=out_dir / CONFIG_FILE, tb_dir=tb_dir,
        checkpoint_dir=ckpt_dir, encoder_dir=encoder_dir)


def batch_stream(loader: DataLoader[dict[str, Tensor]], dataset: FrameDataset, epoch: int,
                 skip: int) -> Generator[tuple[int, int, dict[str, Tensor]], None, None]:
    """Endless batches over epochs, starting ``skip`` batches into ``epoch``.

    Resuming replays (loads and discards) the first ``skip`` batches of the epoch:
    the order of an epoch is a function of ``(seed, epoch)`` only, so this lands on
    exactly the batch an uninterrupted run would take next, also with workers.

    Yields:
        ``(epoch, batches taken from that epoch including this one, batch)``: the data
        position to store in a checkpoint written after this batch.

    Raises:
        ValueError: If an epoch yields no full batch.
    """
    while True:
        dataset.set_epoch(epoch)
        taken = 0
        for batch in loader:
            taken += 1
            if taken > skip:
                yield epoch, taken, batch
        if taken == 0:
            raise ValueError(
                f"split '{dataset.split}' of dataset {dataset.manifest.root} yields fewer "
                f"samples than one batch ({loader.batch_size}); lower batch_size or collect "
                "more frames (with ATC the last temporal_k steps of each episode have no "
                "positive)")
        epoch, skip = epoch + 1, 0


def log_window(writer: SummaryWriter, bar: tqdm[Any], step: int,
               window_logs: Mapping[str, list[float]], frames: int, seconds: float,
               optimizer: torch.optim.Optimizer) -> None:
    """Write the means of a log window to TensorBoard and the progress bar."""
    means = {key: float(np.mean(values)) for key, values in window_logs.items()}
    for key, value in means.items():
        writer.add_scalar(f"train/{key}", value, step)
    writer.add_scalar("train/lr", float(optimizer.param_groups[0]["lr"]), step)
    frames_per_s = frames / seconds if seconds > 0 else 0.0
    writer.add_scalar("perf/frames_per_s", frames_per_s, step)
    bar.set_postfix(loss=f"{means['loss']:.4f}", fps=f"{frames_per_s:.0f}", refresh=False)


# --------------------------------------------------------------------------- helpers


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' was requested but CUDA is not available; use "
                         "device=auto or device=cpu")
    return torch.device(name)


def stream_seed(seed: int, stream: int) -> int:
    """A seed for random stream ``stream`` derived from the run's ``seed``."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1, dtype=np.uint64)[0])


def check_image_size(image_shape: tuple[int, int, int] | None, encoder: EncoderConfig,
                     data_dir: Path) -> None:
    """Raise ValueError when the dataset's frames do not have the encoder's input size."""
    if image_shape is None:
        return  # an empty dataset; FrameDataset has already refused it
    data_hw = (int(image_shape[0]), int(image_shape[1]))
    enc_hw = (int(encoder.image_size[0]), int(encoder.image_size[1]))
    if data_hw != enc_hw:
        raise ValueError(
            f"dataset {data_dir} holds frames of {data_hw[0]}x{data_hw[1]} pixels (H x W) but "
            f"encoder.image_size is {enc_hw[0]}x{enc_hw[1]}; set encoder.image_size="
            f"[{data_hw[0]}, {data_hw[1]}] or collect frames of that size")


def config_to_yaml(config: PretrainConfig) -> str:
    """The resolved config as YAML text with a short header."""
    header = ("# Resolved configuration of a bulletdrive pretrain run; reload it with\n"
              "# perception.pretrain.load_pretrain_config(<this file>).\n")
    return header + yaml.safe_dump(to_dict(config), sort_keys=False)


def _flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(_flatten(value, full + "."))
        else:
            out[full] = value
    return out


def config_differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                       ignore: Sequence[str] = RESUME_IGNORED_KEYS) -> list[str]:
    """Dotted keys whose values differ between two config dicts, as ``key (a -> b)``.

    Args:
        saved: The config stored in a checkpoint (plain data).
        current: The current config (plain data).
        ignore: Top-level keys left out of the comparison.

    Returns:
        One description per differing key, sorted by key.
    """
    a, b = _flatten(saved), _flatten(current)
    missing = object()
    out = []
    for key in sorted(set(a) | set(b)):
        if key.split(".", 1)[0] in ignore:
            continue
        old, new = a.get(key, missing), b.get(key, missing)
        if old != new:
            show_old = "(absent)" if old is missing else json.dumps(old)
            show_new = "(absent)" if new is missing else json.dumps(new)
            out.append(f"{key} (checkpoint {show_old}, now {show_new})")
    return out


def check_resumable(saved: Mapping[str, Any], config: PretrainConfig, ckpt_dir: Path) -> None:
    """Raise ValueError naming the keys where ``config`` differs from the checkpoint's.

    The budgets and other :data:`RESUME_IGNORED_KEYS` may differ.
    """
    diffs = config_differences(saved, to_dict(config))
    if diffs:
        raise ValueError(
            f"cannot resume from {ckpt_dir}: its config differs from the current one in "
            f"{len(diffs)} key(s): " + "; ".join(diffs) + ". Use the checkpoint's config "
            f"(see {ckpt_dir / STATE_META_FILE}), start over with resume=False "
            "(--no-resume), or choose another output directory")


# --------------------------------------------------------------------------- checkpoint


@dataclass(frozen=True)
class TrainingState:
    """A pre-training checkpoint as read from disk.

    Attributes:
        step: Optimizer steps done.
        epoch: Epoch of the next batch.
        batch_in_epoch: Batches of that epoch already used.
        elapsed_s: Wall-clock seconds of all invocations so far.
        recent_losses: Losses of the current log window (for the final loss).
        config: The resolved config (plain data).
        meta: The whole description (``state.json``).
        tensors: The tensors of ``state.safetensors`` by key.
    """

    step: int
    epoch: int
    batch_in_epoch: int
    elapsed_s: float
    recent_losses: tuple[float, ...]
    config: dict[str, Any]
    meta: dict[str, Any]
    tensors: dict[str, Tensor]


def _cpu_copy(t: Tensor) -> Tensor:
    # Independent contiguous copies: safetensors refuses tensors that share storage.
    return t.detach().to("cpu", copy=True).contiguous()


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def save_training_state(directory: str | Path, objective: Objective,
                        optimizer: torch.optim.Optimizer, generator: torch.Generator, *,
                        config: PretrainConfig, step: int, epoch: int, batch_in_epoch: int,
                        elapsed_s: float, recent_losses: Sequence[float]) -> Path:
    """Write ``state.safetensors`` and ``state.json`` into ``directory``, atomically.

    Args:
        directory: The checkpoint directory (created).
        objective: Its whole ``state_dict`` is saved (online, EMA targets, heads).
        optimizer: Its tensor state is flattened to ``optim.state.<i>.<name>``; the
            hyper-parameters of its param groups go to the JSON description.
        generator: The augmentation/mask generator (state saved as ``rng.objective``).
        config: The resolved config.
        step / epoch / batch_in_epoch / elapsed_s / recent_losses: Loop position.

    Returns:
        The checkpoint directory.
    """
    directory = Path(directory)
    tensors = {OBJECTIVE_PREFIX + k: _cpu_copy(v) for k, v in objective.state_dict().items()}
    optim_state = optimizer.state_dict()
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optim_state["state"].items():
        for name, value in entries.items():
            if isinstance(value, Tensor):
                tensors[f"{OPTIM_PREFIX}{index}.{name}"] = _cpu_copy(value)
            else:
                scalars.setdefault(str(index), {})[name] = _json_value(value)
    tensors[RNG_KEY] = generator.get_state().clone()
    meta = {
        "format": STATE_FORMAT,
        "format_version": STATE_FORMAT_VERSION,
        "step": int(step),
        "epoch": int(epoch),
        "batch_in_epoch": int(batch_in_epoch),
        "elapsed_s": round(float(elapsed_s), 3),
        "recent_losses": [float(x) for x in recent_losses],
        "generators": {"objective": RNG_KEY},
        "optimizer": {
            "class": type(optimizer).__name__,
            "param_groups": [{k: _json_value(v) for k, v in group.items()}
                             for group in optim_state["param_groups"]],
            "non_tensor_state": scalars,
        },
        "num_tensors": len(tensors),
        "torch_version": torch.__version__,
        "saved_unix_s": round(time.time(), 3),
        "config": to_dict(config),
    }
    text = json.dumps(meta, indent=2, allow_nan=True) + "\n"
    directory.mkdir(parents=True, exist_ok=True)
    # The weights file carries its own description and is the commit point; state.json
    # is the readable copy written after it.
    with atomic_path(directory / STATE_WEIGHTS_FILE) as tmp:
        safetensors.torch.save_file(tensors, str(tmp),
                                    metadata={"format": "pt", _EMBEDDED_META_KEY: text})
    atomic_write_text(directory / STATE_META_FILE, text)
    return directory


def load_training_state(directory: str | Path) -> TrainingState:
    """Read a pre-training checkpoint; safetensors and JSON only, never pickle.

    The description embedded in ``state.safetensors`` is used (``state.json`` is a
    copy for people and tools), so the weights and description always belong together.

    Raises:
        CheckpointError: If the weights file is missing or corrupt or its description
            is not a supported pre-training state.
    """
    directory = Path(directory)
    path = directory / STATE_WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"pre-training checkpoint {directory} has no {STATE_WEIGHTS_FILE}")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as fh:
            header = fh.metadata() or {}
            # safe_open handles are not iterable, hence keys().
            tensors = {key: fh.get_tensor(key) for key in fh.keys()}  # noqa: SIM118
        meta = json.loads(header[_EMBEDDED_META_KEY])
    except Exception as exc:  # SafetensorError, KeyError, JSONDecodeError: all corruption
        raise CheckpointError(f"pre-training checkpoint {path} is corrupt or not a "
                              f"bulletdrive pretrain state ({type(exc).__name__}: {exc}); "
                              "delete it or start over with resume=False") from None
    if not isinstance(meta, dict) or meta.get("format") != STATE_FORMAT:
        raise CheckpointError(f"{path} does not hold a {STATE_FORMAT} description")
    version = meta.get("format_version")
    if not isinstance(version, int) or not 1 <= version <= STATE_FORMAT_VERSION:
        raise CheckpointError(f"{path} has format_version {version!r}; this version of "
                              f"bulletdrive reads 1..{STATE_FORMAT_VERSION}")
    try:
        return TrainingState(
            step=int(meta["step"]), epoch=int(meta["epoch"]),
            batch_in_epoch=int(meta["batch_in_epoch"]), elapsed_s=float(meta["elapsed_s"]),
            recent_losses=tuple(float(x) for x in meta["recent_losses"]),
            config=dict(meta["config"]), meta=meta, tensors=tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: malformed description ({exc!r})") from None


def restore_training_state(state: TrainingState, objective: Objective,
                           optimizer: torch.optim.Optimizer, generator: torch.Generator) -> None:
    """Load a checkpoint's weights, optimizer state and generator state in place.

    Raises:
        CheckpointError: If the tensors do not fit the objective or optimizer.
    """
    where = f"pre-training checkpoint (step {state.step})"
    weights = {k[len(OBJECTIVE_PREFIX):]: v for k, v in state.tensors.items()
               if k.startswith(OBJECTIVE_PREFIX)}
    try:
        objective.load_state_dict(weights, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{where}: weights do not fit the objective: {exc}") from None

    per_param: dict[int, dict[str, Any]] = {}
    for key, value in state.tensors.items():
        if key.startswith(OPTIM_PREFIX):
            index, name = key[len(OPTIM_PREFIX):].split(".", 1)
            per_param.setdefault(int(index), {})[name] = value
    saved_optim = state.meta.get("optimizer", {})
    for index, entries in saved_optim.get("non_tensor_state", {}).items():
        per_param.setdefault(int(index), {}).update(entries)
    current_groups = optimizer.state_dict()["param_groups"]
    saved_groups = saved_optim.get("param_groups", [])
    if len(saved_groups) != len(current_groups):
        raise CheckpointError(f"{where}: {len(saved_groups)} optimizer param groups, the "
                              f"optimizer has {len(current_groups)}")
    # JSON turned tuples (AdamW betas) into lists; give them their original type back.
    groups = [{k: tuple(v) if isinstance(cur.get(k), tuple) and isinstance(v, list) else v
               for k, v in saved.items()} for saved, cur in zip(saved_groups, current_groups,
                                                                 strict=True)]
    try:
        optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{where}: optimizer state does not fit: {exc}") from None

    rng = state.tensors.get(RNG_KEY)
    if rng is None or rng.dtype != torch.uint8:
        raise CheckpointError(f"{where}: missing or malformed generator state '{RNG_KEY}'")
    generator.set_state(rng)


def remove_training_state(directory: str | Path) -> None:
    """Delete the pre-training state files of a checkpoint directory, if present."""
    directory = Path(directory)
    for name in (STATE_WEIGHTS_FILE, STATE_META_FILE):
        (directory / name).unlink(missing_ok=True)


__all__ = [
    "CHECKPOINT_DIR",
    "CONFIG_FILE",
    "CONFIG_GROUP",
    "ENCODER_DIR",
    "RESUME_IGNORED_KEYS",
    "STATE_META_FILE",
    "STATE_WEIGHTS_FILE",
    "TB_DIR",
    "CheckpointError",
    "DatasetError",
    "PretrainConfig",
    "PretrainResult",
    "TrainingState",
    "check_image_size",
    "check_resumable",
    "config_differences",
    "load_pretrain_config",
    "load_training_state",
    "pretrain",
    "remove_training_state",
    "resolve_device",
    "restore_training_state",
    "save_training_state",
]
