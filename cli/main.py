"""The ``bulletdrive`` command line: parses arguments and calls library functions.

Every error a user can cause (bad config key or value, unknown name, missing file)
is printed as one line ``error: ...`` with exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from common.config import ConfigError

COMPARE_CHOICES = ("highway-env",)


def _cmd_bench(args: argparse.Namespace) -> int:
    from envs.bench import run_bench

    for name in args.compare:
        if name not in COMPARE_CHOICES:
            raise ConfigError(f"unknown --compare target {name!r}; valid: "
                              f"{', '.join(COMPARE_CHOICES)}")
    if "highway-env" in args.compare:
        try:
            import highway_env  # noqa: F401
        except ImportError:
            raise ConfigError("--compare highway-env needs highway-env: "
                              "pip install highway-env (or: make bench)") from None
    if args.workers or args.ray:
        from agents.train import resolve_device

        # Checked before the env bench runs, so that a bad device fails at once.
        resolve_device(args.device)
    results = run_bench(steps=args.steps, compare=args.compare)
    if args.workers:
        from agents.rollout_bench import bench_rollouts

        results["rollouts"] = bench_rollouts(tuple(args.workers), steps=args.rollout_steps,
                                             device=args.device, compile_encoder=args.compile,
                                             repeats=args.repeats)
    if args.ray:
        from agents.rollout_bench import bench_ray_actors

        results["ray_rollouts"] = bench_ray_actors(tuple(args.ray), steps=args.rollout_steps,
                                                   address=args.address)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        from cli.report import print_bench

        print_bench(results)
    return 0


def _cmd_snapshot(args: argparse.Namespace) -> int:
    from envs.snapshot import save_snapshots
    from planning.expert import Expert

    paths = save_snapshots(args.out, env_id=args.env, seed=args.seed, steps=args.steps,
                           overrides=args.set, policy=Expert().act)
    for path in paths:
        print(path)
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from evaluation.demo import run_demo

    summary = run_demo(args.out, scale=args.scale, seed=args.seed, video_steps=args.steps,
                       progress=not args.quiet)
    print(summary["probes"])
    print(summary["comparison"])
    print(json.dumps({k: summary[k] for k in ("reports", "video", "timings_s",
                                              "total_minutes")}, indent=2))
    return 0


def _cmd_replay(args: argparse.Namespace) -> int:
    from evaluation.replay import frame_png, gui_episode, render_episode, verify_episode

    if (args.frame is None) != (args.png is None):
        raise ValueError("--frame N and --png OUT.png go together")
    if not (args.verify or args.video or args.png or args.gui):
        raise ValueError("nothing to do: give --verify, --video OUT.mp4, --frame N --png "
                         "OUT.png and/or --gui")
    code = 0
    if args.gui:
        result = gui_episode(args.episode, step_by_step=args.step)
        print(result.summary())
        code = max(code, 0 if result.ok else 1)
    if args.verify:
        result = verify_episode(args.episode, args.tolerance)
        print(result.summary())
        code = max(code, 0 if result.ok else 1)
    if args.video:
        video = render_episode(args.episode, args.video, args.start, args.end, args.fps)
        print(f"video: {video}")
    if args.png:
        print(f"frame: {frame_png(args.episode, args.frame, args.png)}")
    return code


def _cmd_collect(args: argparse.Namespace) -> int:
    from agents.collect import collect, load_collect_config

    overrides = list(args.set)
    if args.episodes is not None:
        overrides.append(f"episodes_per_env={args.episodes}")
    if args.envs:
        overrides.append("envs=[" + ", ".join(args.envs) + "]")
    cfg = load_collect_config(args.config, overrides)
    print(json.dumps(collect(cfg, args.out, progress=not args.quiet), indent=2))
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from perception.pretrain import load_pretrain_config, pretrain

    cfg = load_pretrain_config(args.config, args.set)
    result = pretrain(cfg, args.data, args.out, max_steps=args.max_steps,
                      max_minutes=args.max_minutes, resume=not args.restart,
                      progress=not args.quiet)
    print(json.dumps({"steps": result.steps, "final_loss": result.final_loss,
                      "minutes": round(result.minutes, 2),
                      "encoder": str(result.encoder_dir)}, indent=2))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from evaluation.runner import evaluate, resolve_agent
    from evaluation.suites import load_suite

    agent = resolve_agent(args.agent)
    suite = load_suite(args.suite, args.set)
    result = evaluate(agent, suite, args.out, workers=args.workers, progress=not args.quiet,
                      failure_videos=not args.no_videos, backend=args.backend,
                      address=args.address)
    print((result.out_dir / "metrics.md").read_text(), end="")
    print(f"report: {result.out_dir / 'report.html'}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from agents.config import load_train_config
    from agents.train import train

    overrides = list(args.set)
    if args.algo is not None:
        overrides.append(f"algo={args.algo}")
    if args.max_minutes is not None:
        overrides.append(f"max_minutes={args.max_minutes}")
    cfg = load_train_config(args.config, overrides)
    result = train(cfg, args.out, resume=args.resume, progress=not args.quiet)
    print(json.dumps({"agent": str(result.agent_dir), "timesteps": result.num_timesteps,
                      "resumed_from": result.resumed_from,
                      "minutes": round(result.minutes, 2)}, indent=2))
    return 0


def _cmd_benchmark(args: argparse.Namespace) -> int:
    from evaluation.benchmark import load_benchmark_config, run_benchmark

    cfg = load_benchmark_config(args.config, args.set)
    result = run_benchmark(cfg, args.out or f"out/benchmark/{cfg.name}", progress=not args.quiet,
                           workers=args.workers, backend=args.backend, address=args.address)
    print(result.table, end="")
    print(f"cells: {len(result.ran)} run, {len(result.skipped)} already done; "
          f"table: {result.markdown_path}, plot: {result.plot_path}")
    return 0


def _cmd_probe(args: argparse.Namespace) -> int:
    from perception.probes import ProbeConfig, probe_checkpoints

    cfg = ProbeConfig(max_frames=args.max_frames)
    report = probe_checkpoints(args.encoder, args.data, args.out,
                               random_reference=not args.no_random_reference, seed=args.seed,
                               config=cfg, quantize=args.quantize)
    print(report.to_markdown())
    for name, sp in report.speed.items():
        print(f"{name}: float32 {sp['float32_frames_per_s']} frames/s, int8 "
              f"{sp['int8_frames_per_s']} frames/s (x{sp['speedup']})")
    return 0


def _number(cast: Callable[[str], float], low: float, high: float | None = None, *,
            low_open: bool = False, what: str = "a number") -> Callable[[str], Any]:
    """An argparse type: ``cast(text)`` within ``[low, high]`` (``(low, ...`` if
    ``low_open``), with one message naming the range."""
    if high is None and not low_open:
        message = f"must be {what} >= {low:g}"
    else:
        bound = ("(" if low_open else "[") + f"{low:g}, " + (
            "inf)" if high is None else f"{high:g}]")
        message = f"must be {what} in {bound}"

    def parse(text: str) -> Any:
        try:
            value = cast(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{message}, got {text!r}") from None
        if not (value > low if low_open else value >= low) or (high is not None
                                                              and value > high):
            raise argparse.ArgumentTypeError(f"{message}, got {value}")
        return value

    return parse


_count = _number(int, 1, what="a whole number")
_seed = _number(int, 0, what="a whole number")
_minutes = _number(float, 0)
_scale = _number(float, 0, 10, low_open=True)


def _backend_arguments(parser: argparse.ArgumentParser) -> None:
    """The options choosing where evaluation episodes run."""
    parser.add_argument("--backend", choices=("local", "ray"), default="local",
                        help="run episodes in local worker processes or as Ray tasks")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster address (host:port of 'ray start --head', auto); "
                             "default: a local Ray instance with --workers CPUs")


def _env_arguments(parser: argparse.ArgumentParser, out: str, steps: int,
                   steps_help: str) -> None:
    """The options of commands that build and drive one env."""
    parser.add_argument("--out", default=out, help="output folder")
    parser.add_argument("--env", default="bulletdrive/Highway-v0",
                        help="env id: bulletdrive/Highway-v0 or bulletdrive/Urban-v0")
    parser.add_argument("--seed", type=_seed, default=0, help="reset seed")
    parser.add_argument("--steps", type=_count, default=steps, help=steps_help)
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="env config override, e.g. traffic.num_vehicles=30")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with all sub-commands."""
    parser = argparse.ArgumentParser(prog="bulletdrive", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    demo = sub.add_parser("demo", help="the whole stack: collect, pretrain, probe, train, "
                          "evaluate beside the expert and random, video")
    demo.add_argument("--out", default="out/demo", help="output folder (resumed if present)")
    demo.add_argument("--seed", type=_seed, default=0, help="seed of the runs and the video")
    demo.add_argument("--steps", type=_count, default=300, help="steps of the video episode")
    demo.add_argument("--scale", type=_scale, default=1.0,
                      help="multiply every budget (episodes, minutes) by this")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo)

    snap = sub.add_parser("snapshot", help="save camera and bird's-eye frames as PNG")
    _env_arguments(snap, "out/snapshot", 30, "steps to drive before the shot")
    snap.set_defaults(func=_cmd_snapshot)

    col = sub.add_parser("collect", help="record camera frames with simulator labels")
    col.add_argument("--out", default="data/frames", help="dataset folder (resumed if present)")
    col.add_argument("--config", default=None, help="collect config name or YAML path")
    col.add_argument("--envs", nargs="+", default=None, metavar="ENV_ID",
                     help="envs to drive (default from the config)")
    col.add_argument("--episodes", type=_count, default=None, help="episodes per env")
    col.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="collect config override, e.g. steer_noise=0.2")
    col.add_argument("--quiet", action="store_true", help="no progress bar")
    col.set_defaults(func=_cmd_collect)

    pre = sub.add_parser("pretrain", help="self-supervised pretraining of an encoder")
    pre.add_argument("--data", required=True, help="dataset folder (bulletdrive collect)")
    pre.add_argument("--out", default="runs/pretrain", help="run folder (resumed if present)")
    pre.add_argument("--config", default=None, help="pretrain config name or YAML path")
    pre.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                     help="config override, e.g. objective.name=byol")
    pre.add_argument("--max-steps", type=_count, default=None, help="total optimizer steps")
    pre.add_argument("--max-minutes", type=_minutes, default=None,
                     help="wall-clock budget of this invocation [min]")
    pre.add_argument("--restart", action="store_true",
                     help="ignore an existing checkpoint in --out and start over")
    pre.add_argument("--quiet", action="store_true", help="no progress bar")
    pre.set_defaults(func=_cmd_pretrain)

    tr = sub.add_parser("train", help="train a driving agent (PPO, SAC or behaviour cloning)")
    tr.add_argument("--out", default="runs/train", help="run folder")
    tr.add_argument("--config", default=None, help="train config name or YAML path")
    tr.add_argument("--algo", choices=("ppo", "sac", "bc"), default=None,
                    help="algorithm (default from the config)")
    tr.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. obs=privileged or ppo.n_steps=256")
    tr.add_argument("--max-minutes", type=_minutes, default=None,
                    help="wall-clock budget of this invocation [min]")
    tr.add_argument("--resume", action="store_true",
                    help="continue from <out>/checkpoint (same config required)")
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(func=_cmd_train)

    probe = sub.add_parser("probe", help="linear probes of frozen encoders on a dataset")
    probe.add_argument("--data", required=True, help="dataset folder (bulletdrive collect)")
    probe.add_argument("--encoder", action="append", default=[], metavar="CHECKPOINT",
                       help="encoder checkpoint folder (repeatable)")
    probe.add_argument("--out", default="out/probe", help="where probes.json/.md go")
    probe.add_argument("--no-random-reference", action="store_true",
                       help="leave out the randomly initialised reference encoder")
    probe.add_argument("--max-frames", type=_count, default=None,
                       help="frames per split at most")
    probe.add_argument("--seed", type=_seed, default=0, help="seed of the random reference")
    probe.add_argument("--quantize", action="store_true",
                       help="also probe int8-quantised copies and measure their speed")
    probe.set_defaults(func=_cmd_probe)

    ev = sub.add_parser("eval", help="evaluate an agent on a suite; record episodes, report")
    ev.add_argument("--agent", required=True, metavar="NAME_OR_PATH",
                    help="built-in policy (expert, random, keep_lane) or saved agent path")
    ev.add_argument("--suite", required=True, metavar="NAME_OR_YAML",
                    help="suite name in configs/suites/ (e.g. highway-test) or YAML path")
    ev.add_argument("--out", required=True, help="output folder (resumed if present)")
    ev.add_argument("--workers", type=_count, default=2, help="parallel worker processes")
    ev.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="suite override, e.g. episodes=5 or action_mode=behavior")
    _backend_arguments(ev)
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.add_argument("--no-videos", action="store_true",
                    help="no replay videos of failed episodes in the report")
    ev.set_defaults(func=_cmd_eval)

    bm = sub.add_parser("benchmark", help="closed-loop backbone benchmark: encoders x "
                        "objectives x frozen/fine-tuned x seeds against the baselines")
    bm.add_argument("--config", default="default", metavar="NAME_OR_YAML",
                    help="benchmark config name in configs/benchmark/ (default, smoke) or "
                         "YAML path")
    bm.add_argument("--out", default=None,
                    help="output folder, resumed if present (default out/benchmark/<name>)")
    bm.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="config override, e.g. seeds=[0,1] or data=data/frames20k")
    bm.add_argument("--workers", type=_count, default=2,
                    help="parallel worker processes of each evaluation")
    _backend_arguments(bm)
    bm.add_argument("--quiet", action="store_true", help="no progress bars")
    bm.set_defaults(func=_cmd_benchmark)

    rp = sub.add_parser("replay", help="verify a recorded episode by re-simulation, render "
                        "it to video or a PNG frame, or watch it in the pybullet GUI")
    rp.add_argument("episode", metavar="EPISODE", help="episode file (.parquet)")
    rp.add_argument("--verify", action="store_true",
                    help="re-simulate and compare states (exit status 1 on divergence)")
    rp.add_argument("--tolerance", type=float, default=0.0,
                    help="accepted absolute difference with --verify (default 0: "
                         "bit-identical; 1e-6 at least across package versions)")
    rp.add_argument("--video", metavar="OUT.mp4", help="write camera + bird's-eye video")
    rp.add_argument("--start", type=_count, default=None, metavar="N",
                    help="first control step of the video (inclusive, steps count from 1)")
    rp.add_argument("--end", type=_count, default=None, metavar="N",
                    help="last control step of the video (inclusive)")
    rp.add_argument("--fps", type=float, default=None,
                    help="video frame rate (default: the control rate, real time)")
    rp.add_argument("--frame", type=_count, default=None, metavar="N",
                    help="control step to save as PNG (with --png)")
    rp.add_argument("--png", metavar="OUT.png", help="PNG file of --frame")
    rp.add_argument("--gui", action="store_true",
                    help="replay in pybullet's GUI window (needs a display)")
    rp.add_argument("--step", action="store_true",
                    help="with --gui: one control step per press of 'n' ('c' continues)")
    rp.set_defaults(func=_cmd_replay)

    bench = sub.add_parser("bench", help="measure env throughput")
    bench.add_argument("--json", action="store_true", help="print the figures as JSON")
    bench.add_argument("--steps", type=_count, default=1000, help="steps per measurement")
    bench.add_argument("--compare", action="append", default=[], metavar="NAME",
                       help=f"also measure another simulator: {', '.join(COMPARE_CHOICES)}")
    bench.add_argument("--workers", type=_count, nargs="*", default=[1, 2, 4, 8],
                       help="rollout worker counts to measure with the frozen encoder path "
                            "(none: skip)")
    bench.add_argument("--rollout-steps", type=_count, default=200,
                       help="vector steps per rollout measurement")
    bench.add_argument("--repeats", type=_count, default=3,
                       help="rounds of rollout measurements (each measures every worker "
                            "count once); rows report the medians")
    bench.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                       help="device of the rollout encoder")
    bench.add_argument("--compile", action="store_true",
                       help="run the rollout encoder through torch.compile")
    bench.add_argument("--ray", type=_count, nargs="+", default=None, metavar="N",
                       help="also measure env steps/s with N Ray actors, each stepping one "
                            "env (e.g. --ray 1 2)")
    bench.add_argument("--address", default=None, metavar="ADDR",
                       help="Ray cluster address for --ray (default: a local instance)")
    bench.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``bulletdrive`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code = int(args.func(args))
    except (ConfigError, ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
