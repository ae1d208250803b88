"""``bulletdrive demo``: the whole stack in a few minutes on two CPU cores.

1. Collect expert frames with simulator labels on Highway-v0 (train seeds).
2. Pretrain a Nature CNN on them with the contrastive objective (CURL).
3. Probe it against a randomly initialised encoder.
4. Train PPO on its frozen embeddings (``behavior`` actions).
5. Evaluate the trained agent beside the expert and the random baseline on the held-out
   ``demo`` suite, write each report and one comparison table.
6. Drive one episode with the expert and write a video (camera + bird's-eye view).

Every stage writes under ``out_dir`` and resumes if it already ran (the dataset, the
pretraining checkpoint and the evaluation episodes are kept).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from common.io import atomic_write_text


def run_demo(out_dir: str | Path = "out/demo", *, scale: float = 1.0, seed: int = 0,
             video_steps: int = 300, progress: bool = True) -> dict[str, Any]:
    """Run the demo pipeline; ``scale`` multiplies every budget (episodes, minutes).

    Returns:
        A summary with the probe table, the comparison table and the output paths.
    """
    from agents.collect import CollectConfig, collect
    from agents.config import load_train_config
    from agents.train import train
    from envs.snapshot import drive_episode
    from evaluation.report import compare
    from evaluation.runner import evaluate
    from evaluation.suites import load_suite
    from perception.pretrain import load_pretrain_config, pretrain
    from perception.probes import ProbeConfig, probe_checkpoints
    from planning.expert import Expert

    out = Path(out_dir)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}

    def lap(name: str, start: float) -> None:
        timings[name] = round(time.perf_counter() - start, 1)

    start = time.perf_counter()
    frames = out / "frames"
    # At least 4 episodes of 40 steps: both splits get frames (seeds 10000 and 10002 fall in
    # the validation split at this fraction) and training has more than one batch.
    collect(CollectConfig(envs=("Highway-v0",), episodes_per_env=max(4, round(10 * scale)),
                          max_steps=max(40, round(200 * scale)), val_fraction=0.3),
            frames, progress=progress)
    lap("collect_s", start)

    start = time.perf_counter()
    pre_cfg = load_pretrain_config(overrides=["batch_size=32", "checkpoint_every_steps=100",
                                              f"seed={seed}"])
    pre = pretrain(pre_cfg, frames, out / "pretrain", max_minutes=1.5 * scale,
                   progress=progress)
    lap("pretrain_s", start)

    start = time.perf_counter()
    probes = probe_checkpoints([pre.encoder_dir], frames, out / "probe",
                               config=ProbeConfig(labels=("lane_offset_m", "lead_distance_m",
                                                          "speed_mps")))
    lap("probe_s", start)

    start = time.perf_counter()
    train_cfg = load_train_config(overrides=[
        f"encoder={pre.encoder_dir}", f"seed={seed}", "ppo.n_steps=64",
        f"max_minutes={2.0 * scale}", "total_timesteps=1000000"])
    trained = train(train_cfg, out / "train", resume=True, progress=progress)
    lap("train_s", start)

    start = time.perf_counter()
    suite = load_suite("demo")
    if scale < 1.0:
        episodes = max(1, round((suite.episodes or 4) * scale))
        steps = max(30, round((suite.max_steps or 300) * scale))
        suite = load_suite("demo", [f"episodes={episodes}", f"max_steps={steps}"])
    results = [evaluate(agent, suite, out / "eval" / name, workers=2, progress=progress)
               for name, agent in (("expert", "expert"), ("random", "random"),
                                   ("ppo", str(trained.agent_dir)))]
    table = compare(results)
    atomic_write_text(out / "comparison.md", table)
    lap("eval_s", start)

    start = time.perf_counter()
    video = drive_episode(out / "video", seed=seed, max_steps=video_steps,
                          policy=Expert().act)
    lap("video_s", start)

    summary = {"out": str(out), "probes": probes.to_markdown(), "comparison": table,
               "reports": [str(r.out_dir / "report.html") for r in results],
               "video": video["video"], "timings_s": timings,
               "total_minutes": round((time.perf_counter() - t0) / 60.0, 2)}
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2))
    return summary
