"""``--device cuda`` / ``device=cuda`` without CUDA: one ``error:`` line, exit status 2."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from cli.main import main

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available")


def test_bench_device_cuda(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "--device", "cuda", "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: device 'cuda' requested but CUDA")


def test_train_device_cuda(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--out", str(tmp_path), "--set", "device=cuda", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: device 'cuda' requested but CUDA")
