"""Pictures of a run: test clips with ground-truth and predicted boxes, training curves, and
the PNGs of an evaluation report.

Sheets are drawn with PIL (exact colours: ground truth green, prediction red) beside the
flipped copy of each clip, like the study's figure 1; curves are drawn with matplotlib
from the run's `metrics.jsonl` (one JSON dict per logged step, with a `step` key).
"""

import io
import math
import os
from typing import Any
from collections.abc import Mapping, Sequence

from absl import logging
from etils import epath
import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stconsist_jax.core import boxes as boxes_lib
from stconsist_jax.core import fileio
from stconsist_jax.training import summaries

PathLike = str | os.PathLike

GT_COLOR = (0, 255, 0)
PRED_COLOR = (255, 0, 0)
BACKGROUND = (0, 0, 0)
TEXT_COLOR = (255, 255, 255)
HEADER_HEIGHT = 14
GAP = 6


def box_pixels(box: np.ndarray, width: int, height: int) -> tuple[int, int, int, int]:
  """Normalized `(x, y, w, h)` -> inclusive pixel corners `(x1, y1, x2, y2)`, clipped."""
  x, y, w, h = (float(v) for v in box)
  x1 = int(round(np.clip(x, 0, 1) * width))
  y1 = int(round(np.clip(y, 0, 1) * height))
  x2 = int(round(np.clip(x + w, 0, 1) * width)) - 1
  y2 = int(round(np.clip(y + h, 0, 1) * height)) - 1
  return (min(x1, width - 1), min(y1, height - 1), max(x2, 0), max(y2, 0))


def draw_boxes(
  frame: np.ndarray,
  boxes: Sequence[tuple[np.ndarray, tuple[int, int, int]]],
  scale: int = 1,
  line_width: int = 1,
) -> np.ndarray:
  """Returns `frame` (uint8 `(H, W, 3)`) upscaled by `scale` with box outlines drawn.

  Args:
    frame: uint8 RGB frame.
    boxes: `(box (x, y, w, h) normalized, rgb colour)` pairs, drawn in order.
    scale: nearest-neighbour upscaling factor.
    line_width: outline width in output pixels.
  """
  frame = np.asarray(frame)
  if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
    raise ValueError(
      f'draw_boxes: expected a uint8 (H, W, 3) frame, found {frame.dtype} {frame.shape}'
    )
  img = Image.fromarray(frame)
  if scale != 1:
    img = img.resize((frame.shape[1] * scale, frame.shape[0] * scale), Image.NEAREST)
  draw = ImageDraw.Draw(img)
  for box, color in boxes:
    x1, y1, x2, y2 = box_pixels(box, img.width, img.height)
    if x2 >= x1 and y2 >= y1:
      draw.rectangle((x1, y1, x2, y2), outline=tuple(color), width=line_width)
  return np.asarray(img)


def _frame_indices(num_frames: int, shown: int) -> list[int]:
  shown = max(1, min(shown, num_frames))
  return [int(round(i)) for i in np.linspace(0, num_frames - 1, shown)]


def clip_sheet(
  clips: np.ndarray,
  clips_flip: np.ndarray,
  pred_boxes: np.ndarray,
  pred_boxes_flip: np.ndarray,
  gt_boxes: np.ndarray | None = None,
  has_box: np.ndarray | None = None,
  gt_names: Sequence[str] | None = None,
  pred_names: Sequence[str] | None = None,
  frames_shown: int = 4,
  scale: int = 2,
  line_width: int = 2,
) -> np.ndarray:
  """A uint8 RGB sheet: one row per clip, its frames then its flipped copy's frames.

  Each row has a text header `GT: <name> | pred: <name>` and `frames_shown` frames of
  the clip (evenly spaced), a gap, and the same frames of the flipped clip. Ground-truth
  boxes (green; mirrored on the flipped side) are drawn where `has_box`, the model's
  predicted boxes (red) on each side from that side's own prediction.

  Args:
    clips, clips_flip: uint8 `(N, T, H, W, 3)`.
    pred_boxes, pred_boxes_flip: `(N, 4)` normalized `(x, y, w, h)` predictions.
    gt_boxes: optional `(N, 4)` targets; `has_box` `(N,)` says which exist.
    gt_names, pred_names: optional class names per clip.
    frames_shown: frames per side.
    scale: nearest-neighbour upscaling of each frame.
    line_width: box outline width in sheet pixels.
  """
  clips = np.asarray(clips)
  clips_flip = np.asarray(clips_flip)
  if clips.ndim != 5 or clips.shape != clips_flip.shape:
    raise ValueError(
      f'clip_sheet: expected clips and clips_flip (N, T, H, W, 3) of '
      f'one shape, found {clips.shape} and {clips_flip.shape}'
    )
  n, t, h, w, _ = clips.shape
  if has_box is None:
    has_box = np.zeros(n, bool) if gt_boxes is None else np.ones(n, bool)
  idx = _frame_indices(t, frames_shown)
  fh, fw = h * scale, w * scale
  row_w = 2 * len(idx) * fw + (2 * len(idx) - 1) * 1 + GAP
  row_h = HEADER_HEIGHT + fh
  sheet = Image.new('RGB', (row_w, n * row_h + (n - 1) * GAP), BACKGROUND)
  draw = ImageDraw.Draw(sheet)
  font = ImageFont.load_default()
  for i in range(n):
    top = i * (row_h + GAP)
    gt_name = gt_names[i] if gt_names is not None else '?'
    pred_name = pred_names[i] if pred_names is not None else '?'
    draw.text((2, top + 1), f'GT: {gt_name} | pred: {pred_name}', fill=TEXT_COLOR, font=font)
    x = 0
    for side, (frames, pred) in enumerate(
      ((clips[i], pred_boxes[i]), (clips_flip[i], pred_boxes_flip[i]))
    ):
      boxes = []
      if gt_boxes is not None and has_box[i]:
        gt = gt_boxes[i] if side == 0 else boxes_lib.flip_xywh(gt_boxes[i])
        boxes.append((gt, GT_COLOR))
      boxes.append((pred, PRED_COLOR))
      for j in idx:
        tile = draw_boxes(frames[j], boxes, scale=scale, line_width=line_width)
        sheet.paste(Image.fromarray(tile), (x, top + HEADER_HEIGHT))
        x += fw + 1
      x += GAP - 1
  return np.asarray(sheet)


def png_bytes(image: np.ndarray) -> bytes:
  """A uint8 `(H, W, 3)` image encoded as PNG."""
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(image, np.uint8)).save(buffer, format='PNG')
  return buffer.getvalue()


def save_png(image: np.ndarray, path: PathLike) -> epath.Path:
  """Writes a uint8 `(H, W, 3)` image as PNG whole (local or bucket path)."""
  return fileio.atomic_write(path, png_bytes(image))


# Panels of the curves figure: (title, keys tried in order). Other numeric keys get
# a panel each after these.
CURVE_PANELS: tuple[tuple[str, tuple[str, ...]], ...] = (
  (
    'loss terms',
    (
      'loss',
      'total',
      'cls',
      'loc',
      'con',
      'con_cls',
      'con_loc',
      'tubelet_cls',
      'tubelet_box',
      'tubelet_giou',
      'tubelet_presence',
      'con_dense_cls',
      'con_dense_box',
    ),
  ),
  (
    'consistency share of the loss',
    ('share_con_cls', 'share_con_loc', 'share_con_dense_cls', 'share_con_dense_box'),
  ),
  ('accuracy', ('accuracy', 'train_accuracy', 'eval_clip_accuracy')),
  ('IoU', ('iou', 'train_iou', 'eval_mean_iou')),
  ('consistency weight w(t)', ('con_weight',)),
)
_SKIP_KEYS = ('step', 'time', 'timestamp', 'wall_time')


def last_record_per_step(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
  """Sorted by step; a step logged twice (a resumed run) keeps its last record."""
  by_step = {int(r['step']): r for r in records}
  return [by_step[s] for s in sorted(by_step)]


def _series(records: Sequence[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
  steps, values = [], []
  for r in records:
    v = r.get(key)
    if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v):
      steps.append(r['step'])
      values.append(v)
  return np.asarray(steps), np.asarray(values, np.float64)


def training_curves(records: Sequence[dict[str, Any]], width_px: int = 1200) -> np.ndarray:
  """Renders training curves (loss terms, accuracy, IoU, w(t), then the rest) as RGB."""
  import matplotlib  # pylint: disable=g-import-not-at-top

  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top

  if not records:
    raise ValueError('training_curves: no logged records to plot')
  records = last_record_per_step(records)
  keys = []
  for r in records:
    for k, v in r.items():
      if (
        k not in keys
        and k not in _SKIP_KEYS
        and isinstance(v, (int, float))
        and not isinstance(v, bool)
      ):
        keys.append(k)
  panels, used = [], set()
  for title, wanted in CURVE_PANELS:
    present = [k for k in wanted if k in keys]
    if present:
      panels.append((title, present))
      used.update(present)
  panels += [(k, [k]) for k in keys if k not in used]
  cols = min(3, len(panels))
  rows = math.ceil(len(panels) / cols)
  dpi = 100
  fig, axes = plt.subplots(rows, cols, figsize=(width_px / dpi, 3 * rows), dpi=dpi, squeeze=False)
  for ax, (title, present) in zip(axes.flat, panels):
    for k in present:
      s, v = _series(records, k)
      ax.plot(s, v, label=k)
    ax.set_title(title)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    if len(present) > 1:
      ax.legend(fontsize=8)
  for ax in list(axes.flat)[len(panels) :]:
    ax.axis('off')
  fig.tight_layout()
  fig.canvas.draw()
  image = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return image


# The report's picture files.
SHEET_PNG = 'clips.png'
CURVES_PNG = 'curves.png'


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
  return clip_sheet(
    clips,
    clips[:, :, :, ::-1],
    first['pred_boxes'][order],
    first['pred_flip_boxes'][order],
    gt_boxes=first['box'][order],
    has_box=first['has_box'][order],
    gt_names=[class_names[int(label)] for label in first['label'][order]],
    pred_names=[class_names[int(label)] for label in pred_labels],
  )


def report_pictures(
  sheet: np.ndarray | None, workdir: str | os.PathLike | None = None
) -> dict[str, np.ndarray]:
  """The report's PNGs: the clip sheet, and the training curves of WORKDIR/metrics.jsonl."""
  images = {} if sheet is None else {SHEET_PNG: sheet}
  log_path = None if workdir is None else fileio.as_path(workdir) / summaries.METRICS_FILENAME
  if log_path is not None and log_path.exists():
    try:
      images[CURVES_PNG] = training_curves(summaries.read_metrics_jsonl(log_path))
    except ValueError as e:
      logging.warning('No training curves: %s', e)
  return images
