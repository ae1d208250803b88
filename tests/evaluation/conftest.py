"""Shared evaluation runs: the expert and the random policy on the ``smoke`` suite, once
per test session (tests that change a run folder copy it first)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from evaluation.report import EvalResult
from evaluation.runner import evaluate

#: Bootstrap resamples in tests (rliable's IQM interval is slow at the default 2000).
REPS = 200


@pytest.fixture(scope="session")
def expert_smoke(tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    """The expert on ``smoke``, run in this process."""
    out = tmp_path_factory.mktemp("expert_smoke")
    return evaluate("expert", "smoke", out, workers=1, progress=False, reps=REPS)


@pytest.fixture(scope="session")
def random_smoke(tmp_path_factory: pytest.TempPathFactory) -> EvalResult:
    """The random policy on ``smoke``, run by two spawned worker processes."""
    out = tmp_path_factory.mktemp("random_smoke")
    return evaluate("random", "smoke", out, workers=2, progress=False, reps=REPS)


@pytest.fixture
def copy_run(tmp_path: Path) -> Callable[[EvalResult], Path]:
    """Copy a session run's folder into this test's tmp_path (to modify it)."""

    def copy(result: EvalResult) -> Path:
        target = tmp_path / result.out_dir.name
        shutil.copytree(result.out_dir, target)
        return target

    return copy
