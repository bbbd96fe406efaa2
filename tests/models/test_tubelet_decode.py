"""Tests of the tubelet geometry and decoding (stconsist_jax.models.tubelet_decode).

Every expected box is computed by hand from the contract's geometry on constructed maps.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stconsist_jax.models import tubelet_decode

BACKGROUND = 6.0  # Background logit of the cells that hold no actor.
# Compiled once per shape: eagerly, every primitive would compile on its own.
DECODE = jax.jit(tubelet_decode.decode, static_argnames=('top_n', 'candidates'))
CENTRE_BOX = jax.jit(tubelet_decode.centre_box)
CORNERS = jax.jit(tubelet_decode.tubelet_corners, static_argnames='clip')


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _maps(h, w, k, num_classes=3):
  """Background everywhere: logits (1, h, w, C + 1), zero-size boxes (1, h, w, K, 4)."""
  logits = np.zeros((1, h, w, num_classes + 1), np.float32)
  logits[..., 0] = BACKGROUND
  return logits, np.zeros((1, h, w, k, 4), np.float32)


def _peak(logits, cell, cls, value):
  logits[(0, *cell)] = 0.0
  logits[(0, *cell, cls + 1)] = value


def _decode(logits, boxes, **kwargs):
  out = DECODE(jnp.asarray(logits), jnp.asarray(boxes), **kwargs)
  return {k: np.asarray(v) for k, v in out.items()}


def test_one_cell_geometry_by_hand():
  boxes = np.zeros((2, 4, 1, 4), np.float32)  # h = 2, w = 4, K = 1
  boxes[1, 2, 0] = [0.5, -0.25, 0.5, 0.25]
  corners = np.asarray(CORNERS(jnp.asarray(boxes)))
  # Centre ((2 + 0.5 + 0.5) / 4, (1 + 0.5 - 0.25) / 2) = (0.75, 0.625), size 0.5 x 0.25.
  np.testing.assert_allclose(corners[1, 2, 0], [0.5, 0.5, 1.0, 0.75], atol=1e-7)
  # A zero offset is the cell centre: cell (0, 3) -> (3.5 / 4, 0.5 / 2), zero size.
  np.testing.assert_allclose(corners[0, 3, 0], [0.875, 0.25, 0.875, 0.25], atol=1e-7)
  boxes[0, 0, 0] = [-1.0, -1.0, 0.5, 0.5]  # Centre (-0.125, -0.25): clipped to the frame.
  clipped = np.asarray(CORNERS(jnp.asarray(boxes), clip=True))
  np.testing.assert_allclose(clipped[0, 0, 0], [0.0, 0.0, 0.125, 0.0], atol=1e-7)


def test_three_actors_three_detections():
  logits, boxes = _maps(4, 4, 2)
  _peak(logits, (0, 1), cls=2, value=5.0)
  _peak(logits, (2, 3), cls=0, value=4.0)
  _peak(logits, (3, 0), cls=1, value=3.0)
  boxes[0, 0, 1] = [[0.2, -0.1, 0.25, 0.5], [0.4, 0.0, 0.25, 0.5]]
  boxes[0, 2, 3] = [[0.0, 0.0, 0.5, 0.5], [-0.2, 0.2, 0.5, 0.5]]
  boxes[0, 3, 0] = [[0.0, 0.0, 0.1, 0.2], [0.0, 0.0, 0.1, 0.2]]
  out = _decode(logits, boxes, top_n=3, nms_threshold=0.5)

  expected = np.array(
    [
      # (0, 1): centres (1.7 / 4, 0.4 / 4) = (0.425, 0.1) and (0.475, 0.125); y1 clipped.
      [[0.3, 0.0, 0.55, 0.35], [0.35, 0.0, 0.6, 0.375]],
      # (2, 3): centres (0.875, 0.625) and (0.825, 0.675); x2 clipped.
      [[0.625, 0.375, 1.0, 0.875], [0.575, 0.425, 1.0, 0.925]],
      # (3, 0): centre (0.125, 0.875), size 0.1 x 0.2, both frames.
      [[0.075, 0.775, 0.175, 0.975]] * 2,
    ]
  )
  np.testing.assert_allclose(out['det_boxes'][0], expected, atol=1e-6)
  assert out['det_valid'].tolist() == [[True, True, True]]
  probs = _softmax(np.array([[0, 0, 0, 5.0], [0, 4.0, 0, 0], [0, 0, 3.0, 0]]))[:, 1:]
  np.testing.assert_allclose(out['det_scores'][0], probs, rtol=1e-5)
  assert out['det_boxes'].dtype == np.float32 and out['det_scores'].dtype == np.float32


def test_overlapping_peak_is_suppressed_and_rows_padded():
  logits, boxes = _maps(4, 4, 2)
  _peak(logits, (1, 1), cls=0, value=5.0)
  _peak(logits, (1, 2), cls=1, value=4.0)  # Its box is the (1, 1) box moved a little.
  _peak(logits, (3, 3), cls=2, value=3.0)
  boxes[0, 1, 1] = [[0.0, 0.0, 0.5, 0.5]] * 2  # [0.125, 0.125, 0.625, 0.625]
  boxes[0, 1, 2] = [[-0.8, 0.0, 0.5, 0.5]] * 2  # [0.175, 0.125, 0.675, 0.625]: IoU 0.82
  boxes[0, 3, 3] = [[0.0, 0.0, 0.25, 0.25]] * 2
  out = _decode(logits, boxes, top_n=4, nms_threshold=0.5, candidates=3)
  assert out['det_valid'].tolist() == [[True, True, False, False]]
  np.testing.assert_allclose(out['det_boxes'][0, 0, 0], [0.125, 0.125, 0.625, 0.625], atol=1e-6)
  np.testing.assert_allclose(
    out['det_boxes'][0, 1, 0], [0.875 - 0.125, 0.875 - 0.125, 1.0, 1.0], atol=1e-6
  )
  assert out['det_scores'][0, 1].argmax() == 2
  assert not out['det_boxes'][0, 2:].any() and not out['det_scores'][0, 2:].any()
  # The same pair under a threshold above their overlap: both kept.
  out = _decode(logits, boxes, top_n=4, nms_threshold=0.9, candidates=3)
  assert out['det_valid'].tolist() == [[True, True, True, False]]


def test_presence_is_read_at_the_chosen_cells():
  """The suppression case above with presence logits: each detection takes its own cell's
  presence; the suppressed and padded rows are absent everywhere."""
  logits, boxes = _maps(4, 4, 2)
  _peak(logits, (1, 1), cls=0, value=5.0)
  _peak(logits, (1, 2), cls=1, value=4.0)  # suppressed by (1, 1)
  _peak(logits, (3, 3), cls=2, value=3.0)
  boxes[0, 1, 1] = [[0.0, 0.0, 0.5, 0.5]] * 2
  boxes[0, 1, 2] = [[-0.8, 0.0, 0.5, 0.5]] * 2
  boxes[0, 3, 3] = [[0.0, 0.0, 0.25, 0.25]] * 2
  presence = np.full((1, 4, 4, 2), 5.0, np.float32)  # present everywhere else
  presence[0, 1, 1] = [2.0, -2.0]  # sigmoid 0.88, 0.12
  presence[0, 3, 3] = [-2.0, 0.0]  # sigmoid 0.12, 0.5 (>= 0.5: present)
  kwargs = dict(top_n=4, nms_threshold=0.5, candidates=3, tubelet_presence=jnp.asarray(presence))
  out = _decode(logits, boxes, **kwargs)
  assert out['det_valid'].tolist() == [[True, True, False, False]]
  assert out['det_present'].dtype == np.bool_
  assert out['det_present'].tolist() == [
    [[True, False], [False, True], [False, False]] + [[False] * 2]
  ]
  out = _decode(logits, boxes, presence_threshold=0.9, **kwargs)
  assert out['det_present'].tolist() == [[[False, False]] * 4]
  assert 'det_present' not in _decode(logits, boxes, top_n=4, nms_threshold=0.5)


def test_overlap_is_the_mean_over_frames():
  """Identical boxes in frame 0, disjoint in frame 1: tubelet IoU exactly 0.5."""
  logits, boxes = _maps(2, 2, 2)
  _peak(logits, (0, 0), cls=0, value=5.0)
  _peak(logits, (1, 1), cls=0, value=4.0)
  # Cell (0, 0) centre (0.25, 0.25); cell (1, 1) centre (0.75, 0.75).
  boxes[0, 0, 0] = [[0.5, 0.5, 0.25, 0.25], [0.0, 0.0, 0.25, 0.25]]
  boxes[0, 1, 1] = [[-0.5, -0.5, 0.25, 0.25], [0.0, 0.0, 0.25, 0.25]]
  a = CORNERS(jnp.asarray(boxes))[0]
  assert float(tubelet_decode.tubelet_iou(a[0, 0], a[1, 1])) == pytest.approx(0.5)
  kept = _decode(logits, boxes, top_n=2, nms_threshold=0.5, candidates=2)['det_valid']
  assert kept.tolist() == [[True, True]]  # Suppressed only above the threshold.
  kept = _decode(logits, boxes, top_n=2, nms_threshold=0.49, candidates=2)['det_valid']
  assert kept.tolist() == [[True, False]]


def test_greedy_nms_chain():
  """A overlaps B, B overlaps C, A not C: B goes, so C stays (greedy in score order)."""
  overlaps = np.array([[1.0, 0.7, 0.1], [0.7, 1.0, 0.7], [0.1, 0.7, 1.0]], np.float32)
  keep = tubelet_decode.greedy_nms(jnp.asarray(overlaps)[None], 0.5)
  assert np.asarray(keep).tolist() == [[True, False, True]]


def test_top_n_beyond_the_map_is_padding():
  logits, boxes = _maps(2, 2, 1)
  boxes[..., 2:] = 0.5
  boxes[0, :, :, 0, :2] = [[[-0.5, -0.5], [0.5, -0.5]], [[-0.5, 0.5], [0.5, 0.5]]]  # Disjoint.
  out = _decode(logits, boxes, top_n=6, nms_threshold=0.5)
  assert out['det_boxes'].shape == (1, 6, 1, 4) and out['det_scores'].shape == (1, 6, 3)
  assert out['det_valid'].tolist() == [[True] * 4 + [False] * 2]
  assert not out['det_boxes'][0, 4:].any()


def _random_maps(rng, n, h, w, k, num_classes):
  logits = rng.randn(n, h, w, num_classes + 1).astype(np.float32) * 2
  boxes = np.concatenate(
    [rng.uniform(-0.6, 0.6, (n, h, w, k, 2)), rng.uniform(0.2, 0.7, (n, h, w, k, 2))], -1
  ).astype(np.float32)
  return logits, boxes


def _mirror_maps(logits, boxes):
  mirrored = boxes[:, :, ::-1].copy()
  mirrored[..., 0] *= -1
  return logits[:, :, ::-1].copy(), mirrored


def test_mirrored_maps_decode_to_mirrored_boxes():
  logits, boxes = _random_maps(np.random.RandomState(0), 2, 3, 5, 3, 4)
  out = DECODE(logits, boxes, top_n=15, nms_threshold=0.3)
  flip = DECODE(*_mirror_maps(logits, boxes), top_n=15, nms_threshold=0.3)
  np.testing.assert_array_equal(out['det_valid'], flip['det_valid'])
  assert (0 < np.asarray(out['det_valid']).sum(axis=1)).all()
  assert (np.asarray(out['det_valid']).sum(axis=1) < 15).all()  # Some suppressed.
  np.testing.assert_allclose(flip['det_scores'], out['det_scores'], rtol=1e-6)
  x1, y1, x2, y2 = np.moveaxis(np.asarray(out['det_boxes']), -1, 0)
  expected = np.stack([1 - x2, y1, 1 - x1, y2], -1) * np.asarray(out['det_valid'])[..., None, None]
  np.testing.assert_allclose(flip['det_boxes'], expected, atol=1e-6)

  centre = np.asarray(CENTRE_BOX(jnp.asarray(logits), jnp.asarray(boxes)))
  centre_flip = np.asarray(CENTRE_BOX(*map(jnp.asarray, _mirror_maps(logits, boxes))))
  x, y, bw, bh = centre.T
  np.testing.assert_allclose(centre_flip, np.stack([1 - x - bw, y, bw, bh], -1), atol=1e-6)


def test_centre_box_by_hand():
  logits, boxes = _maps(2, 2, 3)
  _peak(logits, (1, 0), cls=1, value=2.0)
  _peak(logits, (0, 1), cls=0, value=1.0)  # Lower: not chosen.
  boxes[0, 0, 1] = [0.0, 0.0, 0.9, 0.9]
  # Cell (1, 0), centre (0.25, 0.75); K = 3: the middle frame's box.
  boxes[0, 1, 0] = [[0.3, 0.0, 0.1, 0.1], [0.1, -0.2, 0.2, 0.4], [0.0, 0.0, 0.1, 0.1]]
  box = np.asarray(CENTRE_BOX(jnp.asarray(logits), jnp.asarray(boxes)))
  # Centre (0.3, 0.65), size 0.2 x 0.4 -> xywh (0.2, 0.45, 0.2, 0.4).
  np.testing.assert_allclose(box, [[0.2, 0.45, 0.2, 0.4]], atol=1e-6)
  # K = 2: the mean of both frames' corner boxes, clipped first: frame 0 centre (0.25, 0.75),
  # 0.2 x 0.2 -> [0.15, 0.65, 0.35, 0.85]; frame 1 centre (0.35, 0.75), 0.2 x 0.6 ->
  # [0.25, 0.45, 0.45, 1.05 -> 1.0]; mean [0.2, 0.55, 0.4, 0.925].
  boxes2 = np.zeros((1, 2, 2, 2, 4), np.float32)
  boxes2[0, 1, 0] = [[0.0, 0.0, 0.2, 0.2], [0.2, 0.0, 0.2, 0.6]]
  box = np.asarray(CENTRE_BOX(jnp.asarray(logits), jnp.asarray(boxes2)))
  np.testing.assert_allclose(box, [[0.2, 0.55, 0.2, 0.375]], atol=1e-6)


@pytest.mark.parametrize('t,k,expected', [(16, 0, (16, 0)), (16, 6, (6, 5)), (16, 7, (7, 4))])
def test_output_frames(t, k, expected):
  assert tubelet_decode.output_frames(t, k) == expected


def test_output_frames_beyond_the_clip():
  with pytest.raises(ValueError, match='tubelet_frames must be in 0..8'):
    tubelet_decode.output_frames(8, 9)
