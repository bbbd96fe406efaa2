"""Input pipeline benchmark: clips/s of the tf.data pipeline against a whole-video reference loader.

Builds (or reuses) a synthetic UCF-101-layout dataset and its TFDS records, then measures
in one run, on the same videos: (1) `train_stream.make_train_dataset` (decode only the 16
chosen JPEG frames, boxes; the flipped copy is made by the train step on the
accelerator, or here with --host_flip) and (2) the original study's way of loading a
sample (OpenCV-decode the whole .avi, resize every frame, pick a window, flip in numpy),
run in one worker per core. The two alternate in rounds so both see the same background
load; rates are given per wall-clock second and per CPU-second (robust to other load on
the machine). A sample is a clip plus its flipped copy. Prints both rates, the ratio,
the per-core rate and peak host memory; the last line is one JSON object.

  python benchmarks/input_pipeline.py [--work_dir DIR] [--frame_size 128] [--rounds 4]
"""

import json
import multiprocessing
import os
import pathlib
import resource
import tempfile
import time
from collections.abc import Sequence

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
os.environ.setdefault('CUDA_VISIBLE_DEVICES', '')

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402


from stconsist_jax.data.pipeline import train_stream
from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.ucf101 import dataset_build

_WORK_DIR = flags.DEFINE_string(
  'work_dir',
  None,
  'Where the synthetic videos and TFDS records live (reused when '
  'present); default: a fresh temporary folder, removed afterwards.',
)
_FRAME_SIZE = flags.DEFINE_integer('frame_size', 128, 'Stored and model frame size.')
_NUM_FRAMES = flags.DEFINE_integer('num_frames', 16, 'Frames per clip.')
_VIDEOS_PER_CLASS = flags.DEFINE_integer(
  'bench_videos_per_class', 10, 'Synthetic videos per class (6 classes).'
)
_BATCH = flags.DEFINE_integer('batch_size', 32, 'Clips per batch of the pipeline.')
_SECONDS = flags.DEFINE_float('seconds', 24.0, 'Total measuring time of the pipeline.')
_REFERENCE_SAMPLES = flags.DEFINE_integer(
  'reference_samples', 24, 'Samples the reference loader loads per round.'
)
_ROUNDS = flags.DEFINE_integer('rounds', 4, 'Alternating measuring rounds of both loaders.')
_HOST_FLIP = flags.DEFINE_bool(
  'host_flip',
  False,
  'Make the flipped clip in the pipeline (data.host_flip). Default: '
  'as in training, the train step flips on the accelerator.',
)


def build_dataset(work_dir: pathlib.Path, frame_size: int, videos_per_class: int):
  """The synthetic folder and its TFDS build; 120-250 frames a video (UCF-101: ~186)."""
  root = work_dir / 'ucf101'
  spec = synthetic.SyntheticSpec(
    seed=0,
    num_classes=6,
    annotated_classes=4,
    videos_per_class=videos_per_class,
    min_frames=120,
    max_frames=250,
  )
  if not (root / 'pyannot.pkl').exists():
    t0 = time.time()
    synthetic.generate(root, spec)
    logging.info('Generated %s in %.1f s', root, time.time() - t0)
  data_dir = work_dir / 'tfds'
  t0 = time.time()
  builder = dataset_build.build(root, data_dir, split=1, frame_size=frame_size)
  logging.info('TFDS records ready in %.1f s', time.time() - t0)
  return root, data_dir, builder


def data_config(data_dir: pathlib.Path, frame_size: int, num_frames: int, host_flip: bool):
  return ml_collections.ConfigDict(
    dict(
      name='synthetic',
      data_dir=str(data_dir),
      split=1,
      frame_size=frame_size,
      image_size=frame_size,
      num_frames=num_frames,
      frame_stride=1,
      classes='all',
      box_label_fraction=1.0,
      labeled_per_batch=0,
      scale_augment=(1.0, 1.0),
      shuffle_buffer=64,
      host_flip=host_flip,
    )
  )


class PipelineMeter:
  """The training stream, kept open across rounds; each round counts samples, wall, CPU."""

  def __init__(self, config, batch_size: int):
    self.iterator = train_stream.BatchIterator(
      train_stream.make_train_dataset(config, batch_size=batch_size, seed=0)
    )
    for _ in range(5):  # warm-up: graph tracing, shuffle buffer, autotuning
      next(self.iterator)

  def round(self, seconds: float) -> tuple[int, float, float]:
    count, cpu0, start = 0, _process_cpu(), time.perf_counter()
    while time.perf_counter() - start < seconds:
      count += len(next(self.iterator)['clip'])
    return count, time.perf_counter() - start, _process_cpu() - cpu0


def _process_cpu() -> float:
  """CPU seconds of this process, all threads."""
  usage = resource.getrusage(resource.RUSAGE_SELF)
  return usage.ru_utime + usage.ru_stime


def reference_sample(args: tuple[str, int, int, int]) -> float:
  """The original loader: decode the whole video, resize all frames, window, flip.

  Returns the CPU seconds it took.
  """
  path, size, num_frames, seed = args
  cpu0 = time.process_time()
  capture = cv2.VideoCapture(path)
  frames = []
  while True:
    ok, bgr = capture.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(cv2.resize(bgr, (size, size)), cv2.COLOR_BGR2RGB))
  capture.release()
  rng = np.random.default_rng(seed)
  start = int(rng.integers(0, max(len(frames) - num_frames, 0) + 1))
  indices = [(start + i) % len(frames) for i in range(num_frames)]
  clip = np.stack([frames[i] for i in indices])
  flipped = np.ascontiguousarray(clip[:, :, ::-1])
  del clip, flipped
  return time.process_time() - cpu0


def _init_worker() -> None:
  cv2.setNumThreads(1)


def reference_round(pool, tasks) -> tuple[int, float, float]:
  start = time.perf_counter()
  cpu = sum(pool.map(reference_sample, tasks, chunksize=1))
  return len(tasks), time.perf_counter() - start, cpu


def peak_memory_mb() -> float:
  """Peak resident memory of this process (the pipeline; reference workers excluded)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(work_dir: pathlib.Path) -> dict:
  cores = len(os.sched_getaffinity(0))
  size, num_frames, rounds = _FRAME_SIZE.value, _NUM_FRAMES.value, _ROUNDS.value
  root, data_dir, builder = build_dataset(work_dir, size, _VIDEOS_PER_CLASS.value)
  train = builder.info.splits['train'].num_examples
  videos = sorted(str(p) for p in (root / 'UCF-101').glob('*/*.avi'))
  mean_frames = float(np.mean([cv2.VideoCapture(v).get(cv2.CAP_PROP_FRAME_COUNT) for v in videos]))
  meter = PipelineMeter(data_config(data_dir, size, num_frames, _HOST_FLIP.value), _BATCH.value)
  per_round = _REFERENCE_SAMPLES.value
  # Alternating rounds, so that both loaders see the same background load.
  ours, theirs = [], []
  with multiprocessing.get_context('spawn').Pool(cores, initializer=_init_worker) as pool:
    pool.map(reference_sample, [(videos[0], size, num_frames, 0)] * cores)  # start-up
    for r in range(rounds):
      ours.append(meter.round(_SECONDS.value / rounds))
      tasks = [
        (videos[(r * per_round + i) % len(videos)], size, num_frames, i) for i in range(per_round)
      ]
      theirs.append(reference_round(pool, tasks))
      logging.info(
        'round %d: pipeline %.1f samples/s, reference %.2f samples/s',
        r,
        ours[-1][0] / ours[-1][1],
        theirs[-1][0] / theirs[-1][1],
      )

  def summary(rows):
    count, wall, cpu = (sum(x[i] for x in rows) for i in range(3))
    return count / wall, count / cpu, count

  rate, rate_cpu, counted = summary(ours)
  reference, reference_cpu, reference_count = summary(theirs)
  own = peak_memory_mb()
  result = {
    'samples_per_s': round(rate, 1),
    'reference_samples_per_s': round(reference, 2),
    'ratio': round(rate / reference, 1),
    'cores': cores,
    'samples_per_s_per_core': round(rate / cores, 1),
    'reference_samples_per_s_per_core': round(reference / cores, 2),
    'samples_per_cpu_s': round(rate_cpu, 1),
    'reference_samples_per_cpu_s': round(reference_cpu, 2),
    'ratio_per_cpu_s': round(rate_cpu / reference_cpu, 1),
    'peak_host_memory_mb': round(own, 1),
    'flipped_copy_made_on': 'host' if _HOST_FLIP.value else 'accelerator',
    'frame_size': size,
    'num_frames': num_frames,
    'batch_size': _BATCH.value,
    'train_videos': train,
    'mean_video_frames': round(mean_frames, 1),
    'load_average_1min': round(os.getloadavg()[0], 2),
  }
  print(
    f'pipeline:  {rate:8.1f} samples/s ({counted} samples, batch {_BATCH.value}, '
    f'{train} train videos of {mean_frames:.0f} frames on average, '
    f'{num_frames}x{size}x{size}); {rate_cpu:.1f} samples per CPU-second'
  )
  print(
    f'reference: {reference:8.2f} samples/s ({reference_count} samples, {cores} worker '
    f'processes: whole-video OpenCV decode + resize); {reference_cpu:.2f} samples per '
    f'CPU-second'
  )
  print(
    f'ratio: {result["ratio"]}x wall-clock, {result["ratio_per_cpu_s"]}x per CPU-second; '
    f'per core: {result["samples_per_s_per_core"]} vs '
    f'{result["reference_samples_per_s_per_core"]} samples/s; peak host memory '
    f'{own:.0f} MB; load average {result["load_average_1min"]} on {cores} cores'
  )
  return result


def main(argv: Sequence[str]) -> None:
  del argv
  if _WORK_DIR.value:
    work_dir = pathlib.Path(_WORK_DIR.value)
    work_dir.mkdir(parents=True, exist_ok=True)
    result = run(work_dir)
  else:
    with tempfile.TemporaryDirectory(prefix='input_pipeline_bench_') as tmp:
      result = run(pathlib.Path(tmp))
  print(json.dumps(result))


if __name__ == '__main__':
  app.run(main)
