"""Human-readable tables for CLI output (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_bench(results: dict[str, Any]) -> None:
    """Print ``bulletdrive bench`` results: env figures, then one row per worker count for
    the batched rollouts and the Ray actors, so that scaling reads at a glance."""
    table = Table(title="bulletdrive bench")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for name, value in results.items():
        if name in ("rollouts", "ray_rollouts"):
            continue
        if isinstance(value, dict):
            for key, v in value.items():
                table.add_row(f"{name}.{key}", _fmt(v))
        else:
            table.add_row(name, _fmt(value))
    console = Console()
    console.print(table)
    if "rollouts" in results:
        cfg = results["rollouts"]["config"]
        rows = Table(title=f"batched rollouts: {cfg['env_id']} {cfg['action_mode']}, frozen "
                           f"{cfg['encoder']} on {cfg['device']}")
        for col in ("workers", "env steps/s", "each round", "speed-up vs 1",
                    "ms / vector step", "ms encoder / step", "GPU busy", "GPU util %"):
            rows.add_column(col, justify="right")
        for r in results["rollouts"]["results"]:
            busy = r.get("device_busy_fraction")
            each = ", ".join(f"{v:.1f}" for v in r.get("env_steps_per_s_runs", ()))
            rows.add_row(str(r["num_envs"]), _fmt(r["env_steps_per_s"]), each,
                         _fmt(r["speedup_vs_1"]), _fmt(r["ms_per_vector_step"]),
                         _fmt(r["ms_encoder_per_step"]),
                         "-" if busy is None else f"{100 * busy:.0f} %",
                         _fmt(r.get("gpu_utilization_percent")))
        console.print(rows)
    if "ray_rollouts" in results:
        rows = Table(title="Ray actors (one env each, no encoder)")
        for col in ("actors", "env steps/s", "speed-up vs 1"):
            rows.add_column(col, justify="right")
        for r in results["ray_rollouts"]["results"]:
            rows.add_row(str(r["num_actors"]), _fmt(r["env_steps_per_s"]),
                         _fmt(r["speedup_vs_1"]))
        console.print(rows)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)
