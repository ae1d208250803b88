"""Human-readable tables for CLI output (rich)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_bench(results: dict[str, Any]) -> None:
    """Print ``bulletdrive bench`` results as a table."""
    table = Table(title="bulletdrive bench")
    table.add_column("measurement")
    table.add_column("value", justify="right")
    for name, value in results.items():
        if isinstance(value, dict):
            for key, v in value.items():
                table.add_row(f"{name}.{key}", f"{v:.3f}" if isinstance(v, float) else str(v))
        else:
            table.add_row(name, f"{value:.3f}" if isinstance(value, float) else str(value))
    Console().print(table)
