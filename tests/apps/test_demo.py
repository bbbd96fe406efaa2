"""The demo, reduced (fewer videos, smaller frames, fewer steps), really learns.

Runs tools/demo.py end to end in a subprocess: synthetic videos -> TFDS build -> training
with flip consistency and withheld boxes -> restore -> evaluation report -> prediction on
a test video. It runs on one CPU device with XLA's classic CPU emitters
(`--xla_cpu_use_fusion_emitters=false`, tests/xla_env.py): at these sizes the same steps
take as long as with the default emitters and the whole run about 33 s instead of 42 s,
most of it compilation. Training seeds 0-4 at these settings (configs/demo.py's tubelet
detector, 60 steps, evaluated with its flip test), measured on a 2-core AMD EPYC
(2026-12-04): video accuracy 0.500-0.750 (of 16 videos), mean IoU 0.426-0.567, frame-mAP
0.301-0.407, video-mAP@0.2 0.437-0.627; an untrained model (1 step) scores 0.188, 0.222,
0.001 and 0.000. The thresholds sit below the worst seed and far above the untrained
model, so another CPU's floating-point results still pass.
"""

import json
import os
import subprocess
import sys

from tests import xla_env

NUM_STEPS = 60
REDUCED = (
  '--config.synthetic.videos_per_class=6',
  '--config.data.frame_size=32',
  '--config.data.image_size=32',
  f'--config.train.num_steps={NUM_STEPS}',
  '--config.train.checkpoint_every=50',
  '--config.loss.rampup_steps=10',
)


def test_reduced_demo_learns(repo_root, tmp_path):
  result = subprocess.run(
    [
      sys.executable,
      str(repo_root / 'tools' / 'demo.py'),
      f'--workdir={tmp_path / "run"}',
      f'--cache_dir={tmp_path / "cache"}',
      *REDUCED,
    ],
    cwd=repo_root,
    env=dict(os.environ, XLA_FLAGS=xla_env.CLASSIC_EMITTERS),  # One CPU device.
    capture_output=True,
    text=True,
    timeout=900,
  )
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['video_accuracy'] >= 0.375, summary  # 6 of the 16 test videos
  assert summary['mean_iou'] >= 0.33, summary
  assert summary['frame_map'] >= 0.2, summary
  assert summary['video_map@0.2'] >= 0.2, summary
  report_dir = tmp_path / 'run' / 'eval' / str(NUM_STEPS)
  report = json.loads((report_dir / 'report.json').read_text())
  assert report['checkpoint_step'] == NUM_STEPS
  assert report['video_accuracy'] == summary['video_accuracy']
  assert report['frame_map_protocol'] == 'act'
  assert set(report['frame_map_by_protocol']) == {'act', 'voc'}
  assert (report_dir / 'clips.png').stat().st_size > 0
  predictions = sorted((tmp_path / 'run' / 'predict').glob('*.json'))
  assert len(predictions) == 1
  record = json.loads(predictions[0].read_text())
  assert record['num_frames'] == len(record['frames']) > 0
  assert (tmp_path / 'run' / 'predict' / f'{predictions[0].stem}.mp4').stat().st_size > 0
