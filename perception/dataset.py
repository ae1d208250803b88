"""Frame datasets: camera frames with simulator labels, stored as streamable shards.

On-disk format (format version 1)
=================================

A dataset is a directory::

    <root>/
        manifest.json
        shard_00000.npz
        shard_00001.npz
        ...

``manifest.json`` is a JSON object:

``format``
    The string ``"bulletdrive.frames"``.
``format_version``
    The integer ``1``. Readers refuse newer versions.
``image_shape``
    ``[H, W, 3]`` of every frame, or ``null`` while the dataset holds no frames.
``frames_per_shard``
    The target shard size the writer used (shards end at episode boundaries, so a shard
    may be larger; the last shard of a split may be smaller).
``labels``
    The label schema: a list of objects, one per label, with ``name``, ``dtype`` (a numpy
    dtype name such as ``"float32"`` or ``"int64"``), ``shape`` (the per-frame shape,
    ``[]`` for a scalar, ``[H, W]`` for a dense map such as depth), ``kind``
    (``"regression"`` or ``"classification"``), ``num_classes`` (an integer for
    classification labels, else ``null``) and ``class_names`` (a list, possibly empty).
``shards``
    A list of objects, one per shard, with ``file`` (the file name inside the directory),
    ``split`` (e.g. ``"train"``), ``num_frames``, ``seeds`` (the episode seeds it holds),
    ``episodes`` (their global episode ids) and ``episode_lengths`` (frames per episode).
``next_episode_id``
    The next global episode id the writer will hand out.
``metadata``
    Free JSON data from the collector (for example the env config and the split rule).

Each shard ``shard_NNNNN.npz`` is written with :func:`numpy.savez` (uncompressed, so
each array can be read on its own or memory-mapped) and is read with
``np.load(..., allow_pickle=False)``. A shard holds WHOLE episodes of ONE split and
these arrays, all with the same first dimension ``N``:

``frames``
    uint8 ``(N, H, W, 3)`` RGB camera frames.
``episode``
    int64 ``(N,)`` global episode id (unique across the dataset).
``seed``
    int64 ``(N,)`` the reset seed of the episode (one episode per seed).
``step``
    int64 ``(N,)`` control step of the frame inside its episode (strictly increasing).
one array per label
    e.g. ``lane_offset_m`` float32, ``heading_error_rad`` float32, ``lead_distance_m``
    float32 (NaN when there is no lead vehicle), ``lead_rel_speed_mps`` float32,
    ``speed_mps`` float32, ``route_command`` int64, ``signal_state`` int64, and optional
    dense ``depth`` float32 ``(N, H, W)`` and ``semantic`` uint8 ``(N, H, W)``.

Writing is crash-safe: shard files and the manifest are written to a temporary name and
renamed (:func:`common.io.atomic_path`), and the manifest is rewritten after every shard,
so an interrupted collection leaves a valid dataset made of the complete shards written
so far. A shard file that is not listed in the manifest is ignored by readers.

Splits are assigned per SEED (never per frame, so that near-identical neighbouring frames
never land in both train and validation): see :func:`split_by_seed` and
:func:`explicit_split`.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from common.io import atomic_path, atomic_write_text

FORMAT_NAME = "bulletdrive.frames"
FORMAT_VERSION = 1
MANIFEST_NAME = "manifest.json"
#: Split names a dataset may have without holding data in them ("empty" rather than
#: "unknown" when asked for).
KNOWN_SPLITS: tuple[str, ...] = ("train", "val", "test")
#: Arrays every shard holds besides the labels.
META_KEYS: tuple[str, ...] = ("episode", "seed", "step")
#: Names a label may not take: the fixed shard arrays, the key the dataset adds for
#: temporal pairs, and keyword names of ``np.savez`` that would clash with array names.
RESERVED_NAMES: frozenset[str] = frozenset(
    {"frames", "frames_next", *META_KEYS, "file", "allow_pickle", "args", "kwds"})

LabelKind = Literal["regression", "classification"]

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_SHARD_RE = re.compile(r"^shard_(\d{5,})\.npz$")
_COLLECT_HINT = "create one with `bulletdrive collect`"


class DatasetError(ValueError):
    """A frame dataset is missing, corrupt, or was asked for something it does not hold."""


# --------------------------------------------------------------------------- labels


@dataclass(frozen=True)
class LabelSpec:
    """Schema of one per-frame label.

    Attributes:
        name: Array name in the shards (lower case letters, digits and underscores).
        dtype: Numpy dtype name of the stored array, e.g. ``"float32"`` or ``"int64"``.
        shape: Per-frame shape: ``()`` for a scalar, ``(H, W)`` for a dense map.
        kind: ``"regression"`` or ``"classification"``.
        num_classes: Number of classes of a classification label (values in
            ``[0, num_classes)``); ``None`` for regression.
        class_names: Optional names of the classes, ``num_classes`` of them.
    """

    name: str
    dtype: str = "float32"
    shape: tuple[int, ...] = ()
    kind: LabelKind = "regression"
    num_classes: int | None = None
    class_names: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME_RE.match(self.name):
            raise DatasetError(f"label name {self.name!r} must be lower case letters, digits "
                               "and underscores, starting with a letter")
        if self.name in RESERVED_NAMES:
            raise DatasetError(f"label name '{self.name}' is reserved; reserved names: "
                               + ", ".join(sorted(RESERVED_NAMES)))
        try:
            dt = np.dtype(self.dtype)
        except TypeError:
            raise DatasetError(f"label '{self.name}' has unknown dtype {self.dtype!r}") from None
        if dt.kind not in "biuf":
            raise DatasetError(f"label '{self.name}' dtype must be a bool, integer or float "
                               f"type, got {self.dtype!r}")
        if any((not isinstance(s, int)) or s < 1 for s in self.shape):
            raise DatasetError(f"label '{self.name}' shape must be positive integers, "
                               f"got {self.shape!r}")
        if self.kind == "classification":
            if dt.kind not in "iu":
                raise DatasetError(f"classification label '{self.name}' needs an integer "
                                   f"dtype, got {self.dtype!r}")
            if self.num_classes is None or self.num_classes < 2:
                raise DatasetError(f"classification label '{self.name}' needs num_classes "
                                   f">= 2, got {self.num_classes!r}")
            if self.class_names and len(self.class_names) != self.num_classes:
                raise DatasetError(f"label '{self.name}' has {len(self.class_names)} class "
                                   f"names for {self.num_classes} classes")
        elif self.kind == "regression":
            if self.num_classes is not None or self.class_names:
                raise DatasetError(f"regression label '{self.name}' cannot have classes")
        else:
            raise DatasetError(f"label '{self.name}' has invalid kind {self.kind!r}; valid "
                               "kinds: 'regression', 'classification'")

    @classmethod
    def regression(cls, name: str, shape: tuple[int, ...] = (),
                   dtype: str = "float32") -> LabelSpec:
        """A real-valued label (NaN allowed for "not defined", e.g. no lead vehicle)."""
        return cls(name=name, dtype=dtype, shape=tuple(shape), kind="regression")

    @classmethod
    def classification(cls, name: str, class_names: Sequence[str] = (),
                       num_classes: int | None = None, shape: tuple[int, ...] = (),
                       dtype: str = "int64") -> LabelSpec:
        """An integer class label; give ``class_names`` or ``num_classes``."""
        names = tuple(class_names)
        n = num_classes if num_classes is not None else (len(names) or None)
        return cls(name=name, dtype=dtype, shape=tuple(shape), kind="classification",
                   num_classes=n, class_names=names)

    @property
    def is_scalar(self) -> bool:
        """Whether the label is one number per frame."""
        return self.shape == ()

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data for the manifest."""
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape),
                "kind": self.kind, "num_classes": self.num_classes,
                "class_names": list(self.class_names)}

    @classmethod
    def from_json(cls, data: Any, where: str = "label") -> LabelSpec:
        """Parse :meth:`to_json` output, raising :class:`DatasetError` on bad data."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"{where} must be an object, got {data!r}")
        try:
            return cls(name=data["name"], dtype=str(data.get("dtype", "float32")),
                       shape=tuple(int(s) for s in data.get("shape", ())),
                       kind=data.get("kind", "regression"),
                       num_classes=(None if data.get("num_classes") is None
                                    else int(data["num_classes"])),
                       class_names=tuple(str(c) for c in data.get("class_names", ())))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, DatasetError):
                raise DatasetError(f"{where}: {exc}") from None
            raise DatasetError(f"{where} is malformed ({exc!r}): {data!r}") from None


# --------------------------------------------------------------------------- splits


def split_by_seed(seed: int, val_fraction: float = 0.2, salt: int = 0) -> str:
    """Assign an episode seed to ``"train"`` or ``"val"`` by a stable hash.

    The split depends only on ``(seed, salt)`` (not on Python's randomised ``hash`` or on
    collection order), so every process and every re-collection agrees, and all frames
    of an episode land in the same split.

    Args:
        seed: The episode's reset seed.
        val_fraction: Expected fraction of seeds in ``"val"``, in ``[0, 1]``.
        salt: Changes the assignment while keeping the fraction.

    Returns:
        ``"train"`` or ``"val"``.
    """
    if not 0.0 <= val_fraction <= 1.0:
        raise DatasetError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.blake2b(f"{int(salt)}:{int(seed)}".encode(), digest_size=8).digest()
    u = int.from_bytes(digest, "little") / 2.0**64
    return "val" if u < val_fraction else "train"


def explicit_split(train_seeds: Sequence[int] = (), val_seeds: Sequence[int] = (),
                   test_seeds: Sequence[int] = ()) -> Callable[[int], str]:
    """Build a ``split_of_seed`` function from explicit seed lists.

    Args:
        train_seeds / val_seeds / test_seeds: Disjoint seed lists.

    Returns:
        A function mapping a listed seed to its split; it raises :class:`DatasetError`
        for a seed in no list.

    Raises:
        DatasetError: If a seed appears in more than one list.
    """
    table: dict[int, str] = {}
    for name, seeds in (("train", train_seeds), ("val", val_seeds), ("test", test_seeds)):
        for s in seeds:
            other = table.get(int(s))
            if other is not None and other != name:
                raise DatasetError(f"seed {s} is listed in both '{other}' and '{name}'")
            table[int(s)] = name

    def split_of_seed(seed: int) -> str:
        try:
            return table[int(seed)]
        except KeyError:
            raise DatasetError(f"seed {seed} is in none of the explicit split lists") from None

    return split_of_seed


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class ShardInfo:
    """One shard as listed in the manifest."""

    file: str
    split: str
    num_frames: int
    seeds: tuple[int, ...]
    episodes: tuple[int, ...]
    episode_lengths: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        """Plain JSON data for the manifest."""
        return {"file": self.file, "split": self.split, "num_frames": self.num_frames,
                "seeds": list(self.seeds), "episodes": list(self.episodes),
                "episode_lengths": list(self.episode_lengths)}

    @classmethod
    def from_json(cls, data: Any, where: str) -> ShardInfo:
        """Parse :meth:`to_json` output, raising :class:`DatasetError` on bad data."""
        if not isinstance(data, Mapping):
            raise DatasetError(f"{where} must be an object, got {data!r}")
        try:
            info = cls(file=str(data["file"]), split=str(data["split"]),
                       num_frames=int(data["num_frames"]),
                       seeds=tuple(int(s) for s in data["seeds"]),
                       episodes=tuple(int(e) for e in data.get("episodes", ())),
                       episode_lengths=tuple(int(n) for n in data.get("episode_lengths", ())))
        except (KeyError, TypeError, ValueError) as exc:
            raise DatasetError(f"{where} is malformed ({exc!r})") from None
        if not _SHARD_RE.match(info.file) or info.num_frames < 1:
            raise DatasetError(f"{where} has an invalid file name or frame count: {data!r}")
        if info.episode_lengths and sum(info.episode_lengths) != info.num_frames:
            raise DatasetError(f"{where}: episode lengths do not add up to num_frames")
        return info


@dataclass(frozen=True)
class DatasetManifest:
    """The parsed ``manifest.json`` of a dataset at ``root``."""

    root: Path
    image_shape: tuple[int, int, int] | None
    labels: tuple[LabelSpec, ...]
    shards: tuple[ShardInfo, ...]
    next_episode_id: int = 0
    frames_per_shard: int = 2000
    metadata: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, root: str | Path) -> DatasetManifest:
        """Read and validate ``<root>/manifest.json``.

        Raises:
            DatasetError: If the directory or manifest is missing, or the manifest is not
                valid JSON or not a dataset manifest of a supported version.
        """
        root = Path(root)
        path = root / MANIFEST_NAME
        if not root.is_dir():
            raise DatasetError(f"no dataset at {root} (the directory does not exist; expected "
                               f"{MANIFEST_NAME}); {_COLLECT_HINT}")
        if not path.is_file():
            raise DatasetError(f"no dataset at {root} (expected {MANIFEST_NAME}); "
                               f"{_COLLECT_HINT}")
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise DatasetError(f"corrupt dataset manifest {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise DatasetError(f"corrupt dataset manifest {path}: not a '{FORMAT_NAME}' "
                               "manifest")
        version = data.get("format_version")
        if not isinstance(version, int) or version < 1:
            raise DatasetError(f"corrupt dataset manifest {path}: bad format_version "
                               f"{version!r}")
        if version > FORMAT_VERSION:
            raise DatasetError(f"dataset {root} has format version {version}, newer than the "
                               f"supported {FORMAT_VERSION}; update bulletdrive")
        where = f"manifest {path}"
        shape = data.get("image_shape")
        image_shape: tuple[int, int, int] | None = None
        if shape is not None:
            if (not isinstance(shape, list) or len(shape) != 3 or shape[2] != 3
                    or not all(isinstance(s, int) and s > 0 for s in shape)):
                raise DatasetError(f"corrupt {where}: image_shape must be [H, W, 3], got "
                                   f"{shape!r}")
            image_shape = (shape[0], shape[1], shape[2])
        raw_labels = data.get("labels")
        raw_shards = data.get("shards")
        if not isinstance(raw_labels, list) or not isinstance(raw_shards, list):
            raise DatasetError(f"corrupt {where}: 'labels' and 'shards' must be lists")
        labels = tuple(LabelSpec.from_json(x, f"{where}: labels[{i}]")
                       for i, x in enumerate(raw_labels))
        shards = tuple(ShardInfo.from_json(x, f"{where}: shards[{i}]")
                       for i, x in enumerate(raw_shards))
        if len({s.file for s in shards}) != len(shards):
            raise DatasetError(f"corrupt {where}: a shard file is listed twice")
        if shards and image_shape is None:
            raise DatasetError(f"corrupt {where}: shards listed but no image_shape")
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, dict):
            raise DatasetError(f"corrupt {where}: 'metadata' must be an object")
        return cls(root=root, image_shape=image_shape, labels=labels, shards=shards,
                   next_episode_id=int(data.get("next_episode_id", 0)),
                   frames_per_shard=int(data.get("frames_per_shard", 2000)),
                   metadata=metadata)

    def to_json(self) -> dict[str, Any]:
        """The manifest as plain JSON data."""
        return {
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "image_shape": list(self.image_shape) if self.image_shape else None,
            "frames_per_shard": self.frames_per_shard,
            "labels": [spec.to_json() for spec in self.labels],
            "shards": [s.to_json() for s in self.shards],
            "next_episode_id": self.next_episode_id,
            "metadata": self.metadata,
        }

    @property
    def label_names(self) -> tuple[str, ...]:
        """Names of all labels, in schema order."""
        return tuple(spec.name for spec in self.labels)

    def label(self, name: str) -> LabelSpec:
        """The schema of label ``name``.

        Raises:
            DatasetError: Listing the valid label keys when ``name`` is unknown.
        """
        for spec in self.labels:
            if spec.name == name:
                return spec
        raise DatasetError(f"unknown label key '{name}' in dataset {self.root}; valid keys: "
                           + (", ".join(self.label_names) or "(none)"))

    def splits(self) -> tuple[str, ...]:
        """Splits that hold at least one shard, sorted."""
        return tuple(sorted({s.split for s in self.shards}))

    def shards_of(self, split: str) -> tuple[ShardInfo, ...]:
        """The shards of ``split``, in manifest order.

        Raises:
            DatasetError: For an unknown split name (listing the valid ones) or a split
                without frames.
        """
        present = self.splits()
        if split not in present:
            have = ", ".join(present) or "none"
            if split in KNOWN_SPLITS:
                raise DatasetError(f"split '{split}' of dataset {self.root} is empty (0 frames);"
                                   f" splits with frames: {have}")
            valid = ", ".join(dict.fromkeys((*KNOWN_SPLITS, *present)))
            raise DatasetError(f"unknown split '{split}'; valid splits: {valid} (dataset "
                               f"{self.root} holds frames in: {have})")
        return tuple(s for s in self.shards if s.split == split)

    def num_frames(self, split: str | None = None) -> int:
        """Frames in ``split`` (all splits for ``None``); 0 for a known empty split."""
        if split is None:
            return sum(s.num_frames for s in self.shards)
        if split in KNOWN_SPLITS and split not in self.splits():
            return 0
        return sum(s.num_frames for s in self.shards_of(split))

    def seeds(self, split: str | None = None) -> tuple[int, ...]:
        """Episode seeds in ``split`` (all splits for ``None``), in manifest order."""
        return tuple(seed for s in self.shards if split is None or s.split == split
                     for seed in s.seeds)

    def check_keys(self, keys: Sequence[str] | None) -> tuple[str, ...]:
        """Validate label keys (``None`` = all labels) and return them as a tuple."""
        if keys is None:
            return self.label_names
        if isinstance(keys, str):
            keys = (keys,)
        for k in keys:
            self.label(k)
        return tuple(dict.fromkeys(keys))


def read_manifest(root: str | Path) -> DatasetManifest:
    """Read the manifest of the dataset at ``root`` (see :meth:`DatasetManifest.load`)."""
    return DatasetManifest.load(root)


def num_frames(root: str | Path, split: str) -> int:
    """Number of frames in ``split`` of the dataset at ``root``, from its manifest."""
    return read_manifest(root).num_frames(split)


# --------------------------------------------------------------------------- shard I/O


def _shard_path(manifest: DatasetManifest, info: ShardInfo) -> Path:
    path = manifest.root / info.file
    if not path.is_file():
        raise DatasetError(f"shard file {path} listed in the manifest is missing; the dataset "
                           f"is incomplete (re-collect it, or {_COLLECT_HINT} with --resume)")
    return path


def load_shard(manifest: DatasetManifest, info: ShardInfo,
               keys: Sequence[str]) -> dict[str, np.ndarray]:
    """Read the arrays ``keys`` of one shard fully into memory.

    Args:
        manifest: The dataset's manifest.
        info: The shard, one of ``manifest.shards``.
        keys: Array names: ``"frames"``, ``"episode"``, ``"seed"``, ``"step"`` or labels.

    Returns:
        The arrays by name, each with ``info.num_frames`` rows.

    Raises:
        DatasetError: Naming the shard if it is missing, unreadable, lacks an array, or
            an array has the wrong length, dtype or shape.
    """
    path = _shard_path(manifest, info)
    out: dict[str, np.ndarray] = {}
    try:
        with np.load(path, allow_pickle=False) as npz:
            if not isinstance(npz, np.lib.npyio.NpzFile):
                raise DatasetError(f"corrupt shard {path}: not an .npz archive")
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DatasetError(f"corrupt shard {path}: missing arrays {missing}")
            for k in keys:
                out[k] = npz[k]
    except DatasetError:
        raise
    except Exception as exc:  # any read failure (zip, CRC, header, truncation) = corruption
        raise DatasetError(f"corrupt shard {path}: {type(exc).__name__}: {exc}") from exc
    for k, arr in out.items():
        _check_array(manifest, path, k, arr, info.num_frames)
    return out


def _expected(manifest: DatasetManifest, key: str) -> tuple[np.dtype[Any], tuple[int, ...]]:
    if key == "frames":
        assert manifest.image_shape is not None
        return np.dtype(np.uint8), manifest.image_shape
    if key in META_KEYS:
        return np.dtype(np.int64), ()
    spec = manifest.label(key)
    return np.dtype(spec.dtype), spec.shape


def _check_array(manifest: DatasetManifest, path: Path, key: str, arr: np.ndarray,
                 n: int) -> None:
    dtype, shape = _expected(manifest, key)
    if arr.dtype != dtype or arr.shape != (n, *shape):
        raise DatasetError(f"corrupt shard {path}: array '{key}' has dtype {arr.dtype} and "
                           f"shape {arr.shape}, expected {dtype} and {(n, *shape)}")


def _memmap_member(path: Path, key: str) -> np.ndarray | None:
    """Memory-map array ``key`` of an uncompressed ``.npz`` without reading it.

    Returns ``None`` when the member is compressed or its header version is not 1.0/2.0
    (then it has to be read normally).
    """
    with zipfile.ZipFile(path) as zf:
        zinfo = zf.getinfo(f"{key}.npy")
        if zinfo.compress_type != zipfile.ZIP_STORED:
            return None
        header_offset = zinfo.header_offset
    with open(path, "rb") as fh:
        fh.seek(header_offset)
        local = fh.read(30)
        if len(local) != 30 or local[:4] != b"PK\x03\x04":
            raise ValueError(f"bad zip local header for {key}.npy")
        name_len = int.from_bytes(local[26:28], "little")
        extra_len = int.from_bytes(local[28:30], "little")
        fh.seek(header_offset + 30 + name_len + extra_len)
        version = np.lib.format.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fh)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fh)
        else:
            return None  # a header layout this reader does not parse: read normally
        offset = fh.tell()
    if dtype.hasobject:
        raise ValueError(f"{key}.npy holds Python objects")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset + nbytes > path.stat().st_size:
        raise ValueError(f"{key}.npy is truncated")
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=tuple(shape),
                     order="F" if fortran else "C")


def _open_frames(manifest: DatasetManifest, info: ShardInfo) -> np.ndarray:
    """The ``frames`` array of a shard, memory-mapped where possible."""
    path = _shard_path(manifest, info)
    try:
        arr = _memmap_member(path, "frames")
    except Exception as exc:  # same rule as load_shard: unreadable means corrupt
        raise DatasetError(f"corrupt shard {path}: {type(exc).__name__}: {exc}") from exc
    if arr is None:
        return load_shard(manifest, info, ("frames",))["frames"]
    _check_array(manifest, path, "frames", arr, info.num_frames)
    return arr


def iter_frame_chunks(root: str | Path, split: str, chunk: int = 512,
                      max_frames: int | None = None) -> Iterator[np.ndarray]:
    """Stream the frames of ``split`` in stored order, ``chunk`` frames at a time.

    Frames are memory-mapped from the shards, so only the chunk being handed out is read.
    The order matches :func:`load_split_arrays` (manifest order, stored order inside a
    shard); a chunk never spans two shards, so some chunks are shorter than ``chunk``.

    Args:
        root: Dataset directory.
        split: Split name.
        chunk: Maximum frames per chunk.
        max_frames: Stop after this many frames (``None`` = all).

    Yields:
        uint8 arrays ``(n, H, W, 3)`` with ``1 <= n <= chunk`` (fresh copies).
    """
    if chunk < 1:
        raise DatasetError(f"chunk must be >= 1, got {chunk}")
    manifest = read_manifest(root)
    shards = manifest.shards_of(split)
    remaining = math.inf if max_frames is None else int(max_frames)
    for info in shards:
        if remaining <= 0:
            return
        frames = _open_frames(manifest, info)
        n = int(min(info.num_frames, remaining))
        for start in range(0, n, chunk):
            yield np.array(frames[start:min(start + chunk, n)])
        remaining -= n
        del frames


def load_split_arrays(root: str | Path, split: str, keys: Sequence[str] | None = None,
                      max_frames: int | None = None) -> dict[str, np.ndarray]:
    """Load label arrays of a whole split into memory (for probes and analysis).

    Frames are not loaded (use :func:`iter_frame_chunks`, which yields them in the same
    order) unless ``"frames"`` is named in ``keys``.

    Args:
        root: Dataset directory.
        split: Split name.
        keys: Label names (``None`` = all labels); may include ``"frames"``.
        max_frames: Keep only the first this many frames (``None`` = all).

    Returns:
        ``episode``, ``seed``, ``step`` and each key, concatenated over the split's shards.

    Raises:
        DatasetError: For an unknown split or key, an empty split, or a bad shard.
    """
    manifest = read_manifest(root)
    shards = manifest.shards_of(split)
    want_frames = keys is not None and "frames" in keys
    labels = manifest.check_keys(None if keys is None else [k for k in keys if k != "frames"])
    names = (*META_KEYS, *labels, *(("frames",) if want_frames else ()))
    parts: dict[str, list[np.ndarray]] = {k: [] for k in names}
    remaining = math.inf if max_frames is None else int(max_frames)
    for info in shards:
        if remaining <= 0:
            break
        arrays = load_shard(manifest, info, names)
        n = int(min(info.num_frames, remaining))
        for k in names:
            parts[k].append(arrays[k][:n])
        remaining -= n
    return {k: np.concatenate(v) if v else np.zeros((0, *_expected(manifest, k)[1]),
                                                    dtype=_expected(manifest, k)[0])
            for k, v in parts.items()}


# --------------------------------------------------------------------------- writer


@dataclass
class _Episode:
    seed: int
    episode: int
    frames: np.ndarray
    steps: np.ndarray
    labels: dict[str, np.ndarray]


class ShardWriter:
    """Append whole episodes to a dataset directory, one split per shard.

    Episodes are buffered per split and written as a shard once a split's buffer holds
    at least ``frames_per_shard`` frames; :meth:`close` writes what is left. After every
    shard the manifest is rewritten (atomically), so a crash loses at most the buffered
    episodes and the dataset on disk stays valid. Use as a context manager: on leaving
    the block (also through an exception) the buffered complete episodes are written.

    Args:
        out_dir: Dataset directory (created if needed).
        label_schema: The labels every episode carries.
        frames_per_shard: Target frames per shard (shards end at episode boundaries).
        split_of_seed: Maps an episode seed to its split name (default
            :func:`split_by_seed`).
        resume: Reopen an existing dataset and append to it (the label schema must
            match); without it an existing dataset is an error.
        metadata: JSON data stored in the manifest (e.g. env config, split rule); on
            resume, ``None`` keeps the stored metadata.

    Raises:
        DatasetError: If a dataset exists and ``resume`` is false, or the schema differs
            from the one on disk when resuming.
    """

    def __init__(self, out_dir: str | Path, label_schema: Sequence[LabelSpec],
                 frames_per_shard: int = 2000,
                 split_of_seed: Callable[[int], str] = split_by_seed, *,
                 resume: bool = False, metadata: Mapping[str, Any] | None = None) -> None:
        if frames_per_shard < 1:
            raise DatasetError(f"frames_per_shard must be >= 1, got {frames_per_shard}")
        schema = tuple(label_schema)
        names = [s.name for s in schema]
        if len(set(names)) != len(names):
            raise DatasetError(f"label schema has duplicate names: {names}")
        if metadata is not None:
            try:
                json.dumps(dict(metadata), allow_nan=False)
            except (TypeError, ValueError) as exc:
                raise DatasetError(f"dataset metadata must be plain JSON data: {exc}") from None
        self.root = Path(out_dir)
        self.frames_per_shard = int(frames_per_shard)
        self.split_of_seed = split_of_seed
        self._buffers: dict[str, list[_Episode]] = {}
        self._closed = False
        existing = (self.root / MANIFEST_NAME).exists()
        if existing and not resume:
            raise DatasetError(f"a dataset already exists at {self.root}; pass resume=True "
                               "to continue it or choose another directory")
        if existing:
            old = DatasetManifest.load(self.root)
            if old.labels != schema:
                raise DatasetError(
                    f"cannot resume dataset {self.root}: its label schema "
                    f"({', '.join(old.label_names)}) differs from the requested one "
                    f"({', '.join(names)})")
            self._manifest = DatasetManifest(
                root=self.root, image_shape=old.image_shape, labels=schema, shards=old.shards,
                next_episode_id=old.next_episode_id, frames_per_shard=self.frames_per_shard,
                metadata=dict(metadata) if metadata is not None else old.metadata)
        else:
            self._manifest = DatasetManifest(
                root=self.root, image_shape=None, labels=schema, shards=(),
                frames_per_shard=self.frames_per_shard,
                metadata=dict(metadata) if metadata is not None else {})
        self._completed: set[int] = set(self._manifest.seeds())
        # Never reuse the name of a shard that reached the disk but not the manifest
        # (crash between the two renames): readers ignore it, and it stays untouched.
        taken = [int(m.group(1)) for p in (self.root.iterdir() if self.root.is_dir() else ())
                 if (m := _SHARD_RE.match(p.name))]
        taken += [int(m.group(1)) for s in self._manifest.shards
                  if (m := _SHARD_RE.match(s.file))]
        self._next_shard = max(taken, default=-1) + 1
        self._write_manifest()

    # -- queries

    @property
    def manifest(self) -> DatasetManifest:
        """The manifest as last written."""
        return self._manifest

    def completed_seeds(self) -> frozenset[int]:
        """Seeds whose episodes are in shards on disk (a collector can skip them)."""
        return frozenset(self._completed)

    def pending_seeds(self) -> frozenset[int]:
        """Seeds of buffered episodes, not yet on disk."""
        return frozenset(ep.seed for buf in self._buffers.values() for ep in buf)

    @property
    def buffered_frames(self) -> int:
        """Frames waiting in the split buffers."""
        return sum(len(ep.frames) for buf in self._buffers.values() for ep in buf)

    # -- writing

    def add_episode(self, seed: int, frames: np.ndarray, labels: Mapping[str, np.ndarray],
                    steps: np.ndarray | None = None) -> str:
        """Buffer one complete episode; write a shard when its split's buffer is full.

        Args:
            seed: The episode's reset seed (each seed at most once per dataset).
            frames: uint8 ``(N, H, W, 3)``.
            labels: One array per schema label, each ``(N, *shape)``; values are cast to
                the schema dtype (float to integer casts are refused).
            steps: Control step of each frame, strictly increasing (default
                ``0..N-1``).

        Returns:
            The split the episode went to.

        Raises:
            DatasetError: On a closed writer, a repeated seed, or arrays that do not
                match the schema (nothing is buffered then).
        """
        if self._closed:
            raise DatasetError("add_episode() on a closed ShardWriter")
        seed = int(seed)
        if seed in self._completed or seed in self.pending_seeds():
            raise DatasetError(f"seed {seed} is already in dataset {self.root}")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
            raise DatasetError(f"frames must be uint8 (N, H, W, 3), got {frames.dtype} "
                               f"{frames.shape}")
        n = len(frames)
        if n < 1:
            raise DatasetError(f"episode of seed {seed} has no frames")
        image_shape = (int(frames.shape[1]), int(frames.shape[2]), 3)
        if self._manifest.image_shape is not None and image_shape != self._manifest.image_shape:
            raise DatasetError(f"frames of seed {seed} are {image_shape}, the dataset holds "
                               f"{self._manifest.image_shape}")
        step_arr = np.arange(n, dtype=np.int64) if steps is None else np.asarray(steps)
        if step_arr.shape != (n,) or step_arr.dtype.kind not in "iu":
            raise DatasetError(f"steps must be integers of shape ({n},), got {step_arr.dtype} "
                               f"{step_arr.shape}")
        step_arr = step_arr.astype(np.int64)
        if step_arr[0] < 0 or np.any(np.diff(step_arr) <= 0):
            raise DatasetError("steps must be non-negative and strictly increasing")
        clean = self._check_labels(seed, n, labels)
        split = self.split_of_seed(seed)
        if not isinstance(split, str) or not _NAME_RE.match(split):
            raise DatasetError(f"split_of_seed({seed}) returned {split!r}; a split name must be "
                               "lower case letters, digits and underscores")
        if self._manifest.image_shape is None:
            self._manifest = _replace(self._manifest, image_shape=image_shape)
        episode_id = self._manifest.next_episode_id
        self._manifest = _replace(self._manifest, next_episode_id=episode_id + 1)
        # Copy: the caller may reuse its buffers for the next episode.
        self._buffers.setdefault(split, []).append(
            _Episode(seed=seed, episode=episode_id, frames=np.array(frames), steps=step_arr,
                     labels=clean))
        if sum(len(ep.frames) for ep in self._buffers[split]) >= self.frames_per_shard:
            self._flush(split)
        return split

    def _check_labels(self, seed: int, n: int,
                      labels: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = self._manifest.label_names
        missing = [k for k in names if k not in labels]
        extra = [k for k in labels if k not in names]
        if missing or extra:
            raise DatasetError(f"labels of seed {seed} do not match the schema: missing "
                               f"{missing}, unexpected {extra}; schema: {', '.join(names)}")
        out: dict[str, np.ndarray] = {}
        for spec in self._manifest.labels:
            arr = np.asarray(labels[spec.name])
            if arr.shape != (n, *spec.shape):
                raise DatasetError(f"label '{spec.name}' of seed {seed} has shape {arr.shape}, "
                                   f"expected {(n, *spec.shape)}")
            dtype = np.dtype(spec.dtype)
            if not np.can_cast(arr.dtype, dtype, casting="same_kind"):
                raise DatasetError(f"label '{spec.name}' of seed {seed} has dtype {arr.dtype}, "
                                   f"which does not cast to {dtype}")
            if spec.kind == "classification":
                assert spec.num_classes is not None
                if arr.size and (arr.min() < 0 or arr.max() >= spec.num_classes):
                    raise DatasetError(f"label '{spec.name}' of seed {seed} has values outside "
                                       f"[0, {spec.num_classes})")
            out[spec.name] = arr.astype(dtype, copy=True)
        return out

    def _flush(self, split: str) -> None:
        episodes = self._buffers.pop(split, [])
        if not episodes:
            return
        name = f"shard_{self._next_shard:05d}.npz"
        arrays: dict[str, np.ndarray] = {
            "frames": np.concatenate([ep.frames for ep in episodes]),
            "episode": np.concatenate([np.full(len(ep.frames), ep.episode, dtype=np.int64)
                                       for ep in episodes]),
            "seed": np.concatenate([np.full(len(ep.frames), ep.seed, dtype=np.int64)
                                    for ep in episodes]),
            "step": np.concatenate([ep.steps for ep in episodes]),
        }
        for spec in self._manifest.labels:
            arrays[spec.name] = np.concatenate([ep.labels[spec.name] for ep in episodes])
        try:
            with atomic_path(self.root / name) as tmp, open(tmp, "wb") as fh:
                np.savez(fh, allow_pickle=False, **arrays)
                fh.flush()
                os.fsync(fh.fileno())
        except BaseException:
            # Keep the episodes so that close() (or a retry) can still write them.
            self._buffers[split] = episodes + self._buffers.get(split, [])
            raise
        self._next_shard += 1
        info = ShardInfo(file=name, split=split, num_frames=len(arrays["frames"]),
                         seeds=tuple(ep.seed for ep in episodes),
                         episodes=tuple(ep.episode for ep in episodes),
                         episode_lengths=tuple(len(ep.frames) for ep in episodes))
        self._manifest = _replace(self._manifest, shards=(*self._manifest.shards, info))
        self._completed.update(info.seeds)
        self._write_manifest()

    def _write_manifest(self) -> None:
        atomic_write_text(self.root / MANIFEST_NAME,
                          json.dumps(self._manifest.to_json(), indent=1) + "\n")

    def flush(self) -> None:
        """Write every non-empty split buffer as a shard now."""
        for split in sorted(self._buffers):
            self._flush(split)

    def close(self) -> None:
        """Write the buffered episodes; later :meth:`add_episode` calls fail."""
        if not self._closed:
            self.flush()
            self._closed = True

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc is None:
            self.close()
            return
        # Leaving through an exception: the buffered episodes are complete, so keep them,
        # but never let a second failure here hide the original one.
        try:
            self.close()
        except Exception:
            self._closed = True


def _replace(manifest: DatasetManifest, **changes: Any) -> DatasetManifest:
    return replace(manifest, **changes)


# --------------------------------------------------------------------------- reader


def temporal_pairs(episode: np.ndarray, step: np.ndarray, k: int) -> tuple[np.ndarray,
                                                                            np.ndarray]:
    """Index pairs ``(i, j)`` where frame ``j`` is ``k`` steps after frame ``i``.

    Args:
        episode: Episode id per frame.
        step: Step per frame (unique within an episode).
        k: Step offset, >= 1.

    Returns:
        ``(src, dst)`` int64 index arrays, ``src`` ascending; frames without a partner
        ``k`` steps later in the same episode are left out.
    """
    n = len(step)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    _, ep_idx = np.unique(episode, return_inverse=True)
    # One integer key per (episode, step); the span leaves room for step + k, so a
    # target key never reaches into the next episode.
    span = int(step.max()) + k + 1
    keys = ep_idx.astype(np.int64) * span + step.astype(np.int64)
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    pos = np.minimum(np.searchsorted(sorted_keys, keys + k), n - 1)
    found = sorted_keys[pos] == keys + k
    return np.nonzero(found)[0].astype(np.int64), order[pos[found]].astype(np.int64)


class FrameDataset(IterableDataset[dict[str, torch.Tensor]]):
    """Stream the frames of one split, shard by shard, as dicts of tensors.

    Each item holds ``frames`` (uint8 ``(H, W, 3)``), ``episode``, ``seed``, ``step``
    (int64 scalars), the requested labels (tensors of the label's dtype and shape), and
    with ``temporal_offset_k`` also ``frames_next``: the frame ``k`` steps later in the
    same episode (frames without such a partner are skipped), as the ATC objective needs.

    Order: each epoch the shard order is permuted (``shuffle_shards``) with a generator
    seeded by ``(seed, epoch)``; with several DataLoader workers, worker ``w`` of ``W``
    takes every W-th shard of that order, so each frame is yielded once per epoch. Inside
    a shard frames are permuted, then pass through a shuffle buffer of
    ``shuffle_buffer`` samples that mixes neighbouring shards. At most one shard is held
    in memory per worker, plus the buffer (samples are copied out of the shard).
    ``shuffle_buffer=0`` turns off frame shuffling (stored order). Call
    :meth:`set_epoch` before each epoch for a new order (with ``persistent_workers`` the
    workers keep the epoch they were started with).

    Args:
        root: Dataset directory.
        split: Split name, e.g. ``"train"``.
        keys: Labels to return (``None`` = all labels).
        shuffle_shards: Permute the shard order each epoch.
        shuffle_buffer: Samples in the cross-shard shuffle buffer (0 = no shuffling).
        seed: Non-negative seed of the shuffling generators.
        temporal_offset_k: Step offset of ``frames_next`` (``None`` = no pairs).

    Raises:
        DatasetError: For a missing or corrupt manifest, a missing shard file, an unknown
            split or label key, or an empty split.
    """

    def __init__(self, root: str | Path, split: str = "train",
                 keys: Sequence[str] | None = None, shuffle_shards: bool = True,
                 shuffle_buffer: int = 1024, seed: int = 0,
                 temporal_offset_k: int | None = None) -> None:
        super().__init__()
        self.manifest = read_manifest(root)
        self.split = split
        self.shards = self.manifest.shards_of(split)
        self.keys = self.manifest.check_keys(keys)
        for info in self.shards:
            _shard_path(self.manifest, info)  # fail now, not inside a worker
        if shuffle_buffer < 0:
            raise DatasetError(f"shuffle_buffer must be >= 0, got {shuffle_buffer}")
        if seed < 0:
            raise DatasetError(f"seed must be >= 0, got {seed}")
        if temporal_offset_k is not None and temporal_offset_k < 1:
            raise DatasetError(f"temporal_offset_k must be >= 1, got {temporal_offset_k}")
        self.shuffle_shards = shuffle_shards
        self.shuffle_buffer = int(shuffle_buffer)
        self.seed = int(seed)
        self.temporal_offset_k = temporal_offset_k
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the shuffling order of epoch ``epoch`` (>= 0)."""
        if epoch < 0:
            raise DatasetError(f"epoch must be >= 0, got {epoch}")
        self.epoch = int(epoch)

    def num_frames(self) -> int:
        """Frames in this split according to the manifest.

        With ``temporal_offset_k`` fewer samples are yielded (the last ``k`` steps of each
        episode have no partner).
        """
        return sum(s.num_frames for s in self.shards)

    def shard_order(self, worker_id: int = 0, num_workers: int = 1) -> list[ShardInfo]:
        """The shards worker ``worker_id`` of ``num_workers`` reads this epoch, in order."""
        # Same generator in every worker, so that the workers partition one permutation.
        rng = np.random.default_rng([self.seed, self.epoch])
        n = len(self.shards)
        order = rng.permutation(n) if self.shuffle_shards else np.arange(n)
        return [self.shards[i] for i in order[worker_id::num_workers]]

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        rng = np.random.default_rng([self.seed, self.epoch, wid, nw, 1])
        names = ("frames", *META_KEYS, *self.keys)
        buffer: list[dict[str, torch.Tensor]] = []
        for shard in self.shard_order(wid, nw):
            arrays = load_shard(self.manifest, shard, names)
            if self.temporal_offset_k is None:
                src = np.arange(shard.num_frames)
                dst = None
            else:
                src, dst = temporal_pairs(arrays["episode"], arrays["step"],
                                          self.temporal_offset_k)
            if self.shuffle_buffer > 0:
                perm = rng.permutation(len(src))
                src = src[perm]
                dst = None if dst is None else dst[perm]
            for pos, i in enumerate(src.tolist()):
                sample = {k: torch.from_numpy(np.array(arrays[k][i])) for k in names}
                if dst is not None:
                    sample["frames_next"] = torch.from_numpy(np.array(arrays["frames"][dst[pos]]))
                if self.shuffle_buffer <= 1:
                    yield sample
                elif len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                else:
                    r = int(rng.integers(len(buffer)))
                    yield buffer[r]
                    buffer[r] = sample
            del arrays
        for r in rng.permutation(len(buffer)).tolist():
            yield buffer[r]


__all__ = [
    "FORMAT_VERSION",
    "KNOWN_SPLITS",
    "MANIFEST_NAME",
    "DatasetError",
    "DatasetManifest",
    "FrameDataset",
    "LabelSpec",
    "ShardInfo",
    "ShardWriter",
    "explicit_split",
    "iter_frame_chunks",
    "load_shard",
    "load_split_arrays",
    "num_frames",
    "read_manifest",
    "split_by_seed",
    "temporal_pairs",
]
