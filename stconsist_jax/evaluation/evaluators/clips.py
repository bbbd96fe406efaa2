"""The clip evaluator: clip and video accuracy, per-class accuracy and the mean IoU of the
clip's box, on uniformly spaced test clips; it also draws the report's clip sheet.
"""

from __future__ import annotations

from typing import Any
from collections.abc import Mapping, Sequence

import numpy as np

from stconsist_jax.evaluation import evaluator
from stconsist_jax.evaluation import pictures
from stconsist_jax.metrics import classification

KEYS = ('label', 'box', 'has_box', 'video_id', 'valid')


def clip_metrics(
  out: Mapping[str, np.ndarray], class_names: Sequence[str], with_boxes: bool
) -> dict[str, Any]:
  """Clip/video accuracy, mean IoU, per-class accuracy and counts of the clip stream."""
  valid = out['valid'].astype(bool)
  logits, labels = out['logits'], out['label']
  num_classes = logits.shape[1]
  probs = classification.softmax(logits)
  confusion = classification.confusion_matrix(labels, probs.argmax(-1), num_classes, valid)
  per_class = classification.per_class_accuracy(confusion)
  return {
    'clip_accuracy': classification.accuracy(logits, labels, 1, valid),
    'clip_top5': classification.accuracy(logits, labels, min(5, num_classes), valid),
    'video_accuracy': classification.video_accuracy(probs, labels, out['video_id'], valid),
    'mean_iou': (
      classification.mean_iou(out['boxes'], out['box'], out['has_box'], valid)
      if with_boxes
      else float('nan')
    ),
    'per_class_accuracy': {
      class_names[c]: float(per_class[c]) for c in range(num_classes) if confusion[c].sum()
    },
    'confusion_matrix': confusion.tolist(),
    'num_clips': int(valid.sum()),
    'num_videos': int(len(np.unique(out['video_id'][valid]))),
    'num_clips_with_box': int((out['has_box'].astype(bool) & valid).sum()),
  }


class Evaluator(evaluator.Evaluator):
  """Classification (and the clip box, where the model has one) on the clip stream."""

  name = 'clips'
  summary_keys = ('clip_accuracy', 'clip_top5', 'video_accuracy', 'mean_iou')
  needs_boxes = False

  def run(self, context: evaluator.Context) -> evaluator.Fields:
    with_boxes = context.shared['with_boxes']
    out, first = context.run_stream(
      context.streams.clip_batches(), KEYS, keep_first=with_boxes, desc='eval clips'
    )
    yield from clip_metrics(out, context.streams.class_names, with_boxes).items()
    if first is not None:
      context.shared['sheet'] = pictures.clip_sheet_of(
        first, context.streams.class_names, context.config.eval.sheet_clips
      )
