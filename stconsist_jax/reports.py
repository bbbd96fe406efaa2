"""Evaluation reports: run descriptions and config hashes, the protocol text, report.json,
report.md and the pictures, written as a committed WORKDIR/eval/<step>/ directory.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any
from collections.abc import Mapping, Sequence

from absl import logging
from etils import epath
import jax
import ml_collections
import numpy as np

from stconsist_jax import config_lib
from stconsist_jax import fileio
from stconsist_jax import frame_ap
from stconsist_jax import logging_utils
from stconsist_jax import video_ap
from stconsist_jax import visualize

EVAL_DIR = 'eval'
REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
SHEET_PNG = 'clips.png'
CURVES_PNG = 'curves.png'
SUMMARY_KEYS = (
  'clip_accuracy',
  'clip_top5',
  'video_accuracy',
  'mean_iou',
  'frame_map',
  'video_map@0.5',
)


def describe_model(model_config: Any) -> str:
  """A one-line architecture description, e.g. 'R3D-34 (shortcut B), 101 classes, box head
  Model-2'."""
  widen = float(model_config.widen_factor)
  text = f'R3D-{model_config.depth} (shortcut {model_config.shortcut_type}'
  text += f', widen {widen:g})' if widen != 1.0 else ')'
  text += f', {model_config.num_classes} classes'
  return f'{text}, box head {model_name(model_config)}'


def model_name(model_config: Any) -> str:
  """'Model-1' / 'Model-2' for the study's box heads, else a short description."""
  head = model_config.box_head
  if head == 'none':
    return 'classifier only'
  hidden = tuple(int(h) for h in np.atleast_1d(model_config.box_hidden))
  if head == 'mlp' and hidden == (16,):
    return 'Model-1'
  if head == 'mlp' and hidden == (256, 64, 8):
    return 'Model-2'
  return f'{head} {list(hidden)}'


def freezes_backbone(config: Any) -> bool:
  """Whether training froze backbone and classifier at any point (protocol 2)."""
  return any(bool(stage.get('freeze_backbone', False)) for stage in config.train.stages)


def config_hash(config: ml_collections.ConfigDict) -> str:
  """First 12 hex digits of the SHA-256 of the config's sorted JSON."""
  return hashlib.sha256(config_lib.to_json(config).encode()).hexdigest()[:12]


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


_FRAME_MATCHING_TEXT = {
  'voc': (
    'a ground-truth box is matched at most once (VOC devkit rule: compare with '
    'the highest-IoU box of the frame), duplicates count as false positives; '
    'VOC all-point interpolated AP.'
  ),
  'act': (
    'ACT frameAP rule: boxes converted to pixels with the +1 area convention; '
    'each detection in score order (stable: ties keep stream order) is '
    'compared with the still-unmatched ground-truth boxes of its frame and a '
    'match removes that box; AP = trapezoidal area under the raw '
    'precision/recall curve from (recall 0, precision 1), no envelope.'
  ),
}


def protocol(
  clip_length: int,
  image_size: int,
  clips_per_video: int,
  num_classes: int,
  num_annotated_classes: int = 24,
  extra: Mapping[str, Any] | None = None,
  frame_map_protocol: str = 'voc',
) -> dict[str, Any]:
  """Describes how the reported numbers were measured, for honest comparisons.

  `frame_map_protocol` ('voc' or 'act') must name the rule `frame_map` was called with.
  """
  if frame_map_protocol not in _FRAME_MATCHING_TEXT:
    raise ValueError(
      f'protocol: frame_map_protocol must be one of '
      f'{frame_ap.FRAME_AP_PROTOCOLS}, found {frame_map_protocol!r}'
    )
  desc = {
    'split': 'UCF-101 split 1 test list (UCF101-24 split 1 for boxes)',
    'clip': f'{clip_length} consecutive frames resized (squashed) to {image_size}x{image_size}',
    'clip_accuracy': f'top-1 / top-5 over the {num_classes}-way softmax of every '
    'test clip of the clip stream',
    'video_accuracy': f'top-1 of the softmax averaged over {clips_per_video} '
    'uniformly spaced clips per test video',
    'mean_iou': "IoU of the predicted (x, y, w, h) box with the clip's box target "
    "(primary actor's box averaged over the two central frames), over "
    'clip-stream clips that have a target',
    'frame_map': 'frame-AP at IoU 0.5 per annotated (UCF101-24) class, averaged '
    'over the classes with ground truth. Every annotated frame of the '
    f'test videos is scored: one {clip_length}-frame clip centred on it '
    '(the frame at clip position T//2) gives ONE box, emitted for each '
    f'of the {num_annotated_classes} annotated classes with score = '
    f'softmax over all {num_classes} classes at that class. Detections '
    'ranked across all frames; '
    + _FRAME_MATCHING_TEXT[frame_map_protocol]
    + ' Ground truth: every tube box of the frame (all actors).',
  }
  if extra:
    desc.update(extra)
  return desc


def training_labels(data_config: Any) -> str:
  """The label protocol of training: which videos kept their class, which their boxes."""
  d = data_config
  listed = d.get('labeled_videos', '')
  video_fraction = float(d.get('labeled_video_fraction', 1.0))
  rest = '; the others keep neither and contribute only the consistency terms'
  if listed:
    videos = f'only the videos listed in {listed} keep class and boxes{rest}'
  elif video_fraction < 1.0:
    videos = (
      f'a {video_fraction:g} share of the training videos (keyed hash of name and seed) '
      f'keep class and boxes{rest}'
    )
  else:
    videos = 'every training video keeps its class'
  return (
    f'{videos}. Boxes: UCF101-24 videos '
    f'only, kept for a {float(d.get("box_label_fraction", 1.0)):g} share of them '
    f'(data.box_label_fraction); classes: data.classes={d.get("classes", "all")!r}'
  )


def protocol_of(
  config: ml_collections.ConfigDict, num_annotated_classes: int = 24
) -> dict[str, Any]:
  """`protocol` of an evaluation config: placements, frames scored, data, linking."""
  d, e = config.data, config.eval
  every_frame = e.frame_ap_frames == 'all'
  tubes_text = {}
  if e.video_map:
    tubes_text['video_map'] = (
      f'tubes linked per annotated class on whole test videos: a clip centred on every '
      f'{int(e.tube_frame_stride)}-th frame (and the last) gives one box and '
      f"the class scores, linearly interpolated in between; ACT's linking "
      f'(eval.tubes: {dict(e.tubes)}); spatio-temporal IoU = '
      f'temporal IoU x mean per-frame IoU (+1 pixel convention); per class, tubes '
      f"ranked across videos, each ground-truth tube matched once; AP as ACT's videoAP. "
      f'video_map@0.5:0.95 averages 0.5, 0.55, ..., 0.95'
    )
  return protocol(
    clip_length=int(d.num_frames),
    image_size=int(d.image_size),
    clips_per_video=int(e.clips_per_video),
    num_classes=int(config.model.num_classes),
    num_annotated_classes=num_annotated_classes,
    frame_map_protocol=e.frame_ap_protocol,
    extra={
      **tubes_text,
      'frame_clip_placement': (
        f'annotated frame f at clip position T//2 = {int(d.num_frames) // 2}; clip '
        f'frames f + (p - T//2) * {int(d.frame_stride)}, clamped to the video'
      ),
      'frames_scored': (
        "every frame of the test videos (eval.frame_ap_frames='all', from the "
        'whole-video pass; frames without ground truth hold only false positives)'
        if every_frame
        else f'every annotated frame f (any tube has a box) with f % {int(e.frame_stride)} == 0'
      ),
      'clip_stream_placement': (
        f'{int(e.clips_per_video)} uniformly spaced windows '
        'per test video, loop-padded if shorter than a clip'
      ),
      'data': f'{d.name} split {d.split}, frames stored at {d.frame_size}px',
      'training_labels': training_labels(d),
      'videos': (
        'every test video'
        if not int(e.max_videos)
        else f'a subset: at most {int(e.max_videos)} test videos evenly spaced over '
        'the split (eval.max_videos), not comparable with full-split numbers'
      ),
    },
  )


def frame_summary(frame_result: Mapping[str, Any] | None) -> dict[str, Any]:
  """The report's frame-mAP and video-mAP fields (NaN when not measured).

  The headline `frame_map` scores every frame when the whole-video pass measured it
  (eval.frame_ap_frames='all'), else the annotated frames; both rules are kept.
  """
  if not frame_result:
    return {
      'frame_map': float('nan'),
      'per_class_ap': {},
      **{k: float('nan') for k in video_ap.VIDEO_MAP_KEYS},
    }
  video = frame_result.get('video') or {}
  headline = video.get('all_frames') or frame_result
  out = {
    'frame_map': headline['frame_map'],
    'frame_map_protocol': headline['frame_map_protocol'],
    'frame_map_by_protocol': headline['frame_map_by_protocol'],
    'frame_map_frames': 'all' if 'all_frames' in video else 'annotated',
    'per_class_ap': headline['per_class_ap'],
    **{k: video.get(k, float('nan')) for k in video_ap.VIDEO_MAP_KEYS},
  }
  if 'all_frames' in video:
    out['frame_map_annotated_frames'] = frame_result['frame_map_by_protocol']
  if video:
    out['tubes'] = {
      k: v
      for k, v in video.items()
      if k not in video_ap.VIDEO_MAP_KEYS and k != 'all_frames' and not k.startswith('num_')
    }
  return out


def build_report(
  config: ml_collections.ConfigDict,
  restored: Any,
  clip_result: Mapping[str, Any],
  frame_result: Mapping[str, Any] | None,
  run_name: str,
) -> dict[str, Any]:
  """report.json's dict of an `evaluate.Restored` and its stream metrics (NaN -> None)."""
  source = restored.source_config or config
  report = {
    'run': run_name,
    'checkpoint_step': restored.step,
    'model': model_name(config.model) if not restored.classification_only else 'classifier only',
    'architecture': describe_model(config.model),
    'freeze_backbone': freezes_backbone(source),
    'config_hash': config_hash(source),
    'eval_config_hash': config_hash(config),
    'clip_accuracy': clip_result['clip_accuracy'],
    'clip_top5': clip_result['clip_top5'],
    'video_accuracy': clip_result['video_accuracy'],
    'mean_iou': clip_result['mean_iou'],
    **frame_summary(frame_result),
    'per_class_accuracy': clip_result['per_class_accuracy'],
    'counts': {
      k: v
      for k, v in {
        **clip_result,
        **(frame_result or {}),
        **((frame_result or {}).get('video') or {}),
      }.items()
      if k.startswith('num_')
    },
    'confusion_matrix': clip_result['confusion_matrix'],
    'timing': {k: round(v, 3) for k, v in clip_result.get('timing', {}).items()},
    'protocol': protocol_of(config, len(frame_result['per_class_ap']) if frame_result else 24),
    'devices': int(jax.device_count()),
    'processes': int(jax.process_count()),
  }
  return _nan_to_none(report)


def _fmt(value: Any, percent: bool = False) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.1f}%' if percent else f'{value:.3f}'


def report_markdown(report: Mapping[str, Any], images: Sequence[str] = ()) -> str:
  """report.md: the study's table, the frame-mAP rules, counts, protocol, per class."""
  lines = [
    f'# Evaluation of {report["run"]} at step {report["checkpoint_step"]}',
    '',
    f'{report["architecture"]}; freeze_backbone: {report["freeze_backbone"]}; config '
    f'{report["config_hash"]}.',
    '',
    '| model | freeze_backbone | accuracy (video) | clip top-1 | clip top-5 | mean IoU '
    '| frame-mAP@0.5 | video-mAP@0.2 | @0.5 | @0.75 | @0.5:0.95 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    f'| {report["model"]} | {report["freeze_backbone"]} | '
    f'{_fmt(report["video_accuracy"], True)} | {_fmt(report["clip_accuracy"], True)} '
    f'| {_fmt(report["clip_top5"], True)} | {_fmt(report["mean_iou"])} | '
    f'{_fmt(report["frame_map"], True)} | '
    + ' | '.join(_fmt(report.get(k), True) for k in video_ap.VIDEO_MAP_KEYS)
    + ' |',
    '',
  ]
  by_rule = report.get('frame_map_by_protocol') or {}
  if by_rule:
    lines += [
      f'frame-mAP@0.5 by rule ({report.get("frame_map_frames")} frames): '
      + ', '.join(f'{k} {_fmt(v, True)}' for k, v in by_rule.items())
      + f'; the table shows {report.get("frame_map_protocol")}.',
      '',
    ]
  lines += ['## Counts', '']
  lines += [f'- {k}: {v}' for k, v in report['counts'].items()]
  lines += ['', '## Protocol', '']
  lines += [f'- **{k}**: {v}' for k, v in report['protocol'].items()]
  if report['per_class_ap']:
    lines += [
      '',
      '## Per annotated class',
      '',
      '| class | frame AP | clip accuracy |',
      '| --- | --- | --- |',
    ]
    for name, ap in report['per_class_ap'].items():
      lines.append(
        f'| {name} | {_fmt(ap, True)} | {_fmt(report["per_class_accuracy"].get(name), True)} |'
      )
  if images:
    lines += ['', '## Pictures', '']
    lines += [f'![{name}]({name})' for name in images]
  return '\n'.join(lines) + '\n'


def write_eval_dir(
  out_dir: str | os.PathLike, report: Mapping[str, Any], images: Mapping[str, np.ndarray]
) -> epath.Path:
  """Writes report.json, report.md and PNGs into `out_dir`, its commit file last.

  Readers take only committed report directories (`fileio.is_committed`), so a crash
  mid-write, locally or on a bucket, never leaves a report that looks finished.
  """
  files = {name: visualize.png_bytes(image) for name, image in images.items()}
  files[REPORT_MD] = report_markdown(report, sorted(images))
  files[REPORT_JSON] = json.dumps(report, indent=2) + '\n'
  return fileio.write_committed_dir(out_dir, files)


def clip_sheet_of(
  first: Mapping[str, np.ndarray], class_names: Sequence[str], num_clips: int
) -> np.ndarray | None:
  """The picture of up to `num_clips` valid clips of a batch, clips with a box first."""
  valid = np.nonzero(first['valid'].astype(bool))[0]
  if not len(valid) or 'pred_boxes' not in first:
    return None
  order = sorted(valid, key=lambda i: (not first['has_box'][i], i))[:num_clips]
  clips = first['clip'][order]
  pred_labels = first['pred_logits'][order].argmax(-1)
  return visualize.clip_sheet(
    clips,
    clips[:, :, :, ::-1],
    first['pred_boxes'][order],
    first['pred_flip_boxes'][order],
    gt_boxes=first['box'][order],
    has_box=first['has_box'][order],
    gt_names=[class_names[int(label)] for label in first['label'][order]],
    pred_names=[class_names[int(label)] for label in pred_labels],
  )


def check_writable(directory: str | os.PathLike) -> None:
  """Fails before any compute when reports could not be written to `directory`."""
  probe = fileio.as_path(directory) / f'.write-check-{os.getpid()}'
  try:
    fileio.atomic_write(probe, b'')
    probe.unlink()
  except OSError as e:
    raise PermissionError(
      f'cannot write evaluation reports to {directory} ({e.strerror or e}); pass '
      f'--eval_dir=DIR to write them elsewhere'
    ) from None


def pictures(
  sheet: np.ndarray | None, workdir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
  """The report's PNGs: the clip sheet, and the training curves of WORKDIR/metrics.jsonl."""
  images = {} if sheet is None else {SHEET_PNG: sheet}
  log_path = None if workdir is None else fileio.as_path(workdir) / logging_utils.METRICS_FILENAME
  if log_path is not None and log_path.exists():
    try:
      images[CURVES_PNG] = visualize.training_curves(logging_utils.read_metrics_jsonl(log_path))
    except ValueError as e:
      logging.warning('No training curves: %s', e)
  return images
