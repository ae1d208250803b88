"""The closed-loop backbone benchmark (``bulletdrive benchmark``).

It crosses encoders x self-supervised objectives x (frozen | fine-tuned) encoder use x
seeds, trains every policy with the same hyper-parameters (behaviour cloning, the cheap
low-variance track, or PPO), evaluates each on one held-out suite, and puts everything in
one table beside the baselines without pretraining (a CNN from scratch, the privileged
state vector).

:func:`run_benchmark` works in stages, each resumable:

1. Per (encoder, objective): pretrain once, seeded with ``pretrain_seed``, into
   ``out/pretrain/<encoder>_<objective>/`` and, with ``probe: true``, fit linear probes
   of the pretrained encoder (R^2 per label on the dataset's validation split) into
   ``.../probe/``. A finished pretraining (marker ``benchmark_pretrain.json`` beside its
   encoder checkpoint) is reused; an interrupted one resumes from its checkpoint.
2. Per cell (one policy: an (encoder, objective, mode) or a baseline, and a seed): train
   into ``out/cells/<cell_id>/`` and evaluate on the suite into
   ``out/cells/<cell_id>/eval/``. A cell whose ``eval/metrics.json`` exists is skipped;
   one whose agent was trained is only evaluated. Each cell folder keeps the settings it
   was run with (``cell.json``): re-running with other settings into the same folder is
   refused rather than silently mixing two experiments in one table.
3. The summary: ``out/cells.json`` (per cell, rewritten after each cell),
   ``out/benchmark.md`` (the table), ``out/benchmark.json`` and ``out/benchmark.png``
   (driving score with its confidence interval per row).

Each row of the table aggregates the episodes of all seeds of one (encoder, objective,
mode) or baseline: driving score, route completion and the at-fault collision rate (share
of episodes with ``at_fault_collisions > 0``), each as the mean over all episodes with a
percentile-bootstrap 95 % interval, and the interquartile mean with rliable's stratified
bootstrap interval over a (seeds x episodes) score matrix: every seed is evaluated on the
same suite episodes, so the episodes are rliable's "tasks" and the seeds its "runs"
(the IQM interval is the one that reflects the spread between training seeds). The
probe R^2 of the pretrained encoder stands beside its rows (for ``finetune`` rows it is
the encoder before fine-tuning).
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from tqdm import tqdm

from agents.config import TrainConfig, load_train_config
from agents.saving import file_sha256
from common.config import (
    ConfigError,
    load_config,
    parse_override,
    read_yaml,
    require,
    resolve_config_path,
    to_dict,
)
from common.io import atomic_path, atomic_write_text
from evaluation.report import EvalResult, load_result
from evaluation.statistics import DEFAULT_CONFIDENCE, bootstrap_ci, format_ci, iqm_ci
from evaluation.suites import SuiteConfig, load_suite
from perception.encoders import ENCODER_NAMES, TIMM_PREFIX, VALID_CHOICES_TEXT
from perception.objectives.config import OBJECTIVE_NAMES
from perception.pretrain import RESUME_IGNORED_KEYS, PretrainConfig, load_pretrain_config

#: ``configs/`` sub-folder of the shipped benchmark configs.
CONFIG_GROUP = "benchmark"
#: How a pretrained encoder is used by the policy (agents' observation paths).
MODES: tuple[str, ...] = ("frozen", "finetune")
#: Rows without pretraining (agents' observation paths).
BASELINES: tuple[str, ...] = ("scratch", "privileged")
#: Training algorithms of the benchmark.
TRACKS: tuple[str, ...] = ("bc", "ppo")
#: Train config keys the benchmark sets per cell (from ``track``, the mode or baseline,
#: the seed, the suite and ``env_overrides``); ``train_overrides`` may not set them.
TRAIN_MANAGED_KEYS: tuple[str, ...] = (
    "algo", "obs", "encoder", "seed", "env_id", "action_mode", "env_overrides", "init_from")
#: Pretrain config keys the benchmark sets (from the encoder, objective and
#: ``pretrain_seed``); ``pretrain_overrides`` may not set them.
PRETRAIN_MANAGED_KEYS: tuple[str, ...] = ("encoder.name", "objective.name", "seed")
#: The table's metrics: name -> (column title, per-episode metric key).
TABLE_METRICS: dict[str, str] = {
    "driving_score": "driving score",
    "route_completion": "route completion",
    "at_fault_collision_rate": "at-fault collision rate",
}
#: Metrics whose IQM gets its own column in the Markdown table (an IQM of a 0/1
#: indicator says little; it is in ``benchmark.json`` all the same).
IQM_COLUMNS: tuple[str, ...] = ("driving_score", "route_completion")
#: Seed of every bootstrap (the same files always give the same table).
BOOTSTRAP_SEED = 0

PRETRAIN_DIR = "pretrain"
CELLS_DIR = "cells"
EVAL_DIR = "eval"
PROBE_DIR = "probe"
PRETRAIN_MARKER = "benchmark_pretrain.json"
PROBE_CACHE = "benchmark_probe.json"
CELL_FILE = "cell.json"
CELLS_FILE = "cells.json"
TABLE_FILE = "benchmark.md"
JSON_FILE = "benchmark.json"
PLOT_FILE = "benchmark.png"
ENCODER_WEIGHTS = "encoder.safetensors"


# ---------------------------------------------------------------------- configuration
def _check_names(key: str, names: Sequence[str], valid: Sequence[str]) -> None:
    unknown = [n for n in names if n not in valid]
    require(not unknown, f"benchmark key '{key}': unknown name(s) "
                         f"{', '.join(map(repr, unknown))}; valid: {', '.join(valid)}")
    require(len(set(names)) == len(names), f"benchmark key '{key}' has duplicates: "
                                           f"{', '.join(names)}")


def _is_encoder_name(name: str) -> bool:
    return name in ENCODER_NAMES or (name.startswith(TIMM_PREFIX) and len(name) > len(TIMM_PREFIX))


def _override_keys(key: str, overrides: Sequence[str]) -> list[str]:
    """The dotted keys of ``key.sub=value`` overrides (ConfigError on a malformed one)."""
    out = []
    for text in overrides:
        try:
            path, _ = parse_override(text)
        except ConfigError as exc:
            raise ConfigError(f"benchmark key '{key}': {exc}") from None
        out.append(".".join(path))
    return out


def _reject_managed(key: str, overrides: Sequence[str], managed: Sequence[str],
                    why: str) -> None:
    clash = [k for k in _override_keys(key, overrides)
             if any(k == m or k.startswith(m + ".") or m.startswith(k + ".") for m in managed)]
    require(not clash, f"benchmark key '{key}' may not set {', '.join(clash)}: {why}")


@dataclass(frozen=True)
class BenchmarkConfig:
    """A benchmark matrix and the settings shared by all its cells.

    Attributes:
        name: Benchmark name (defaults to the YAML file's stem).
        description: Free text for the report.
        data: Frame dataset (``bulletdrive collect``) for pretraining and probes.
        encoders: Architectures: ``nature_cnn``, ``impala_cnn`` or ``timm:<model>``.
        objectives: Self-supervised objectives: ``curl``, ``byol``, ``mae``, ``atc``.
        modes: How the policy uses a pretrained encoder: ``frozen`` (embeddings) and/or
            ``finetune`` (trained with the policy).
        seeds: Training seeds of every policy (distinct, >= 0).
        baselines: Rows without pretraining: ``scratch`` (a Nature CNN trained from
            scratch with the policy) and/or ``privileged`` (the simulator state vector).
        track: ``bc`` (behaviour cloning from the expert: cheap, low variance) or ``ppo``.
        train_overrides: Train config overrides (``key.sub=value``, keys of
            ``agents.config.TrainConfig``) applied to every cell alike, on top of
            ``configs/agents/ppo_behavior.yaml``; the keys of
            :data:`TRAIN_MANAGED_KEYS` are set by the benchmark.
        pretrain_seed: Seed of every pretraining.
        pretrain_overrides: Pretrain config overrides (keys of
            ``perception.pretrain.PretrainConfig``), e.g. ``batch_size=256`` or
            ``max_steps=20000``; the keys of :data:`PRETRAIN_MANAGED_KEYS` are set by the
            benchmark.
        pretrain_minutes: Wall-clock budget of each pretraining invocation [min] (wins
            over a ``max_minutes`` override); ``None``: only ``max_steps`` limits it.
        suite: Evaluation suite name or YAML path (the held-out test suite).
        suite_overrides: Suite key overrides, e.g. ``action_mode=behavior`` or
            ``episodes=5``. The suite's env and action mode are also the training ones.
        env_overrides: Env config overrides of the training envs. Evaluation runs the
            suite's conditions; overrides that shape observations (``sensors.*``,
            ``camera.*``) travel with the agent into the evaluation.
        probe: Fit linear probes on each pretrained encoder and show their R^2.
        probe_labels: Labels probed (scalar labels of the dataset).
        reps: Bootstrap resamples of every confidence interval.
    """

    name: str = "benchmark"
    description: str = ""
    data: str = "data/frames"
    encoders: tuple[str, ...] = ("nature_cnn",)
    objectives: tuple[str, ...] = ("curl",)
    modes: tuple[str, ...] = ("frozen",)
    seeds: tuple[int, ...] = (0,)
    baselines: tuple[str, ...] = BASELINES
    track: Literal["bc", "ppo"] = "bc"
    train_overrides: tuple[str, ...] = ()
    pretrain_seed: int = 0
    pretrain_overrides: tuple[str, ...] = ()
    pretrain_minutes: float | None = None
    suite: str = "highway-test"
    suite_overrides: tuple[str, ...] = ()
    env_overrides: tuple[str, ...] = ()
    probe: bool = True
    probe_labels: tuple[str, ...] = ("lane_offset_m", "lead_distance_m")
    reps: int = 2000

    def __post_init__(self) -> None:
        require(bool(self.name), "benchmark key 'name' must be a non-empty string")
        bad = [e for e in self.encoders if not _is_encoder_name(e)]
        require(not bad, f"benchmark key 'encoders': unknown encoder(s) "
                         f"{', '.join(map(repr, bad))}; valid: {VALID_CHOICES_TEXT}")
        require(len(set(self.encoders)) == len(self.encoders),
                f"benchmark key 'encoders' has duplicates: {', '.join(self.encoders)}")
        _check_names("objectives", self.objectives, OBJECTIVE_NAMES)
        _check_names("modes", self.modes, MODES)
        _check_names("baselines", self.baselines, BASELINES)
        lists = {"encoders": self.encoders, "objectives": self.objectives, "modes": self.modes}
        empty = [k for k, v in lists.items() if not v]
        # An empty factor would silently drop every pretrained cell; say so instead.
        require(not empty or len(empty) == len(lists),
                f"benchmark keys {', '.join(empty)} are empty while "
                f"{', '.join(k for k in lists if k not in empty)} are not: give all three "
                "(or none, for a baselines-only run)")
        require(bool(self.encoders) or bool(self.baselines),
                "the benchmark has no cells: give encoders/objectives/modes or baselines")
        require(len(self.seeds) > 0, "benchmark key 'seeds' must list at least one seed")
        require(all(s >= 0 for s in self.seeds), f"benchmark seeds must be >= 0, got "
                                                 f"{list(self.seeds)}")
        require(len(set(self.seeds)) == len(self.seeds),
                f"benchmark key 'seeds' has duplicates: {list(self.seeds)}")
        require(self.pretrain_seed >= 0, f"benchmark key 'pretrain_seed' must be >= 0, got "
                                         f"{self.pretrain_seed}")
        require(self.pretrain_minutes is None or self.pretrain_minutes >= 0.0,
                f"benchmark key 'pretrain_minutes' must be >= 0 or null, got "
                f"{self.pretrain_minutes}")
        require(not self.encoders or bool(self.data),
                "benchmark key 'data' must name the frame dataset used for pretraining")
        require(bool(self.suite), "benchmark key 'suite' must name an evaluation suite")
        require(not self.probe or len(self.probe_labels) > 0,
                "benchmark key 'probe_labels' must list at least one label when probe is true")
        require(self.reps >= 1, f"benchmark key 'reps' must be >= 1, got {self.reps}")
        _reject_managed("train_overrides", self.train_overrides, TRAIN_MANAGED_KEYS,
                        "the benchmark sets them per cell (track, modes/baselines, seeds, "
                        "the suite's env and action mode, env_overrides)")
        _reject_managed("pretrain_overrides", self.pretrain_overrides, PRETRAIN_MANAGED_KEYS,
                        "the benchmark sets them (encoders, objectives, pretrain_seed)")
        _override_keys("suite_overrides", self.suite_overrides)
        _override_keys("env_overrides", self.env_overrides)


def load_benchmark_config(name_or_path: str | Path | Mapping[str, Any] | BenchmarkConfig |
                          None = None, overrides: Sequence[str] = ()) -> BenchmarkConfig:
    """Load a benchmark config from ``configs/benchmark/<name>.yaml``, a YAML path or a mapping.

    Args:
        name_or_path: A shipped config name (``default``, ``smoke``), a YAML path, a
            mapping, a :class:`BenchmarkConfig`, or ``None`` for ``default``.
        overrides: ``key=value`` overrides, values parsed as YAML (e.g.
            ``seeds=[0,1]``, ``data=data/frames20k``).

    Returns:
        The validated config; ``name`` defaults to the file's stem.

    Raises:
        ConfigError: Unknown config, unknown key (listing the valid ones), or an invalid
            value such as an unknown encoder / objective / mode / baseline name (listing
            the valid ones).
    """
    if isinstance(name_or_path, BenchmarkConfig):
        if not overrides:
            return name_or_path
        name_or_path = to_dict(name_or_path)
    if name_or_path is None or not isinstance(name_or_path, Mapping):
        path = resolve_config_path(name_or_path or "default", CONFIG_GROUP)
        data = read_yaml(path)
        data.setdefault("name", path.stem)
        try:
            return load_config(BenchmarkConfig, data, overrides)
        except ConfigError as exc:
            raise ConfigError(f"benchmark config '{path}': {exc}") from None
    return load_config(BenchmarkConfig, name_or_path, overrides)


# ---------------------------------------------------------------------- the plan
def slug(name: str) -> str:
    """A file-name-safe form of an encoder name (``timm:resnet18`` -> ``timm-resnet18``)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


@dataclass(frozen=True)
class PretrainJob:
    """One pretraining of the benchmark.

    Attributes:
        id: Folder name below ``out/pretrain/``: ``<encoder>_<objective>``.
        encoder / objective: What is pretrained.
        config: The resolved pretrain config.
    """

    id: str
    encoder: str
    objective: str
    config: PretrainConfig


@dataclass(frozen=True)
class Cell:
    """One policy of the benchmark: a row's method with one seed.

    Attributes:
        id: Folder name below ``out/cells/``, e.g. ``nature_cnn_curl_frozen_s0`` or
            ``privileged_s0``.
        row: The table row it belongs to: ``<encoder>/<objective>/<mode>`` or the
            baseline's name.
        mode: The agents' observation path (``frozen``, ``finetune``, ``scratch``,
            ``privileged``).
        seed: Training seed.
        encoder / objective / pretrain: The pretraining it uses (``None`` for baselines).
    """

    id: str
    row: str
    mode: str
    seed: int
    encoder: str | None = None
    objective: str | None = None
    pretrain: str | None = None

    @property
    def baseline(self) -> bool:
        """Whether the cell has no pretraining."""
        return self.pretrain is None


@dataclass(frozen=True)
class BenchmarkPlan:
    """Everything a benchmark will run, resolved and validated before anything runs.

    Attributes:
        suite: The evaluation suite with ``suite_overrides``.
        pretrains: One job per (encoder, objective), in config order.
        cells: Baseline cells first (cheap: an early sanity check), then the pretrained
            ones grouped by pretraining.
        rows: Row keys in table order: pretrained rows, then baselines.
        base_train: The train config every cell starts from (``train_overrides``
            applied, the suite's env and action mode, ``track``, ``env_overrides``).
    """

    suite: SuiteConfig
    pretrains: tuple[PretrainJob, ...]
    cells: tuple[Cell, ...]
    rows: tuple[str, ...]
    base_train: TrainConfig


def plan_benchmark(cfg: BenchmarkConfig) -> BenchmarkPlan:
    """Resolve the suite, the pretrain configs and the cells of a benchmark.

    Nothing is read but configs, so a bad override fails here, before hours of work.

    Raises:
        ConfigError: Unknown suite, invalid suite / train / pretrain override, unknown
            timm model.
    """
    suite = load_suite(cfg.suite, cfg.suite_overrides)
    try:
        base_data = to_dict(load_train_config(None, cfg.train_overrides))
        # Training happens in the env and action mode the policy is evaluated in; obs and
        # encoder are set per cell (privileged needs no encoder, so the base validates).
        base_data.update(algo=cfg.track, env_id=suite.env_id.removeprefix("bulletdrive/"),
                         action_mode=suite.action_mode, env_overrides=list(cfg.env_overrides),
                         init_from=None, obs="privileged", encoder=None)
        base_train = load_train_config(base_data)
    except ConfigError as exc:
        raise ConfigError(f"benchmark train_overrides / env_overrides: {exc}") from None
    pretrains = []
    if cfg.encoders:
        _check_timm_models(cfg.encoders)
        try:
            base_pre = to_dict(load_pretrain_config(None, cfg.pretrain_overrides))
        except ConfigError as exc:
            raise ConfigError(f"benchmark pretrain_overrides: {exc}") from None
        for enc in cfg.encoders:
            for obj in cfg.objectives:
                data = json.loads(json.dumps(base_pre))  # a deep copy of plain data
                data["encoder"]["name"] = enc
                data["objective"]["name"] = obj
                data["seed"] = cfg.pretrain_seed
                pretrains.append(PretrainJob(f"{slug(enc)}_{obj}", enc, obj,
                                             load_pretrain_config(data)))
    cells: list[Cell] = [Cell(f"{b}_s{s}", b, b, s) for b in cfg.baselines for s in cfg.seeds]
    rows: list[str] = []
    for job in pretrains:
        for mode in cfg.modes:
            row = f"{job.encoder}/{job.objective}/{mode}"
            rows.append(row)
            cells += [Cell(f"{job.id}_{mode}_s{s}", row, mode, s, job.encoder, job.objective,
                           job.id) for s in cfg.seeds]
    rows += list(cfg.baselines)
    return BenchmarkPlan(suite, tuple(pretrains), tuple(cells), tuple(rows), base_train)


def _check_timm_models(encoders: Sequence[str]) -> None:
    names = [e[len(TIMM_PREFIX):] for e in encoders if e.startswith(TIMM_PREFIX)]
    if not names:
        return
    import timm  # only when asked for: a slow import

    unknown = [n for n in names if not timm.is_model(n)]
    require(not unknown, f"benchmark key 'encoders': timm has no model(s) "
                         f"{', '.join(unknown)}; valid encoders: {VALID_CHOICES_TEXT}")


def cell_train_config(plan: BenchmarkPlan, cell: Cell, encoder_dir: Path | None) -> TrainConfig:
    """The train config of one cell: the shared one with its mode, encoder and seed."""
    data = to_dict(plan.base_train)
    data.update(obs=cell.mode, seed=cell.seed,
                encoder=str(encoder_dir) if encoder_dir is not None else None)
    return load_train_config(data)


def check_dataset(cfg: BenchmarkConfig, plan: BenchmarkPlan) -> None:
    """Check that the dataset holds the splits and labels pretraining and probes read.

    Raises:
        ConfigError: Naming the dataset and what is missing.
    """
    if not plan.pretrains:
        return
    from perception.dataset import DatasetError, read_manifest

    root = Path(cfg.data)
    if not root.is_dir():
        raise ConfigError(f"benchmark data: dataset directory '{root}' does not exist; "
                          f"collect one with `bulletdrive collect --out {root}` (or set "
                          "data=<dir>)")
    try:
        manifest = read_manifest(root)
        for split in sorted({job.config.split for job in plan.pretrains}):
            manifest.shards_of(split)
        if cfg.probe:
            from perception.probes import ProbeConfig

            probe = ProbeConfig()
            manifest.shards_of(probe.train_split)
            manifest.shards_of(probe.val_split)
            for label in cfg.probe_labels:
                manifest.label(label)
    except DatasetError as exc:
        raise ConfigError(f"benchmark data: {exc}") from None


# ---------------------------------------------------------------------- results
@dataclass
class CellResult:
    """A finished (or skipped as already finished) cell.

    Attributes:
        cell: The cell.
        dir: Its folder.
        agent_dir: The trained agent.
        eval: The evaluation result.
        skipped: Whether this call found it done and ran nothing.
        train_minutes: Training time (of the run that trained it, when skipped).
        eval_minutes: Evaluation time spent by this call.
    """

    cell: Cell
    dir: Path
    agent_dir: Path
    eval: EvalResult
    skipped: bool
    train_minutes: float = 0.0
    eval_minutes: float = 0.0

    def to_json(self) -> dict[str, Any]:
        """One entry of ``cells.json``."""
        table = _episode_frame(self.eval)
        return {
            "id": self.cell.id, "row": self.cell.row, "mode": self.cell.mode,
            "seed": self.cell.seed, "encoder": self.cell.encoder,
            "objective": self.cell.objective, "pretrain": self.cell.pretrain,
            "status": "done", "skipped": self.skipped, "dir": str(self.dir),
            "agent_dir": str(self.agent_dir), "eval_dir": str(self.eval.out_dir),
            "episodes": len(table),
            **{m: _finite_or_none(float(table[m].mean())) for m in TABLE_METRICS},
            "train_minutes": round(self.train_minutes, 2),
            "eval_minutes": round(self.eval_minutes, 2),
        }


@dataclass(frozen=True)
class BenchmarkResult:
    """What :func:`run_benchmark` produced.

    Attributes:
        config: The benchmark config.
        out_dir: Output folder.
        cells: One result per cell, in run order.
        rows: Per table row: keys ``row``, ``encoder``, ``objective``, ``mode``,
            ``baseline``, ``seeds``, ``episodes``, ``metrics`` (per metric ``mean``,
            ``ci_low``, ``ci_high``, ``iqm``, ``iqm_ci_low``, ``iqm_ci_high``) and
            ``probe`` (label -> R^2 or ``None``), as in ``benchmark.json``.
        table: The Markdown report (``benchmark.md``).
        probes: Per pretraining id: label -> R^2 (``None``: not computable).
        ran / skipped: Ids of the cells this call ran / found done.
    """

    config: BenchmarkConfig
    out_dir: Path
    cells: list[CellResult]
    rows: list[dict[str, Any]]
    table: str
    probes: dict[str, dict[str, float | None]] = field(default_factory=dict)
    ran: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()

    @property
    def markdown_path(self) -> Path:
        """``benchmark.md``."""
        return self.out_dir / TABLE_FILE

    @property
    def json_path(self) -> Path:
        """``benchmark.json``."""
        return self.out_dir / JSON_FILE

    @property
    def plot_path(self) -> Path:
        """``benchmark.png``."""
        return self.out_dir / PLOT_FILE


def _finite_or_none(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def _write_json(path: Path, data: Any) -> None:
    # allow_nan=False: NaN is not JSON; callers turn it into null first.
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"cannot read '{path}': {exc}; delete it to redo that step") from None


def _differences(a: Any, b: Any, prefix: str = "") -> list[str]:
    """Dotted keys where two nested JSON values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for key in sorted(set(a) | set(b), key=str):
            out += _differences(a.get(key), b.get(key), f"{prefix}.{key}" if prefix else key)
        return out
    return [] if a == b else [prefix or "(all)"]


def _check_same(stored: Any, current: Any, what: str, folder: Path) -> None:
    diff = _differences(stored, current)
    if diff:
        raise ConfigError(f"{what} in '{folder}' was run with other settings (differing: "
                          f"{', '.join(diff[:8])}); use another --out, or delete that folder "
                          "to redo it")


# ---------------------------------------------------------------------- stages
def _pretrain_spec(job: PretrainJob, data: Path) -> dict[str, Any]:
    # Budgets do not define the experiment: a finished pretraining is reused whatever
    # budget a re-run states (delete its folder to pretrain again).
    config = {k: v for k, v in to_dict(job.config).items() if k not in RESUME_IGNORED_KEYS}
    return {"config": config, "data": str(data.resolve())}


def ensure_pretrained(cfg: BenchmarkConfig, job: PretrainJob, out_dir: Path,
                      progress: bool) -> Path:
    """Pretrain one (encoder, objective) unless a finished run is there; its encoder dir.

    Raises:
        ConfigError: The folder holds a pretraining with other settings.
    """
    from perception.pretrain import pretrain

    run_dir = out_dir / PRETRAIN_DIR / job.id
    encoder_dir = run_dir / "encoder"
    marker = run_dir / PRETRAIN_MARKER
    spec = _pretrain_spec(job, Path(cfg.data))
    if marker.is_file() and (encoder_dir / ENCODER_WEIGHTS).is_file():
        _check_same(_read_json(marker)["spec"], spec, f"pretraining {job.id}", run_dir)
        return encoder_dir
    # Resumes from its checkpoint when interrupted (pretrain checks the config matches).
    result = pretrain(job.config, cfg.data, run_dir, max_minutes=cfg.pretrain_minutes,
                      resume=True, progress=progress)
    _write_json(marker, {"spec": spec, "steps": result.steps,
                         "final_loss": _finite_or_none(result.final_loss),
                         "total_minutes": round(result.total_minutes, 2)})
    return result.encoder_dir


def ensure_probed(cfg: BenchmarkConfig, job: PretrainJob, encoder_dir: Path, out_dir: Path
                  ) -> dict[str, float | None]:
    """Linear-probe R^2 of a pretrained encoder per label.

    The probe report goes to ``out/pretrain/<id>/probe/`` (``probes.json``, ``probes.md``);
    the scores are cached in ``probe/benchmark_probe.json`` together with the encoder's
    weights hash, the dataset and the labels, and reused while all three match.
    """
    from perception.probes import ProbeConfig, probe_checkpoints

    probe_dir = out_dir / PRETRAIN_DIR / job.id / PROBE_DIR
    cache = probe_dir / PROBE_CACHE
    key = {"encoder_sha256": file_sha256(encoder_dir / ENCODER_WEIGHTS),
           "data": str(Path(cfg.data).resolve()), "labels": list(cfg.probe_labels)}
    if cache.is_file():
        cached = _read_json(cache)
        if cached.get("key") == key:
            return {lab: cached["r2"].get(lab) for lab in cfg.probe_labels}
    report = probe_checkpoints([encoder_dir], cfg.data, probe_dir, random_reference=False,
                               seed=cfg.pretrain_seed,
                               config=ProbeConfig(labels=tuple(cfg.probe_labels)))
    row = next(iter(report.rows.values()))
    r2 = {lab: _finite_or_none(row[lab].value) for lab in cfg.probe_labels}
    _write_json(cache, {"key": key, "r2": r2})
    return r2


def _cell_spec(train_cfg: TrainConfig, suite: SuiteConfig, encoder_dir: Path | None
               ) -> dict[str, Any]:
    train = to_dict(train_cfg)
    # The encoder is identified by its weights, not its path (which moves with --out);
    # the device changes only rounding.
    train.pop("encoder", None)
    train.pop("device", None)
    return {"train": train, "suite": to_dict(suite),
            "encoder_sha256": (file_sha256(encoder_dir / ENCODER_WEIGHTS)
                               if encoder_dir is not None else None)}


def run_cell(cfg: BenchmarkConfig, plan: BenchmarkPlan, cell: Cell, encoder_dir: Path | None,
             out_dir: Path, *, workers: int = 2, progress: bool = True,
             backend: str = "local", address: str | None = None) -> CellResult:
    """Train and evaluate one cell, skipping whatever of it is already done.

    Raises:
        ConfigError: The cell folder holds a run with other settings.
    """
    from agents.train import train
    from evaluation.runner import evaluate

    cell_dir = out_dir / CELLS_DIR / cell.id
    eval_dir = cell_dir / EVAL_DIR
    train_cfg = cell_train_config(plan, cell, encoder_dir)
    spec = _cell_spec(train_cfg, plan.suite, encoder_dir)
    record_path = cell_dir / CELL_FILE
    record: dict[str, Any] = {}
    if record_path.is_file():
        record = _read_json(record_path)
        _check_same(record.get("spec"), spec, f"cell {cell.id}", cell_dir)
    # Stored relative to the cell folder, so a copied or moved output folder still works.
    agent_dir = cell_dir / record["agent_dir"] if record.get("agent_dir") else None
    if (eval_dir / "metrics.json").is_file() and agent_dir is not None:
        return CellResult(cell, cell_dir, agent_dir, load_result(eval_dir), skipped=True,
                          train_minutes=float(record.get("train_minutes", 0.0)))

    train_minutes = 0.0
    if agent_dir is None or not (agent_dir / "agent.json").is_file():
        _write_json(record_path, {"id": cell.id, "spec": spec, "agent_dir": None})
        t0 = time.perf_counter()
        trained = train(train_cfg, cell_dir, resume=True, progress=progress)
        train_minutes = (time.perf_counter() - t0) / 60.0
        agent_dir = trained.agent_dir
        rel = agent_dir.relative_to(cell_dir) if agent_dir.is_relative_to(cell_dir) else agent_dir
        _write_json(record_path, {"id": cell.id, "spec": spec, "agent_dir": str(rel),
                                  "timesteps": int(trained.num_timesteps),
                                  "train_minutes": round(train_minutes, 2)})
    t0 = time.perf_counter()
    result = evaluate(str(agent_dir), plan.suite, eval_dir, workers=workers, progress=progress,
                      reps=cfg.reps, backend=backend, address=address)
    return CellResult(cell, cell_dir, agent_dir, result, skipped=False,
                      train_minutes=train_minutes,
                      eval_minutes=(time.perf_counter() - t0) / 60.0)


# ---------------------------------------------------------------------- aggregation
def _episode_frame(result: EvalResult) -> pd.DataFrame:
    """Per episode: the suite seed and the table's metrics."""
    table = result.table()
    return pd.DataFrame({
        "episode": table["seed"].astype(int),
        "driving_score": table["driving_score"].astype(float),
        "route_completion": table["route_completion"].astype(float),
        "at_fault_collision_rate": (table["at_fault_collisions"].astype(float) > 0)
        .astype(float),
    })


def aggregate_row(results: Sequence[CellResult], reps: int,
                  confidence: float = DEFAULT_CONFIDENCE) -> dict[str, dict[str, float | None]]:
    """Mean with bootstrap CI over all episodes and IQM with rliable's interval over the
    (seeds x episodes) matrix, per table metric, of one row's cells."""
    frames = [_episode_frame(r.eval).assign(run=r.cell.seed) for r in results]
    out: dict[str, dict[str, float | None]] = {}
    for metric in TABLE_METRICS:
        if not frames:
            out[metric] = dict.fromkeys(("mean", "ci_low", "ci_high", "iqm", "iqm_ci_low",
                                         "iqm_ci_high"))
            continue
        table = pd.concat(frames, ignore_index=True)
        mean, low, high = bootstrap_ci(table[metric].to_numpy(), np.mean, reps, confidence,
                                       BOOTSTRAP_SEED)
        # rliable wants a full matrix without NaN: keep the episodes every seed scored.
        matrix = table.pivot_table(index="run", columns="episode", values=metric,
                                   aggfunc="mean").dropna(axis=1)
        point, ilow, ihigh = iqm_ci(matrix.to_numpy(dtype=np.float64), reps, confidence,
                                    BOOTSTRAP_SEED) if matrix.size else (math.nan,) * 3
        out[metric] = {k: _finite_or_none(v) for k, v in (
            ("mean", mean), ("ci_low", low), ("ci_high", high), ("iqm", point),
            ("iqm_ci_low", ilow), ("iqm_ci_high", ihigh))}
    return out


def summarize_rows(cfg: BenchmarkConfig, plan: BenchmarkPlan, results: Sequence[CellResult],
                   probes: Mapping[str, Mapping[str, float | None]]) -> list[dict[str, Any]]:
    """One entry per table row (see :attr:`BenchmarkResult.rows`)."""
    rows = []
    for row in plan.rows:
        members = [r for r in results if r.cell.row == row]
        cells = [c for c in plan.cells if c.row == row]
        first = cells[0]
        probe = dict(probes.get(first.pretrain, {})) if first.pretrain else {}
        rows.append({
            "row": row, "encoder": first.encoder, "objective": first.objective,
            "mode": first.mode, "baseline": first.baseline,
            "seeds": sorted(r.cell.seed for r in members),
            "episodes": int(sum(len(r.eval.episodes) for r in members)),
            "cells": [r.cell.id for r in members],
            "metrics": aggregate_row(members, cfg.reps),
            "probe": {lab: probe.get(lab) for lab in cfg.probe_labels} if cfg.probe else {},
        })
    return rows


def _ci_cell(entry: Mapping[str, float | None], lo: str, hi: str, point: str,
             digits: int) -> str:
    def num(key: str) -> float:
        value = entry.get(key)
        return math.nan if value is None else float(value)

    return format_ci(num(point), num(lo), num(hi), digits)


def to_markdown(cfg: BenchmarkConfig, plan: BenchmarkPlan, rows: Sequence[Mapping[str, Any]]
                ) -> str:
    """The benchmark report: a heading, the settings and the table."""
    header = ["encoder", "objective", "mode", "seeds", "episodes"]
    for metric, title in TABLE_METRICS.items():
        header.append(title)
        if metric in IQM_COLUMNS:
            header.append(f"{title} IQM")
    probe_labels = list(cfg.probe_labels) if cfg.probe else []
    header += [f"{lab} R^2" for lab in probe_labels]
    lines = ["| " + " | ".join(header) + " |",
             "|" + "|".join("---" if i < 3 else "---:" for i in range(len(header))) + "|"]
    for row in rows:
        cells = [row["encoder"] or "-", row["objective"] or "-", row["mode"],
                 str(len(row["seeds"])), str(row["episodes"])]
        for metric in TABLE_METRICS:
            entry = row["metrics"][metric]
            cells.append(_ci_cell(entry, "ci_low", "ci_high", "mean", 2))
            if metric in IQM_COLUMNS:
                cells.append(_ci_cell(entry, "iqm_ci_low", "iqm_ci_high", "iqm", 2))
        for lab in probe_labels:
            value = row["probe"].get(lab)
            cells.append("-" if row["baseline"] else "n/a" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    suite = plan.suite
    parts = [f"# Backbone benchmark: {cfg.name}", ""]
    if cfg.description:
        parts += [cfg.description, ""]
    parts += [
        f"Track `{cfg.track}` with identical hyper-parameters for every cell; suite "
        f"`{suite.name}` ({suite.env_id}, {suite.split} split, "
        f"{len(suite.episode_seeds())} episodes, `{suite.action_mode}` actions); seeds "
        f"{', '.join(map(str, cfg.seeds))}.",
        "",
        "Cells: mean over all episodes of all seeds [95 % bootstrap CI]; IQM [95 % "
        "stratified-bootstrap CI over seeds x episodes, rliable]. At-fault collision rate: "
        "share of episodes with an at-fault collision."
        + (" R^2: linear probe of the pretrained encoder on the dataset's validation split "
           "(before any fine-tuning)." if probe_labels else ""),
        "",
        *lines,
    ]
    return "\n".join(parts) + "\n"


def plot(rows: Sequence[Mapping[str, Any]], path: Path, title: str) -> Path:
    """Driving score per row: mean with its 95 % CI as error bars, IQM as an open marker."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    # A bare Figure on the Agg canvas: no pyplot state, no global backend switch.
    fig = Figure(figsize=(7.5, 1.2 + 0.45 * max(1, len(rows))))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    y = np.arange(len(rows))[::-1]  # first row on top

    def val(entry: Mapping[str, float | None], key: str) -> float:
        v = entry.get(key)
        return math.nan if v is None else float(v)

    for yi, row in zip(y, rows, strict=True):
        entry = row["metrics"]["driving_score"]
        mean, low, high = val(entry, "mean"), val(entry, "ci_low"), val(entry, "ci_high")
        color = "#888888" if row["baseline"] else "#4a78b0"
        if math.isfinite(mean):
            err = [[max(mean - low, 0.0)], [max(high - mean, 0.0)]] if math.isfinite(
                low) and math.isfinite(high) else None
            ax.errorbar([mean], [yi], xerr=err, fmt="o", color=color, capsize=3)
        point = val(entry, "iqm")
        if math.isfinite(point):
            ax.plot([point], [yi], marker="D", mfc="none", color="#d04030", linestyle="none")
    ax.set_yticks(y)
    ax.set_yticklabels([str(r["row"]) for r in rows], fontsize=8)
    ax.set_xlim(left=0.0)  # scores are in [0, 100]: bars from zero do not exaggerate gaps
    ax.set_xlabel("driving score (mean, 95 % CI; red diamond: IQM)")
    ax.set_title(title, fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    return path


# ---------------------------------------------------------------------- the run
def run_benchmark(cfg: BenchmarkConfig, out_dir: str | Path, progress: bool = True,
                  workers: int = 2, backend: str = "local",
                  address: str | None = None) -> BenchmarkResult:
    """Run (or resume) a benchmark and write its table, JSON and plot.

    Args:
        cfg: The benchmark.
        out_dir: Output folder (created; re-running into it skips what is done).
        progress: Show a progress bar over the cells (and the stages' own bars).
        workers: Parallel worker processes of each evaluation.
        backend: Where each evaluation's episodes run: ``local`` or ``ray``
            (:mod:`evaluation.distributed`; training stays in this process).
        address: Ray cluster address (``ray`` only; None: a local Ray instance).

    Returns:
        The cells' results and the table rows.

    Raises:
        ConfigError: Unknown suite or timm model, a bad train / pretrain / suite
            override, a missing or incomplete dataset, or an output folder holding
            runs with other settings. All are checked before anything is written,
            except the last, which is checked per stage.
        ValueError: From the stages (e.g. a pretraining loss that diverges).
    """
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a whole number >= 1, got {workers!r}")
    from evaluation.distributed import check_backend

    check_backend(backend, address)
    plan = plan_benchmark(cfg)
    check_dataset(cfg, plan)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    encoders: dict[str, Path] = {}
    probes: dict[str, dict[str, float | None]] = {}
    results: list[CellResult] = []
    bar = tqdm(total=len(plan.cells), desc=f"benchmark {cfg.name}", unit="cell",
               disable=not progress, dynamic_ncols=True)
    try:
        for cell in plan.cells:
            encoder_dir = None
            if cell.pretrain is not None:
                if cell.pretrain not in encoders:
                    job = next(j for j in plan.pretrains if j.id == cell.pretrain)
                    bar.set_postfix_str(f"pretrain {job.id}")
                    encoders[job.id] = ensure_pretrained(cfg, job, out, progress)
                    if cfg.probe:
                        bar.set_postfix_str(f"probe {job.id}")
                        probes[job.id] = ensure_probed(cfg, job, encoders[job.id], out)
                encoder_dir = encoders[cell.pretrain]
            bar.set_postfix_str(cell.id)
            results.append(run_cell(cfg, plan, cell, encoder_dir, out, workers=workers,
                                    progress=progress, backend=backend, address=address))
            _write_json(out / CELLS_FILE, {"benchmark": cfg.name,
                                           "cells": [r.to_json() for r in results]})
            bar.update(1)
    finally:
        bar.close()

    rows = summarize_rows(cfg, plan, results, probes)
    table = to_markdown(cfg, plan, rows)
    atomic_write_text(out / TABLE_FILE, table)
    _write_json(out / JSON_FILE, {
        "name": cfg.name, "config": to_dict(cfg), "suite": to_dict(plan.suite),
        "confidence": DEFAULT_CONFIDENCE, "bootstrap_reps": cfg.reps, "rows": rows,
        "probes": probes})
    plot(rows, out / PLOT_FILE, f"{cfg.name}: driving score on {plan.suite.name}")
    return BenchmarkResult(cfg, out, results, rows, table, probes,
                           ran=tuple(r.cell.id for r in results if not r.skipped),
                           skipped=tuple(r.cell.id for r in results if r.skipped))


__all__ = [
    "BASELINES",
    "MODES",
    "TRACKS",
    "BenchmarkConfig",
    "BenchmarkPlan",
    "BenchmarkResult",
    "Cell",
    "CellResult",
    "PretrainJob",
    "aggregate_row",
    "load_benchmark_config",
    "plan_benchmark",
    "run_benchmark",
]
