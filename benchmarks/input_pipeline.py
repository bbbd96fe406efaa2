"""Input pipeline benchmark: clips/s of the tf.data pipeline against a whole-video reference loader.

Builds (or reuses) a synthetic UCF-101-layout dataset and its TFDS records, then measures
in one run, on the same videos: (1) `pipeline.make_train_dataset` (decode only the 16
chosen JPEG frames, flipped copy, boxes) and (2) the original study's way of loading a
sample (OpenCV-decode the whole .avi, resize every frame, pick a window, flip in numpy),
run in one worker per core. A sample is a clip plus its flipped copy. Prints both rates,
the ratio, the per-core rate and peak host memory; the last line is one JSON object.

  python benchmarks/input_pipeline.py [--work_dir DIR] [--frame_size 128] [--seconds 20]
"""

import json
import multiprocessing
import os
import pathlib
import resource
import sys
import tempfile
import time
from typing import Sequence

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from absl import logging  # noqa: E402
import cv2  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

# These define absl flags of their own at import; ours must not reuse their names.
from stconsist_jax.data import pipeline  # noqa: E402
from stconsist_jax.data import synthetic  # noqa: E402
from stconsist_jax.data import tfds_builder  # noqa: E402

_WORK_DIR = flags.DEFINE_string(
    "work_dir", None, "Where the synthetic videos and TFDS records live (reused when "
    "present); default: a fresh temporary folder, removed afterwards.")
_FRAME_SIZE = flags.DEFINE_integer("frame_size", 128, "Stored and model frame size.")
_NUM_FRAMES = flags.DEFINE_integer("num_frames", 16, "Frames per clip.")
_VIDEOS_PER_CLASS = flags.DEFINE_integer("bench_videos_per_class", 10, "Synthetic videos per class.")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Clips per batch of the pipeline.")
_SECONDS = flags.DEFINE_float("seconds", 20.0, "Measuring time of each loader.")
_REFERENCE_SAMPLES = flags.DEFINE_integer("reference_samples", 48,
                                          "Samples the reference loader loads.")


def build_dataset(work_dir: pathlib.Path, frame_size: int, videos_per_class: int):
  """The synthetic folder and its TFDS build; 120-250 frames a video (UCF-101: ~186)."""
  root = work_dir / "ucf101"
  spec = synthetic.SyntheticSpec(seed=0, num_classes=6, annotated_classes=4,
                                 videos_per_class=videos_per_class, min_frames=120,
                                 max_frames=250)
  if not (root / "pyannot.pkl").exists():
    t0 = time.time()
    synthetic.generate(root, spec)
    logging.info("Generated %s in %.1f s", root, time.time() - t0)
  data_dir = work_dir / "tfds"
  t0 = time.time()
  builder = tfds_builder.build(root, data_dir, split=1, frame_size=frame_size)
  logging.info("TFDS records ready in %.1f s", time.time() - t0)
  return root, data_dir, builder


def data_config(data_dir: pathlib.Path, frame_size: int, num_frames: int):
  return ml_collections.ConfigDict(dict(
      name="synthetic", data_dir=str(data_dir), split=1, frame_size=frame_size,
      image_size=frame_size, num_frames=num_frames, frame_stride=1, classes=101,
      box_label_fraction=1.0, labeled_per_batch=0, scale_augment=False,
      shuffle_buffer=64))


def measure_pipeline(config, batch_size: int, seconds: float) -> tuple[float, int]:
  """Samples/s of the training stream after a warm-up, and the samples counted."""
  iterator = pipeline.BatchIterator(
      pipeline.make_train_dataset(config, batch_size=batch_size, seed=0))
  for _ in range(5):  # warm-up: graph tracing, shuffle buffer, autotuning
    next(iterator)
  count, start = 0, time.perf_counter()
  while time.perf_counter() - start < seconds:
    batch = next(iterator)
    count += len(batch["clip"])
  return count / (time.perf_counter() - start), count


def reference_sample(args: tuple[str, int, int, int]) -> int:
  """The original loader: decode the whole video, resize all frames, window, flip."""
  path, size, num_frames, seed = args
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
  return clip.nbytes + flipped.nbytes


def measure_reference(videos: Sequence[str], size: int, num_frames: int, samples: int,
                      workers: int) -> float:
  tasks = [(videos[i % len(videos)], size, num_frames, i) for i in range(samples)]
  cv2.setNumThreads(1)
  with multiprocessing.get_context("spawn").Pool(workers) as pool:
    pool.map(reference_sample, tasks[:workers])  # warm-up: worker start-up
    start = time.perf_counter()
    pool.map(reference_sample, tasks, chunksize=1)
    return samples / (time.perf_counter() - start)


def peak_memory_mb() -> float:
  """Peak resident memory of this process (the pipeline; reference workers excluded)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(work_dir: pathlib.Path) -> dict:
  cores = len(os.sched_getaffinity(0))
  size, num_frames = _FRAME_SIZE.value, _NUM_FRAMES.value
  root, data_dir, builder = build_dataset(work_dir, size, _VIDEOS_PER_CLASS.value)
  train = builder.info.splits["train"].num_examples
  config = data_config(data_dir, size, num_frames)
  rate, counted = measure_pipeline(config, _BATCH.value, _SECONDS.value)
  print(f"pipeline:  {rate:8.1f} samples/s ({counted} samples, batch {_BATCH.value}, "
        f"{train} train videos, {size}x{size}x{num_frames})")
  videos = sorted(str(p) for p in (root / "UCF-101").glob("*/*.avi"))
  mean_frames = float(np.mean([cv2.VideoCapture(v).get(cv2.CAP_PROP_FRAME_COUNT)
                               for v in videos]))
  single = measure_reference(videos, size, num_frames, _REFERENCE_SAMPLES.value // 2, 1)
  reference = measure_reference(videos, size, num_frames, _REFERENCE_SAMPLES.value, cores)
  print(f"reference: {reference:8.1f} samples/s ({_REFERENCE_SAMPLES.value} samples, "
        f"{cores} worker processes: whole-video OpenCV decode + resize; "
        f"{single:.1f} samples/s with 1 worker)")
  own = peak_memory_mb()
  result = {
      "samples_per_s": round(rate, 1),
      "reference_samples_per_s": round(reference, 2),
      "ratio": round(rate / reference, 1),
      "reference_one_worker_samples_per_s": round(single, 2),
      "cores": cores,
      "samples_per_s_per_core": round(rate / cores, 1),
      "reference_samples_per_s_per_core": round(reference / cores, 2),
      "peak_host_memory_mb": round(own, 1),
      "frame_size": size,
      "num_frames": num_frames,
      "train_videos": train,
      "mean_video_frames": round(mean_frames, 1),
      "load_average_1min": round(os.getloadavg()[0], 2),
  }
  print(f"ratio: {result['ratio']}x; per core: {result['samples_per_s_per_core']} vs "
        f"{result['reference_samples_per_s_per_core']} samples/s; peak host memory "
        f"{own:.0f} MB")
  return result


def main(argv: Sequence[str]) -> None:
  del argv
  if _WORK_DIR.value:
    work_dir = pathlib.Path(_WORK_DIR.value)
    work_dir.mkdir(parents=True, exist_ok=True)
    result = run(work_dir)
  else:
    with tempfile.TemporaryDirectory(prefix="input_pipeline_bench_") as tmp:
      result = run(pathlib.Path(tmp))
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
