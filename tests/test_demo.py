"""The demo, reduced (fewer videos, smaller frames, fewer steps), really learns.

Runs tools/demo.py end to end in a subprocess: synthetic videos -> TFDS build -> training
with flip consistency and withheld boxes -> restore -> evaluation report. The thresholds
are looser than the full demo's (README), which trains longer on larger frames.
"""

import json
import subprocess
import sys

REDUCED = (
    "--config.synthetic.videos_per_class=9",
    "--config.data.frame_size=32",
    "--config.data.image_size=32",
    "--config.train.num_steps=320",
    "--config.train.checkpoint_every=160",
    "--config.loss.rampup_steps=60",
)


def test_reduced_demo_learns(repo_root, tmp_path):
  result = subprocess.run(
      [sys.executable, str(repo_root / "tools" / "demo.py"),
       f"--workdir={tmp_path / 'run'}", f"--cache_dir={tmp_path / 'cache'}", *REDUCED],
      cwd=repo_root, capture_output=True, text=True, timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary["video_accuracy"] >= 0.8, summary
  assert summary["mean_iou"] >= 0.3, summary
  assert summary["frame_map"] >= 0.1, summary
  report_dir = tmp_path / "run" / "eval" / "320"
  report = json.loads((report_dir / "report.json").read_text())
  assert report["checkpoint_step"] == 320
  assert report["video_accuracy"] == summary["video_accuracy"]
  assert (report_dir / "clips.png").stat().st_size > 0
