"""Action tubes on any video: load a trained detector (or a converted classifier) and predict
videos into their JSON record and annotated copy (the command line is apps/predict.py).

The model on frames is `frame_predictor`; reading and listing videos is `video_files`,
the drawn copy `annotated_video` (drawing on frames: `drawing`), partial outputs
`output_files`; the JSON record is `prediction_record` (checked by `record_schema`).
Videos are read from local files (OpenCV decodes local files only); the workdir, the
converted weights, the class names file and the output folder may also be bucket URLs
(gs://...). Predicting needs no JAX (an ONNX export runs through `onnx_predictor`):
restoring a checkpoint (`restore_model`, `load`) imports it when called. Output files are streamed to a partial file that becomes the output whole
when finished, so memory does not grow with a video's length. Usage, settings and the
JSON schema of the output: docs/predict.md.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import pathlib
import time
from typing import Any, TYPE_CHECKING
from collections.abc import Callable, Iterator, Sequence

from absl import logging
import cv2
from etils import epath
import tqdm

from stconsist_jax.core import fileio
from stconsist_jax.metrics import tubes as tubes_lib
from stconsist_jax.prediction import annotated_video
from stconsist_jax.prediction import class_names
from stconsist_jax.prediction import frame_predictor
from stconsist_jax.prediction import output_files
from stconsist_jax.prediction import prediction_record
from stconsist_jax.prediction import record_schema
from stconsist_jax.prediction import video_files

if TYPE_CHECKING:
  import ml_collections

MAX_TUBES = 10  # Tubes kept per video (JSON and drawing), best first; 0: all.


# ----------------------------------------------------------------------------------
# Models, class names and settings.


@dataclasses.dataclass
class Loaded:
  """A model ready to predict, with what the output records say about it."""

  predictor: frame_predictor.ClipPredictor  # a FramePredictor (JAX) or an OnnxPredictor
  config: ml_collections.ConfigDict | None  # None: an export (its metadata.json instead)
  class_names: list[str]
  linking: Any  # tubes.LinkingConfig; a tubelet detector's: tubelets.TubeletLinkingConfig
  model_info: dict[str, Any]
  box_class_names: list[str] | None = None  # a tubelet detector's box classes
  # A tubelet detector's per-frame, per-class NMS of the actors (eval.tubelets) and its
  # default clip stride (eval.tube_frame_stride).
  frame_nms_threshold: float = 0.3
  tube_frame_stride: int = 1

  @property
  def tubelets(self) -> bool:
    return bool(self.predictor.tubelet_frames)

  @property
  def classification_only(self) -> bool:
    return not self.predictor.with_boxes


@dataclasses.dataclass
class RestoredModel:
  """A restored model with its settings, before anything is compiled (`load`, exports)."""

  config: ml_collections.ConfigDict  # clip settings in config.data
  model: Any
  variables: dict[str, Any]
  with_boxes: bool
  class_names: list[str]
  model_info: dict[str, Any]


def restore_model(
  workdir: str | os.PathLike | None = None,
  step: int | str = 'latest',
  *,
  init_from: str | os.PathLike | None = None,
  overrides: Sequence[str] = (),
  names_file: str | os.PathLike | None = None,
  settings: ml_collections.ConfigDict | None = None,
) -> RestoredModel:
  """Restores a trained detector of a workdir, or a converted classifier (`init_from`).

  With `init_from`, the classifier of that converted checkpoint predicts class scores
  only (no boxes, no tubes); clip settings come from the workdir's config if one is
  given, else from `settings` (e.g. configs/default.py's). `overrides`
  ('key.path=value') change the config first.
  """
  # JAX, orbax and the config stack: only here, not on the path of an export.
  # pylint: disable=g-import-not-at-top
  import ml_collections
  from stconsist_jax.config import config_file
  from stconsist_jax.config import overrides as overrides_lib
  from stconsist_jax.config import schema
  from stconsist_jax.evaluation import description
  from stconsist_jax.evaluation import restore as restore_lib
  # pylint: enable=g-import-not-at-top

  if workdir is None and not init_from:
    raise ValueError(
      'give --workdir (a training workdir) or --init_from (a directory '
      'written by tools/convert_torch_weights.py)'
    )
  if workdir is None and settings is None:
    raise ValueError('without a workdir, give the clip settings (a config) to predict with')
  config = config_file.load(workdir) if workdir is not None else copy.deepcopy(settings)
  overrides_lib.apply_overrides(config, overrides)
  schema.check_clip_settings(config)
  if init_from:
    model, variables = restore_lib.load_converted(init_from)
    num_classes = int(model.num_classes)
    arch = ml_collections.ConfigDict(
      dict(model.backbone_kwargs, num_classes=num_classes, box_head='none')
    )
    info = {
      'source': 'init_from',
      'path': str(init_from),
      'step': restore_lib.INIT_FROM,
      'architecture': description.describe_model(arch),
      'classification_only': True,
      'num_classes': num_classes,
      'config_hash': None,
    }
    with_boxes = False
    names_config = (
      config
      if workdir is not None and int(config.model.get('num_classes', -1)) == num_classes
      else None
    )
  else:
    restored = restore_lib.restore(config, workdir, step)
    model, variables = restored.model, restored.variables
    num_classes = int(config.model.num_classes)
    with_boxes = not restored.classification_only
    info = {
      'source': 'workdir',
      'path': str(workdir),
      'step': restored.step,
      'architecture': description.describe_model(config.model),
      'classification_only': not with_boxes,
      'num_classes': num_classes,
      'config_hash': description.config_hash(config),
    }
    names_config = config
  names = class_names.class_names_for(names_config, num_classes, names_file)
  return RestoredModel(config, model, variables, with_boxes, names, info)


def load(
  workdir: str | os.PathLike | None = None,
  step: int | str = 'latest',
  *,
  init_from: str | os.PathLike | None = None,
  overrides: Sequence[str] = (),
  batch_size: int | None = None,
  names_file: str | os.PathLike | None = None,
  mesh: Any = None,
  settings: ml_collections.ConfigDict | None = None,
) -> Loaded:
  """`restore_model`, ready to predict: the model in a frame predictor (`batch_size`
  clips per call, default the config's eval.batch_size, on `mesh`)."""
  r = restore_model(
    workdir,
    step,
    init_from=init_from,
    overrides=overrides,
    names_file=names_file,
    settings=settings,
  )
  if batch_size is None:
    batch_size = int(
      (r.config.get('eval', None) or {}).get('batch_size', frame_predictor.DEFAULT_BATCH_SIZE)
    )
  predictor = frame_predictor.FramePredictor.from_config(
    r.config, r.model, r.variables, batch_size=batch_size, with_boxes=r.with_boxes, mesh=mesh
  )
  return make_loaded(predictor, r.config, r.class_names, r.model_info)


def make_loaded(
  predictor: frame_predictor.FramePredictor,
  config: ml_collections.ConfigDict,
  names: Sequence[str],
  info: dict[str, Any],
) -> Loaded:
  """A `Loaded` with the linking of the model's kind: ACT's per-frame linking for one box
  per clip, its tubelet linking and the box classes' names for a tubelet detector."""
  # pylint: disable-next=g-import-not-at-top
  from stconsist_jax.evaluation.evaluators import tubelets as tubelets_eval

  if predictor.tubelet_frames:
    box_names = class_names.box_class_names_for(config, int(config.model.num_box_classes))
    return Loaded(
      predictor,
      config,
      list(names),
      tubelets_eval.linking_config(config),
      info,
      box_names,
      frame_nms_threshold=tubelets_eval.frame_nms_threshold(config),
      tube_frame_stride=int(config.eval.tube_frame_stride),
    )
  return Loaded(predictor, config, list(names), tubes_lib.linking_config(config), info)


def default_stride(loaded: Loaded) -> int:
  """Clips every frame for one box per clip; a tubelet detector's eval.tube_frame_stride."""
  return loaded.tube_frame_stride if loaded.tubelets else 1


# ----------------------------------------------------------------------------------
# One video, many videos.


@dataclasses.dataclass
class VideoResult:
  """What predicting one video produced."""

  name: str
  record: dict[str, Any]
  json_path: epath.Path
  video_path: epath.Path | None
  results: frame_predictor.FrameResults
  tubes: list[Any]


def predict_video(
  loaded: Loaded,
  video: str | os.PathLike,
  out_dir: str | os.PathLike,
  *,
  name: str | None = None,
  every: int = 1,
  top_k: int = 5,
  max_tubes: int = MAX_TUBES,
  write_annotated: bool = True,
  progress: bool = True,
) -> VideoResult:
  """Predicts one video and writes OUT/<name>.json (and OUT/<name>.mp4).

  Args:
    loaded: the model (`load`).
    video: a local file OpenCV can read.
    out_dir: where the outputs go (created; local or a bucket URL).
    name: output file name without extension (default: the video's stem).
    every: predict every `every`-th frame and the last; interpolate in between.
    top_k: per frame, the k best classes in the JSON; 0: every class's score.
    max_tubes: keep the best `max_tubes` tubes (0: all) in the JSON and the drawing.
    write_annotated: also write the annotated video.
    progress: show a progress bar.

  Returns:
    The record (as written) and the arrays behind it.

  Raises:
    video_files.VideoError: (one line) the video cannot be read or holds no frame.
  """
  if every < 1:
    raise ValueError(f'--frame_stride must be >= 1, got {every}')
  if fileio.is_remote(video):
    raise video_files.VideoError(video_files.REMOTE_VIDEO)
  video = pathlib.Path(video)
  out_dir = fileio.as_path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)  # Fails before any decoding.
  output_files.remove_stale_partials(out_dir)
  name = name or video.stem
  json_path = out_dir / f'{name}.json'
  mp4_path = out_dir / f'{name}.mp4'
  if write_annotated and video_files.same_local_file(mp4_path, video):
    mp4_path = out_dir / f'{name}_pred.mp4'
  cap, info = video_files.open_video(video)
  shape = []
  bar = tqdm.tqdm(
    total=info.reported_frames or None,
    unit='frame',
    desc=name,
    disable=not progress,
    leave=False,
    dynamic_ncols=True,
  )

  def on_frame(frame):
    if not shape:
      shape.extend(frame.shape[:2])
    bar.update()

  start = time.perf_counter()
  try:
    results, found, clips = _results_and_tubes(loaded, cap, every, on_frame, shape)
    size = (int(shape[0]), int(shape[1]))
    tube_list = found[:max_tubes] if max_tubes > 0 else found
    predict_s = time.perf_counter() - start
    record = prediction_record.make_record(
      str(video),
      results,
      size,
      info.fps,
      loaded.class_names,
      found,
      tube_list,
      loaded.model_info,
      prediction_record.settings(loaded.predictor, loaded.linking, every, top_k, max_tubes),
      top_k,
      loaded.box_class_names,
    )
    write_s = 0.0
    written = None
    if write_annotated:
      bar.reset(total=results.num_frames)
      bar.set_description(f'{name} (writing)')
      t0 = time.perf_counter()
      annotated_video.write_video(
        video,
        mp4_path,
        results,
        tube_list,
        loaded.class_names,
        info.fps,
        on_frame=bar.update,
        box_class_names=loaded.box_class_names,
      )
      written = mp4_path
      write_s = time.perf_counter() - t0
    record['timing'] = {
      'predict_s': round(predict_s, 3),
      'write_s': round(write_s, 3),
      'frames_per_s': round(results.num_frames / max(predict_s, 1e-9), 2),
      'clips': clips,  # forward passes of the model
    }
    record_schema.validate_prediction(record)
    try:
      write_record(json_path, record)
    except BaseException:
      if written is not None:  # The video and its record are kept together or not at all.
        fileio.as_path(written).unlink(missing_ok=True)
      raise
  finally:
    bar.close()
  if info.reported_frames and info.reported_frames != results.num_frames:
    logging.info(
      '%s: the header states %d frames, %d were decoded',
      video,
      info.reported_frames,
      results.num_frames,
    )
  return VideoResult(name, record, json_path, written, results, tube_list)


def _results_and_tubes(
  loaded: Loaded,
  cap: Any,
  every: int,
  on_frame: Callable[[Any], None],
  shape: list[int],
) -> tuple[frame_predictor.FrameResults, list[Any], int]:
  """The dense per-frame results of the opened video, its tubes and the number of clips
  predicted. `on_frame` records the frame size in `shape`. The model's detections are
  dropped as soon as the dense results hold what they said (before the linking of a
  one-box head, on return for a tubelet detector)."""
  detections = loaded.predictor.detect(
    video_files.read_frames(cap, reuse=True), every=every, bgr=True, on_frame=on_frame
  )
  if detections.num_frames == 0:
    raise video_files.VideoError('no decodable frames')
  size = (int(shape[0]), int(shape[1]))
  clips = int(len(detections.frames))
  if loaded.tubelets:
    results, found = frame_predictor.tubelet_results(
      detections, size, loaded.linking, loaded.frame_nms_threshold
    )
    return results, found, clips
  results = frame_predictor.densify(detections)
  del detections
  return results, frame_predictor.link_tubes(results, loaded.linking, size), clips


def write_record(path: str | os.PathLike, record: dict[str, Any]) -> None:
  """Writes the JSON record entry by entry to a partial file that becomes `path`."""
  with output_files.staged_output(path) as tmp, open(tmp, 'w', encoding='utf-8') as f:
    prediction_record.write(record, f)


def predict_each(
  loaded: Loaded,
  inputs: Sequence[pathlib.Path],
  out_dir: str | os.PathLike,
  *,
  report: Callable[[str], None] = print,
  **options: Any,
) -> Iterator[tuple[pathlib.Path, VideoResult | None, str | None]]:
  """`(video, result, None)` or `(video, None, reason)` for each video in turn.

  A video that fails is reported in one line and skipped; `options` go to
  `predict_video`. Nothing is kept from one video to the next.
  """
  for path, name in zip(inputs, video_files.output_names(list(inputs))):
    try:
      result = predict_video(loaded, path, out_dir, name=name, **options)
    except (video_files.VideoError, cv2.error, OSError) as e:
      reason = ' '.join(str(e).split()) or type(e).__name__
      report(f'skipped {path}: {reason}')
      yield path, None, reason
      continue
    timing = result.record['timing']
    top = result.record['top5'][0]
    report(
      f'{path}: {result.record["num_frames"]} frames in {timing["predict_s"]:.2f} s '
      f'({timing["frames_per_s"]:.1f} frames/s; writing {timing["write_s"]:.2f} s), '
      f'{len(result.tubes)} tubes, top class {top["class"]} {top["score"]:.3f} '
      f'-> {result.json_path}'
    )
    yield path, result, None


def predict_all(
  loaded: Loaded,
  inputs: Sequence[pathlib.Path],
  out_dir: str | os.PathLike,
  *,
  every: int = 1,
  top_k: int = 5,
  max_tubes: int = MAX_TUBES,
  write_annotated: bool = True,
  progress: bool = True,
  report: Callable[[str], None] = print,
) -> tuple[list[VideoResult], dict[str, str]]:
  """Predicts each video (`predict_each`) and keeps every result.

  Returns the results and {video: reason} of the videos skipped.
  """
  done, failed = [], {}
  for path, result, reason in predict_each(
    loaded,
    inputs,
    out_dir,
    report=report,
    every=every,
    top_k=top_k,
    max_tubes=max_tubes,
    write_annotated=write_annotated,
    progress=progress,
  ):
    if result is None:
      failed[str(path)] = reason
    else:
      done.append(result)
  return done, failed
