"""What a report says about its run: the model in one line, config hashes, and the protocol
text that tells how every number was measured (for honest comparisons).
"""

from __future__ import annotations

import hashlib
from typing import Any
from collections.abc import Mapping

import ml_collections
import numpy as np

from stconsist_jax.config import config_file
from stconsist_jax.config import schema
from stconsist_jax.metrics import frame_ap


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
  if head == 'tubelet':
    k = int(model_config.get('tubelet_frames', 0) or 0)
    options = [
      name
      for key, name in (
        ('tubelet_presence', 'per-frame presence'),
        ('tubelet_finer_stage', 'finer stage'),
        ('tubelet_flip_test', 'flip test'),
      )
      if model_config.get(key, False)
    ]
    extras = ''.join(f', {name}' for name in options)
    return (
      f'tubelet (K={k or "T"}, stride {int(model_config.tubelet_stride)}, '
      f'width {int(model_config.tubelet_width)}, {int(model_config.num_box_classes)} box '
      f'classes{extras})'
    )
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
  return hashlib.sha256(config_file.to_json(config).encode()).hexdigest()[:12]


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


# `config.data.name` of UCF-101 builds: the builder's name, or the generated demo data.
UCF101_DATA_NAMES = ('', 'ucf101_stconsist', 'synthetic')


def is_ucf101(dataset: str) -> bool:
  """Whether `config.data.name` is a UCF-101 build (its boxes are UCF101-24's)."""
  return dataset.split('/')[0] in UCF101_DATA_NAMES


def split_text(dataset: str, split: int) -> str:
  """Which test videos a report's numbers are over: the dataset and its split."""
  if is_ucf101(dataset):
    return f'UCF-101 split {split} test list (UCF101-24 split {split} for boxes)'
  name = dataset.split('/')[0]
  return f'{name} split {split} test videos (the split{split} test list of its build)'


def protocol(
  clip_length: int,
  image_size: int,
  clips_per_video: int,
  num_classes: int,
  num_annotated_classes: int = 24,
  extra: Mapping[str, Any] | None = None,
  frame_map_protocol: str = 'voc',
  split: int = 1,
  dataset: str = '',
) -> dict[str, Any]:
  """Describes how the reported numbers were measured, for honest comparisons.

  `frame_map_protocol` ('voc' or 'act') must name the rule `frame_map` was called with.
  `dataset` is `config.data.name` ('' or UCF-101's builder: UCF-101's split lists).
  """
  if frame_map_protocol not in _FRAME_MATCHING_TEXT:
    raise ValueError(
      f'protocol: frame_map_protocol must be one of '
      f'{frame_ap.FRAME_AP_PROTOCOLS}, found {frame_map_protocol!r}'
    )
  ucf24 = ' (UCF101-24)' if is_ucf101(dataset) else ''
  desc = {
    'split': split_text(dataset, split),
    'clip': f'{clip_length} consecutive frames resized (squashed) to {image_size}x{image_size}',
    'clip_accuracy': f'top-1 / top-5 over the {num_classes}-way softmax of every '
    'test clip of the clip stream',
    'video_accuracy': f'top-1 of the softmax averaged over {clips_per_video} '
    'uniformly spaced clips per test video',
    'mean_iou': "IoU of the predicted (x, y, w, h) box with the clip's box target "
    "(primary actor's box averaged over the two central frames), over "
    'clip-stream clips that have a target',
    'frame_map': f'frame-AP at IoU 0.5 per annotated{ucf24} class, averaged '
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
  annotated = 'UCF101-24 videos' if is_ucf101(str(d.get('name', ''))) else 'annotated videos'
  return (
    f'{videos}. Boxes: {annotated} '
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
  if 'tubes' in e.evaluators:
    tubes_text['video_map'] = (
      f'tubes linked per annotated class on whole test videos: a clip centred on every '
      f'{int(e.tube_frame_stride)}-th frame (and the last) gives one box and '
      f"the class scores, linearly interpolated in between; ACT's linking "
      f'(eval.tubes: {dict(e.tubes)}); spatio-temporal IoU = '
      f'temporal IoU x mean per-frame IoU (+1 pixel convention); per class, tubes '
      f"ranked across videos, each ground-truth tube matched once; AP as ACT's videoAP. "
      f'video_map@0.5:0.95 averages 0.5, 0.55, ..., 0.95'
    )
  if 'tubelets' in e.evaluators:
    tubes_text.update(tubelet_protocol(config))
  return protocol(
    clip_length=int(d.num_frames),
    image_size=int(d.image_size),
    clips_per_video=int(e.clips_per_video),
    num_classes=int(config.model.num_classes),
    num_annotated_classes=num_annotated_classes,
    frame_map_protocol=e.frame_ap_protocol,
    split=int(d.split),
    dataset=str(d.name),
    extra={
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
      **tubes_text,  # the whole-video evaluators' texts (a tubelet detector's replace some)
    },
  )


def tubelet_protocol(config: ml_collections.ConfigDict) -> dict[str, str]:
  """How the tubelets evaluator measured frame-AP and video-AP (it replaces the one-box
  frame-AP text)."""
  d, e = config.data, config.eval
  k = schema.tubelet_frames(config)
  placement = (
    f'whole test videos, a {int(d.num_frames)}-frame clip whose central K={k} output frames '
    f'start every {int(e.tube_frame_stride)}-th frame (and at the last possible start), '
    'clamped to the video: every frame is an output frame of at least one clip'
  )
  present = (
    ' and present on it (the per-frame presence output)' if schema.tubelet_presence(config) else ''
  )
  frames = (
    'every frame of the test videos (frames without ground truth hold only false positives)'
    if e.frame_ap_frames == 'all'
    else 'every annotated frame (any tube has a box)'
  )
  return {
    'frame_map': (
      f'frame-AP at IoU 0.5 per annotated class, averaged over the classes with ground '
      f'truth, of a tubelet detector: {placement}; on each frame, every tubelet box covering '
      f"it{present}, scored by its tubelet's class probabilities, after a per-class NMS at "
      f"{float(e.tubelets.frame_nms_threshold):g} (ACT's frameAP on tubelets), so several "
      f'actors a frame; frames scored: {frames}; '
      + _FRAME_MATCHING_TEXT[e.frame_ap_protocol]
      + ' Ground truth: every tube box of the frame (all actors).'
    ),
    'video_map': (
      f"tubelets of the same clips linked per class by ACT's BuildTubes (eval.tubelets: "
      f'{dict(e.tubelets)}'
      + ("; a tube's frames are those where one of its tubelets is present" if present else '')
      + '); spatio-temporal IoU = temporal IoU x mean per-frame IoU '
      '(+1 pixel convention); per class, tubes ranked across videos by the mean of their '
      "tubelets' scores, each ground-truth tube matched once; AP as ACT's videoAP. "
      'video_map@0.5:0.95 averages 0.5, 0.55, ..., 0.95'
    ),
    'frame_clip_placement': placement,
    'frames_scored': frames,
    'mean_iou': (
      "IoU of the tubelet detector's one-box output (the box, at the clip's central output "
      "frames, of its location with the highest foreground probability) with the clip's "
      "box target (primary actor's box averaged over the two central frames): a one-box "
      'measure, kept for comparison with the one-box heads'
    ),
  }
