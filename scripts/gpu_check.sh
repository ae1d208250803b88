#!/usr/bin/env bash
# GPU machine check (< 5 min): nvidia-smi, EGL camera rendering, EGL vs tiny frames/s,
# rollout steps/s with 16 workers and the frozen encoder on CUDA (eager and torch.compile),
# with GPU busy fraction and utilisation.
# Writes a JSON summary to $OUT/gpu_check.json (or out/gpu_check.json). Not run by tests.
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
[ -x "$PY" ] || PY=python3
DEST="${OUT:-out}"
mkdir -p "$DEST"
echo "== nvidia-smi"
nvidia-smi || echo "nvidia-smi failed"
echo "== python checks"
GPU_CHECK_JSON="$DEST/gpu_check.json" timeout 280 "$PY" - <<'PYEOF'
import json, os, time, traceback
import numpy as np
import torch
import envs

summary = {"cuda_available": torch.cuda.is_available(),
           "cuda_device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None}

def frames_per_s(renderer, steps=300):
    env = envs.make("bulletdrive/Highway-v0", overrides=[f"camera.renderer={renderer}"])
    try:
        obs, _ = env.reset(seed=0)
        first = obs["camera"].copy()
        env.action_space.seed(0)
        t = time.perf_counter()
        for _ in range(steps):
            obs, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset(seed=1)
        return {"renderer_in_use": env.unwrapped.renderer_in_use,
                "steps_per_s": steps / (time.perf_counter() - t)}, first
    finally:
        env.close()

for name in ("egl", "tiny"):
    try:
        summary[f"render_{name}"], frame = frames_per_s(name)
        summary[f"frame0_mean_{name}"] = float(frame.mean())
        # The same first frame under both renderers (README: mean abs diff 1-2.5 on Mesa).
        summary[f"frame0_{name}"] = frame
    except Exception as exc:
        summary[f"render_{name}"] = {"error": f"{type(exc).__name__}: {exc}"}
a, b = summary.pop("frame0_egl", None), summary.pop("frame0_tiny", None)
if a is not None and b is not None:
    summary["frame0_mean_abs_diff_egl_vs_tiny"] = float(np.abs(a.astype(float) - b).mean())
try:
    from agents.rollout_bench import bench_rollouts
    summary["rollouts_cuda_16"] = bench_rollouts((16,), steps=200, device="cuda",
                                                 overrides=("camera.renderer=auto",))
except Exception as exc:
    summary["rollouts_cuda_16"] = {"error": f"{type(exc).__name__}: {exc}",
                                   "trace": traceback.format_exc()[-2000:]}
try:  # the same with torch.compile (compiled in the warm-up steps)
    summary["rollouts_cuda_16_compiled"] = bench_rollouts(
        (16,), steps=200, device="cuda", overrides=("camera.renderer=auto",),
        warmup_steps=20, compile_encoder=True)
except Exception as exc:
    summary["rollouts_cuda_16_compiled"] = {"error": f"{type(exc).__name__}: {exc}"}
path = os.environ["GPU_CHECK_JSON"]
with open(path, "w") as fh:
    json.dump(summary, fh, indent=2)
print(json.dumps(summary, indent=2))
print("written:", path)
PYEOF
