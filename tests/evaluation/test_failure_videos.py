"""The eval report links every failed episode to a replay video."""

from __future__ import annotations

from pathlib import Path

import cv2

from evaluation.runner import evaluate
from evaluation.suites import load_suite


def test_failed_episodes_get_linked_replay_videos(tmp_path: Path) -> None:
    suite = load_suite("smoke", ["episodes=1", "max_steps=30"])
    result = evaluate("random", suite, tmp_path, workers=1, progress=False)
    failed = [e for e in result.table().to_dict("records") if not e["success"]]
    assert failed, "random should not complete a smoke episode"
    videos = sorted((tmp_path / "videos").glob("*.mp4"))
    assert len(videos) == len(failed)
    cap = cv2.VideoCapture(str(videos[0]))
    assert int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) > 0
    cap.release()
    html = (tmp_path / "report.html").read_text()
    assert f"videos/{videos[0].name}" in html
