"""Prediction benchmark: frames/s of `stconsist_jax.prediction.predict` (decode + model + linking).

Each setting and runtime prints one JSON line; the last line is the last one's. No
TensorFlow. `--runtimes=jax,onnxruntime` runs each setting through JAX and through its
ONNX export (jax2onnx, onnxruntime on the CPU), the same weights, side by side.

  python benchmarks/predict.py --settings=demo,r3d34 --frames=200,48
  python benchmarks/predict.py --settings=demo --runtimes=jax,onnxruntime
"""

from __future__ import annotations

import json
import pathlib
import sys
import tempfile
import time
from typing import Any
from collections.abc import Sequence

from absl import app
from absl import flags
import cv2
import jax
import numpy as np

import bench_models  # pylint: disable=g-import-not-at-top  (a sibling script)
from stconsist_jax.training import distributed
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.core import console
from stconsist_jax.prediction import predict
from stconsist_jax.prediction import video_files

_SETTINGS = flags.DEFINE_list('settings', list(bench_models.SETTINGS), bench_models.SETTINGS_HELP)
_FRAMES = flags.DEFINE_list(
  'frames', ['200', '200', '48', '48', '48'], 'Video length per setting (frames).'
)
_VIDEO_SIZE = flags.DEFINE_list(
  'video_size', ['240', '320'], 'Height, width of the test video (UCF-101: 240, 320).'
)
_FPS = flags.DEFINE_integer('fps', 25, 'Frame rate of the test video.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 8, 'Clips per batch.')
_EVERY = flags.DEFINE_integer(
  'frame_stride',
  0,
  'Predict every k-th frame (a tubelet detector: clips every k-th frame); 0: the '
  "setting's default (1; a tubelet detector's eval.tube_frame_stride).",
)
_RUNTIMES = flags.DEFINE_list(
  'runtimes',
  ['jax'],
  'jax: the checkpoint path (FramePredictor); onnxruntime: the ONNX export of the same '
  'weights (predict --model; needs jax2onnx to export and onnxruntime).',
)
_NUM_DEVICES = flags.DEFINE_integer('num_devices', 0, 'Devices in the mesh (0 = all).')
_WRITE = flags.DEFINE_bool(
  'write_video', True, 'Also time drawing and encoding the annotated video (reported apart).'
)


def write_test_video(
  path: pathlib.Path, num_frames: int, size: tuple[int, int], fps: int
) -> pathlib.Path:
  """An XviD .avi (as UCF-101's) of a square moving over noise."""
  h, w = size
  rng = np.random.default_rng(0)
  writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*'XVID'), fps, (w, h))
  if not writer.isOpened():
    raise RuntimeError('OpenCV cannot write XVID video')
  side = min(h, w) // 3
  for f in range(num_frames):
    frame = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
    x = int((w - side) * (f % 50) / 49)
    frame[h // 3 : h // 3 + side, x : x + side] = (40, 200, 230)
    writer.write(frame)
  writer.release()
  return path


def onnx_loaded(restored: predict.RestoredModel, folder: str) -> predict.Loaded:
  """The model exported to ONNX in `folder` and loaded as `predict --model` loads it."""
  from stconsist_jax.export import exporter  # pylint: disable=g-import-not-at-top
  from stconsist_jax.prediction import onnx_predictor  # pylint: disable=g-import-not-at-top

  exporter.export(restored, folder, exporter.Options('onnx', check=False))
  return onnx_predictor.load_export(folder, batch_size=_BATCH_SIZE.value)


def run_setting(
  setting: str, video: pathlib.Path, num_frames: int, runtime: str = 'jax'
) -> dict[str, Any]:
  try:
    restored = bench_models.random_model(setting)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  config, model, variables = restored.config, restored.model, restored.variables
  num_classes = int(config.model.num_classes)
  if runtime == 'onnxruntime':
    with tempfile.TemporaryDirectory() as folder:
      export_start = time.perf_counter()
      loaded = onnx_loaded(restored, str(pathlib.Path(folder) / 'export'))
      export_s = time.perf_counter() - export_start
    predictor = loaded.predictor
  elif runtime == 'jax':
    devices = jax.local_devices()
    devices = devices[: _NUM_DEVICES.value] if _NUM_DEVICES.value else devices
    predictor = frame_predictor.FramePredictor.from_config(
      config,
      model,
      variables,
      batch_size=_BATCH_SIZE.value,
      mesh=distributed.make_mesh(devices),
    )
    loaded = predict.make_loaded(predictor, config, restored.class_names, restored.model_info)
    export_s = None
  else:
    raise app.UsageError(f'unknown runtime {runtime!r}: jax or onnxruntime')
  compile_s = predictor.warm_up()

  start = time.perf_counter()
  decoded = sum(1 for _ in video_files.read_frames(video_files.open_video(video)[0]))
  decode_s = time.perf_counter() - start

  with tempfile.TemporaryDirectory() as out:
    every = _EVERY.value or predict.default_stride(loaded)
    result = predict.predict_video(
      loaded, video, out, every=every, write_annotated=_WRITE.value, progress=False
    )
  timing = result.record['timing']
  clips = int(timing['clips'])
  num_frames = result.record['num_frames']
  return {
    'setting': setting,
    'runtime': runtime,
    'frames_per_s': round(num_frames / timing['predict_s'], 2),
    'clips_per_s': round(clips / timing['predict_s'], 2),
    'decode_frames_per_s': round(decoded / decode_s, 1),
    'write_frames_per_s': (round(num_frames / timing['write_s'], 1) if _WRITE.value else None),
    'predict_s': timing['predict_s'],
    'compile_s': round(compile_s, 2),
    'export_s': None if export_s is None else round(export_s, 2),
    'num_frames': num_frames,
    'clips': clips,
    'tubes_found': result.record['tubes_found'],
    'device': jax.devices()[0].device_kind if runtime == 'jax' else predictor.device_description,
    'platform': jax.devices()[0].platform if runtime == 'jax' else 'cpu',
    'num_devices': predictor.num_devices,
    'cpu': console.cpu_model(),
    'architecture': loaded.model_info['architecture'],
    'clip_frames': predictor.num_frames,
    'image_size': predictor.image_size,
    'frame_size': predictor.frame_size,
    'batch_size': predictor.batch_size,
    'frame_stride': every,
    'tubelet_frames': predictor.tubelet_frames,
    'forward_passes_per_frame': round(clips / max(num_frames, 1), 4),
    'video_size': result.record['size'],
    'num_classes': num_classes,
    'dtype': str(config.model.dtype),
    'tensorflow_imported': 'tensorflow' in sys.modules,
  }


def main(argv: Sequence[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  settings = _SETTINGS.value
  frames = [int(f) for f in _FRAMES.value]
  if len(frames) == 1:
    frames = frames * len(settings)
  if len(frames) != len(settings):
    raise app.UsageError('--frames: one length, or one per setting')
  size = tuple(int(v) for v in _VIDEO_SIZE.value)
  with tempfile.TemporaryDirectory() as tmp:
    for setting, n in zip(settings, frames):
      video = write_test_video(pathlib.Path(tmp) / f'{setting}.avi', n, size, _FPS.value)
      for runtime in _RUNTIMES.value:
        print(json.dumps(run_setting(setting, video, n, runtime)), flush=True)


if __name__ == '__main__':
  app.run(main)
