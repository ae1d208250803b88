"""Trace one evaluated episode decision by decision (see :mod:`evaluation.decision_trace`).

    python scripts/decision_trace.py --agent runs/x/final --suite highway-test \\
        --seed 200017 --set action_mode=behavior [--last 20] [--json trace.json]

Prints a Markdown table of the last decisions (the action, the policy's probability of
it, the expert's choice, the lane gaps the agent measured, the expert's gap and closing
speed, events). ``--json`` writes every decision. Bad input is one ``error:`` line and
exit status 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence

from common.io import write_json_or_report
from evaluation.decision_trace import format_trace, trace_episode


def main(argv: Sequence[str] | None = None) -> int:
    """Trace, print, optionally write JSON; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agent", required=True, help="built-in name or saved agent path")
    parser.add_argument("--suite", required=True, help="suite name or YAML path")
    parser.add_argument("--seed", type=int, required=True, help="the episode's seed")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        metavar="KEY=VALUE", help="suite override (repeatable)")
    parser.add_argument("--last", type=int, default=20, help="decisions to print (0: all)")
    parser.add_argument("--json", default=None, help="write every decision to this file")
    args = parser.parse_args(argv)
    if args.last < 0:
        print(f"error: --last must be >= 0, got {args.last}", file=sys.stderr)
        return 2
    try:
        decisions = trace_episode(args.agent, args.suite, args.seed, args.overrides)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_trace(decisions, args.last or None))
    if args.json:
        return write_json_or_report(args.json, [dataclasses.asdict(d) for d in decisions])
    return 0


if __name__ == "__main__":
    sys.exit(main())
