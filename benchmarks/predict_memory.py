"""Prediction memory benchmark: peak resident memory of `predict_video` by video length.

Each video is predicted in a fresh process, whose peak RSS (getrusage) is printed as one
JSON line; a Markdown table of all of them comes last. Tiny random-weights model.

  python benchmarks/predict_memory.py --sizes=240x320,1080x1920 --seconds=10,300,600
"""

from __future__ import annotations

import json
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time
from typing import Any
from collections.abc import Sequence

from absl import app
from absl import flags
import cv2
import numpy as np


_SIZES = flags.DEFINE_list('sizes', ['240x320', '1080x1920'], 'Video sizes, HEIGHTxWIDTH.')
_SECONDS = flags.DEFINE_list('seconds', ['10', '300', '600'], 'Video lengths in seconds.')
_FPS = flags.DEFINE_integer('fps', 25, 'Frame rate of the test videos.')
_WIDEN = flags.DEFINE_float(
  'widen_factor', 0.125, 'Backbone width of the random-weights model (tiny: not the bottleneck).'
)
_WRITE = flags.DEFINE_bool('write_video', True, 'Also write the annotated video.')
_CONFIG = flags.DEFINE_enum(
  'config',
  'demo',
  ['demo', 'demo_one_box'],
  'The architecture: the demo tubelet detector or its one-box variant.',
)
_VIDEO = flags.DEFINE_string('video', None, 'Internal: predict this one video and report.')


def write_test_video(path: pathlib.Path, num_frames: int, size: tuple[int, int], fps: int) -> None:
  """An mp4v .mp4 of a square moving over a fixed gradient (cheap to make, small on disk)."""
  h, w = size
  ramp = np.linspace(20, 120, w, dtype=np.float32)[None, :, None]
  base = np.broadcast_to(ramp, (h, w, 3)).astype(np.uint8)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'mp4v'), fps, (w, h))
  if not writer.isOpened():
    raise RuntimeError('OpenCV cannot write mp4v video')
  side = min(h, w) // 3
  frame = base.copy()
  for f in range(num_frames):
    x = int((w - side) * (f % 100) / 99)
    frame[...] = base
    frame[h // 3 : h // 3 + side, x : x + side] = (40, 200, 230)
    writer.write(frame)
  writer.release()


def predict_one(video: pathlib.Path) -> dict[str, Any]:
  """Predicts `video` with a tiny random model in this process; its peak RSS."""
  from stconsist_jax.core import allocator  # pylint: disable=g-import-not-at-top

  allocator.map_large_buffers()  # as the prediction command does first
  import jax  # pylint: disable=g-import-not-at-top

  import bench_models  # pylint: disable=g-import-not-at-top  (a sibling script)
  from stconsist_jax.configs import demo  # pylint: disable=g-import-not-at-top
  from stconsist_jax.configs import demo_one_box  # pylint: disable=g-import-not-at-top
  from stconsist_jax.prediction import frame_predictor  # pylint: disable=g-import-not-at-top
  from stconsist_jax.prediction import predict  # pylint: disable=g-import-not-at-top

  config = {'demo': demo, 'demo_one_box': demo_one_box}[_CONFIG.value].get_config()
  config.data.name = 'random'
  config.model.widen_factor = _WIDEN.value
  restored = bench_models.random_model_from_config(config)
  predictor = frame_predictor.FramePredictor.from_config(
    config, restored.model, restored.variables, batch_size=16
  )
  predictor.warm_up()
  # The linking and the clip stride of the model's kind, as the prediction command's.
  loaded = predict.make_loaded(predictor, config, restored.class_names, restored.model_info)
  before_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  start = time.perf_counter()
  with tempfile.TemporaryDirectory() as out:
    result = predict.predict_video(
      loaded,
      video,
      out,
      every=predict.default_stride(loaded),
      write_annotated=_WRITE.value,
      progress=False,
    )
    json_mb = os.path.getsize(result.json_path) / 2**20
  return {
    'frames': result.record['num_frames'],
    'size': result.record['size'],
    'peak_rss_mb': round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    'peak_rss_before_video_mb': round(before_mb, 1),
    'json_mb': round(json_mb, 2),
    'tubes_found': result.record['tubes_found'],
    'seconds': round(time.perf_counter() - start, 1),
    'architecture': restored.model_info['architecture'],
    'device': jax.devices()[0].platform,
  }


def measure(video: pathlib.Path) -> dict[str, Any]:
  """Runs `predict_one` in a fresh process (so that its peak is this video's alone)."""
  args = [
    sys.executable,
    __file__,
    f'--video={video}',
    f'--widen_factor={_WIDEN.value}',
    f'--config={_CONFIG.value}',
  ]
  args.append('--write_video' if _WRITE.value else '--nowrite_video')
  proc = subprocess.run(args, capture_output=True, text=True, check=False)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-2000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])


def table(rows: Sequence[dict[str, Any]]) -> str:
  lines = [
    '| video | frames | peak RSS | before the video | JSON | time |',
    '| --- | --- | --- | --- | --- | --- |',
  ]
  for r in rows:
    h, w = r['size']
    lines.append(
      f'| {w}x{h}, {r["length_s"]} s | {r["frames"]:,} | {r["peak_rss_mb"]:,.0f} MB | '
      f'{r["peak_rss_before_video_mb"]:,.0f} MB | {r["json_mb"]:.1f} MB | {r["seconds"]:.0f} s |'
    )
  return '\n'.join(lines)


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  if _VIDEO.value:
    print(json.dumps(predict_one(pathlib.Path(_VIDEO.value))), flush=True)
    return
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for size_text in _SIZES.value:
      h, w = (int(v) for v in size_text.split('x'))
      for seconds in (int(s) for s in _SECONDS.value):
        video = pathlib.Path(tmp) / f'{h}x{w}_{seconds}s.mp4'
        write_test_video(video, seconds * _FPS.value, (h, w), _FPS.value)
        row = dict(measure(video), length_s=seconds)
        video.unlink()
        print(json.dumps(row), flush=True)
        rows.append(row)
  print(table(rows))


if __name__ == '__main__':
  app.run(main)
