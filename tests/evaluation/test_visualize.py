"""Tests of the clip sheets and training curves: shapes, content, box pixels in place."""

import io
import json

import numpy as np
import pytest
from PIL import Image

from stconsist_jax.training import summaries
from stconsist_jax.evaluation import pictures

GREEN = np.array(pictures.GT_COLOR)
RED = np.array(pictures.PRED_COLOR)


def _is(pixels, color):
  return np.all(pixels == color, axis=-1)


def test_draw_boxes_outline_on_expected_pixels():
  frame = np.full((16, 16, 3), 128, np.uint8)
  out = pictures.draw_boxes(
    frame, [((0.25, 0.25, 0.5, 0.5), pictures.GT_COLOR)], scale=2, line_width=1
  )
  assert out.shape == (32, 32, 3)
  # Box from pixel 8 to 23 (inclusive) on each axis of the 32x32 upscaled frame.
  green = _is(out, GREEN)
  assert green[8, 8:24].all() and green[23, 8:24].all()
  assert green[8:24, 8].all() and green[8:24, 23].all()
  assert green.sum() == 4 * 16 - 4
  # Inside and outside untouched.
  assert (out[12, 12] == 128).all() and (out[2, 2] == 128).all()


def test_draw_boxes_rejects_float_frames():
  with pytest.raises(ValueError, match='uint8'):
    pictures.draw_boxes(np.zeros((4, 4, 3), np.float32), [])


def _tile_origin(row, side, j, n_shown, fw, fh):
  """Top-left of frame tile j on a side (0 clip, 1 flipped), from the sheet layout."""
  x = side * (n_shown * (fw + 1) + pictures.GAP - 1) + j * (fw + 1)
  y = row * (pictures.HEADER_HEIGHT + fh + pictures.GAP) + pictures.HEADER_HEIGHT
  return y, x


def test_clip_sheet_layout_and_boxes():
  n, t, h, w, scale = 2, 8, 16, 16, 2
  rng = np.random.default_rng(0)
  clips = np.full((n, t, h, w, 3), 100, np.uint8)
  clips[1] = rng.integers(60, 140, size=(t, h, w, 3))  # no pure red/green pixels
  clips_flip = clips[:, :, :, ::-1]
  gt = np.array([[0.125, 0.25, 0.25, 0.5], [0.5, 0.5, 0.25, 0.25]])
  pred = np.array([[0.5, 0.0, 0.25, 0.25], [0.0, 0.0, 0.5, 0.5]])
  pred_flip = np.array([[0.25, 0.5, 0.25, 0.25], [0.5, 0.5, 0.5, 0.5]])
  sheet = pictures.clip_sheet(
    clips,
    clips_flip,
    pred,
    pred_flip,
    gt_boxes=gt,
    has_box=np.array([True, False]),
    gt_names=['Biking', 'Diving'],
    pred_names=['Biking', 'Fencing'],
    frames_shown=3,
    scale=scale,
    line_width=1,
  )
  fw, fh = w * scale, h * scale
  exp_w = 2 * 3 * fw + 5 + pictures.GAP
  exp_h = 2 * (pictures.HEADER_HEIGHT + fh) + pictures.GAP
  assert sheet.shape == (exp_h, exp_w, 3) and sheet.dtype == np.uint8
  # Header text is drawn (bright grey-to-white antialiased pixels in each band).
  for row in range(2):
    top = row * (pictures.HEADER_HEIGHT + fh + pictures.GAP)
    band = sheet[top : top + pictures.HEADER_HEIGHT].astype(int)
    assert ((band.min(-1) > 150) & (band.max(-1) - band.min(-1) < 10)).sum() > 20
  for j in range(3):
    # Row 0, clip side: GT x 0.125..0.375 -> pixels 4..11, y 0.25..0.75 -> 8..23.
    y0, x0 = _tile_origin(0, 0, j, 3, fw, fh)
    tile = sheet[y0 : y0 + fh, x0 : x0 + fw]
    assert _is(tile[8, 4:12], GREEN).all() and _is(tile[8:24, 4], GREEN).all()
    # Prediction x 0.5..0.75 -> 16..23, y 0..0.25 -> 0..7.
    assert _is(tile[0, 16:24], RED).all() and _is(tile[0:8, 23], RED).all()
    # Row 0, flipped side: GT mirrored to x 0.625..0.875 -> 20..27.
    y0, x0 = _tile_origin(0, 1, j, 3, fw, fh)
    tile = sheet[y0 : y0 + fh, x0 : x0 + fw]
    assert _is(tile[8:24, 20], GREEN).all() and _is(tile[8:24, 27], GREEN).all()
    assert not _is(tile[8:24, 4], GREEN).any()
    # Flipped prediction x 0.25..0.5 -> 8..15, y 0.5..0.75 -> 16..23.
    assert _is(tile[16, 8:16], RED).all()
    # Row 1 has no box target: no green anywhere in its tiles.
    for side in range(2):
      y0, x0 = _tile_origin(1, side, j, 3, fw, fh)
      tile = sheet[y0 : y0 + fh, x0 : x0 + fw]
      assert not _is(tile, GREEN).any()
      assert _is(tile, RED).sum() > 0
  # The clip's own pixels show through inside the tiles (non-blank, not all one value).
  y0, x0 = _tile_origin(1, 0, 1, 3, fw, fh)
  assert sheet[y0 + 20 : y0 + 30, x0 + 2 : x0 + 12].std() > 5


def test_save_png_roundtrip(tmp_path):
  img = np.zeros((5, 7, 3), np.uint8)
  img[2, 3] = (1, 2, 3)
  path = pictures.save_png(img, tmp_path / 'sub' / 'a.png')
  back = np.asarray(Image.open(path))
  np.testing.assert_array_equal(back, img)
  assert [p.name for p in path.parent.iterdir()] == ['a.png']  # no temp file left


def _write_jsonl(path, records, tail=''):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)


def test_training_curves_png(tmp_path):
  records = [
    {
      'step': s,
      'loss': 3.0 / (s + 1),
      'cls': 2.0 / (s + 1),
      'loc': 0.1,
      'con_cls': 0.001,
      'con_loc': 0.002,
      'con_weight': min(1.0, s / 5),
      'accuracy': s / 10,
      'iou': s / 20,
      'lr': 0.01,
    }
    for s in range(10)
  ]
  metrics_path = tmp_path / 'metrics.jsonl'
  # A run killed mid-write leaves a truncated last line: it is skipped.
  _write_jsonl(metrics_path, records, tail='{"step": 10, "lo')
  assert len(summaries.read_metrics_jsonl(metrics_path)) == 10
  # A resumed run logs steps 5..9 again (the logger appends): the later record wins.
  resumed = [dict(r, loss=-1.0) for r in records[5:]]
  deduped = pictures.last_record_per_step(records + resumed)
  assert [r['step'] for r in deduped] == list(range(10))
  assert [r['loss'] for r in deduped[5:]] == [-1.0] * 5
  assert deduped[4]['loss'] == records[4]['loss']
  # The report's pictures read WORKDIR/metrics.jsonl and draw the curves.
  images = pictures.report_pictures(None, tmp_path)
  assert set(images) == {pictures.CURVES_PNG}
  img = np.asarray(Image.open(io.BytesIO(pictures.png_bytes(images[pictures.CURVES_PNG]))))
  # 5 panels (loss terms, accuracy, IoU, w(t), lr) in 3 columns -> 2 rows of 300 px.
  assert img.shape == (600, 1200, 3)
  assert img.std() > 10  # not blank
  # Matplotlib's default first line colour (C0, #1f77b4) is present: curves drawn.
  c0 = np.array([0x1F, 0x77, 0xB4])
  assert (np.abs(img.astype(int) - c0).sum(-1) < 30).sum() > 200


def test_read_metrics_jsonl_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='metrics.jsonl'):
    summaries.read_metrics_jsonl(tmp_path / 'metrics.jsonl')
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
  with pytest.raises(ValueError, match='bad.jsonl:2'):
    summaries.read_metrics_jsonl(bad)
  nostep = tmp_path / 'nostep.jsonl'
  nostep.write_text('{"loss": 1}\n{"step": 2}\n')
  with pytest.raises(ValueError, match="'step'"):
    summaries.read_metrics_jsonl(nostep)
