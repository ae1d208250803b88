"""Ray backend: the same episodes as local runs (byte-identical metrics), clear errors."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest

from cli.main import main
from evaluation.distributed import map_episodes
from evaluation.runner import evaluate

ray = pytest.importorskip("ray")

REPS = 200


def _free_port() -> int:
    """A local port nobody listens on (bound and released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _square(x: int) -> int:
    return x * x


@pytest.fixture()
def local_ray() -> object:
    """A small local Ray instance for one test (shut down afterwards)."""
    ray.init(num_cpus=2, include_dashboard=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


@pytest.mark.slow
def test_ray_matches_local(local_ray: object, tmp_path: Path) -> None:
    # A library function: workers import it by name (a test module is not importable there).
    assert sorted(map_episodes(json.dumps, [1, 2, 3], "ray", workers=2)) == ["1", "2", "3"]
    kw = {"progress": False, "reps": REPS, "failure_videos": False}
    evaluate("expert", "smoke", tmp_path / "ray", workers=2, backend="ray", **kw)
    evaluate("expert", "smoke", tmp_path / "local", workers=2, backend="local", **kw)
    ray_json = (tmp_path / "ray" / "metrics.json").read_bytes()
    assert ray_json == (tmp_path / "local" / "metrics.json").read_bytes()
    assert len(list((tmp_path / "ray" / "episodes").glob("seed-*.parquet"))) == 2


def test_unreachable_address_is_one_error_line(tmp_path: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    if ray.is_initialized():  # an earlier test's instance: the address must be tried anew
        ray.shutdown()
    address = f"127.0.0.1:{_free_port()}"
    code = main(["eval", "--agent", "expert", "--suite", "smoke", "--out", str(tmp_path / "e"),
                 "--backend", "ray", "--address", address, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith("error: cannot reach the Ray cluster")
    assert address in err[0]
    assert not (tmp_path / "e" / "episodes").exists()  # refused before any work
    code = main(["benchmark", "--config", "smoke", "--out", str(tmp_path / "b"),
                 "--backend", "ray", "--address", address, "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "cannot reach the Ray cluster" in err[0]


def test_address_needs_ray_backend() -> None:
    with pytest.raises(ValueError, match="--address needs --backend ray"):
        list(map_episodes(_square, [1], "local", address="127.0.0.1:1"))
    with pytest.raises(ValueError, match="unknown backend 'dask'"):
        list(map_episodes(_square, [1], "dask"))


def test_ray_missing_is_clear(monkeypatch: pytest.MonkeyPatch) -> None:
    import builtins

    real_import = builtins.__import__

    def fake_import(name: str, *args: object, **kwargs: object) -> object:
        if name == "ray":
            raise ImportError("no ray")
        return real_import(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(builtins, "__import__", fake_import)
    with pytest.raises(ValueError, match=r"--backend ray needs Ray: pip install"):
        list(map_episodes(_square, [1], "ray"))
