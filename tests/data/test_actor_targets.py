"""The dense (tubelet) targets of the training stream: every actor on every clip frame.

In-memory videos as in test_pipeline: frame i is read back from its pixels, so every
check recomputes the targets in numpy from the video's own tubes and the frames seen.
"""

import ml_collections
import numpy as np
import pytest
import tensorflow as tf

from stconsist_jax.data.pipeline import clips
from stconsist_jax.data.pipeline import label_protocols
from stconsist_jax.data.pipeline import random_source
from stconsist_jax.data.pipeline import sources
from stconsist_jax.data.pipeline import train_stream
from tests.data.test_pipeline import SIZE
from tests.data.test_pipeline import T
from tests.data.test_pipeline import data_config
from tests.data.test_pipeline import encode
from tests.data.test_pipeline import frame_ids
from tests.data.test_pipeline import frame_image
from tests.data.test_pipeline import full_config
from tests.data.test_pipeline import take
from tests.data.test_pipeline import tfds_config

A = 2  # data.max_actors in these tests
ACTOR_SHAPES = {
  'actor_boxes': ((T, A, 4), np.float32),
  'actor_boxes_flip': ((T, A, 4), np.float32),
  'actor_present': ((T, A), np.bool_),
  'actor_labels': ((A,), np.int32),
  'dense_labeled': ((), np.bool_),
}


def actor_video(rng, name, num_frames, label, num_tubes, image=frame_image):
  """A video with `num_tubes` actors: each on its own stretch (some with a gap), with its
  own random box per frame; labels label, label + 1, ... (box-class space)."""
  present = np.zeros((num_tubes, num_frames), bool)
  boxes = np.zeros((num_tubes, num_frames, 4), np.float32)
  for k in range(num_tubes):
    start = int(rng.integers(0, num_frames // 2 + 1))
    end = int(rng.integers(start + 1, num_frames + 1))
    present[k, start:end] = True
    if end - start > 2 and rng.random() < 0.5:
      present[k, rng.integers(start + 1, end - 1)] = False
    xy = rng.uniform(0.0, 0.6, (num_frames, 2))
    wh = rng.uniform(0.1, 0.4, (num_frames, 2))
    boxes[k] = np.where(present[k, :, None], np.concatenate([xy, xy + wh], 1), 0)
  return {
    'frames': [encode(image(i)) for i in range(num_frames)],
    'label': label,
    'name': name,
    'num_frames': num_frames,
    'annotated': num_tubes > 0,
    'tube_labels': (label + np.arange(num_tubes)).astype(np.int32) % 6,
    'tube_boxes': boxes,
    'tube_present': present,
  }


# Video i has label i; lengths include ones shorter than the window (loop padding), and
# 0 to 3 tubes (3 > A: a third actor, dropped, makes its clips' dense targets unknown).
LENGTHS = (5, 9, 14, 20, 31, 12, 27, 6, 17)
TUBES = (2, 1, 0, 3, 2, 2, 1, 3, 2)


@pytest.fixture(scope='module')
def actor_source() -> sources.InMemorySource:
  rng = np.random.default_rng(11)
  videos = [
    actor_video(rng, f'C{i}/v_{i}', n, i, k) for i, (n, k) in enumerate(zip(LENGTHS, TUBES))
  ]
  return sources.InMemorySource({'train': videos})


def expected_actors(video, ids, kept=True):
  """Independent reference: tubes 0..A-1 on the frames `ids`, xywh, protocol applied."""
  tube_present, tube_boxes = video['tube_present'], video['tube_boxes']
  num_tubes = len(video['tube_labels'])
  crowded = num_tubes > A and tube_present[A:][:, ids].any()
  dense = bool(kept and video['annotated'] and not crowded)
  boxes = np.zeros((T, A, 4))
  present = np.zeros((T, A), bool)
  labels = np.full(A, -1)
  if dense:
    for a in range(min(num_tubes, A)):
      labels[a] = video['tube_labels'][a]
      for t, f in enumerate(ids):
        if tube_present[a, f]:
          x1, y1, x2, y2 = tube_boxes[a, f]
          boxes[t, a] = [x1, y1, x2 - x1, y2 - y1]
          present[t, a] = True
  return boxes, present, labels, dense


def mirrored(boxes, present):
  x, y, w, h = np.moveaxis(boxes, -1, 0)
  return np.where(present[..., None], np.stack([1 - x - w, y, w, h], -1), 0.0)


def rows(batches):
  for batch in batches:
    for i in range(len(batch['label'])):
      yield {k: v[i] for k, v in batch.items()}


def test_actor_targets_follow_every_tube_on_every_clip_frame(actor_source):
  videos = actor_source.splits['train']
  batches, _ = take(data_config(max_actors=A, shuffle_buffer=4), actor_source, 12, batch=3)
  assert set(batches[0]) == set(train_stream.TRAIN_KEYS) | set(train_stream.ACTOR_KEYS)
  for key, (shape, dtype) in ACTOR_SHAPES.items():
    assert batches[0][key].shape == (3, *shape) and batches[0][key].dtype == dtype, key
  seen = {'looped': 0, 'two_actors': 0, 'crowded': 0, 'absent_in_window': 0}
  for row in rows(batches):
    video = videos[row['label']]
    ids = frame_ids(row['clip'])
    boxes, present, labels, dense = expected_actors(video, ids)
    assert row['dense_labeled'] == dense
    np.testing.assert_array_equal(row['actor_present'], present)
    np.testing.assert_array_equal(row['actor_labels'], labels)
    np.testing.assert_allclose(row['actor_boxes'], boxes, atol=1e-6)
    np.testing.assert_allclose(row['actor_boxes_flip'], mirrored(boxes, present), atol=1e-6)
    seen['looped'] += len(set(ids)) < T
    seen['two_actors'] += bool(present.all(1).any())
    seen['crowded'] += bool(video['annotated'] and not dense)
    seen['absent_in_window'] += bool(dense and not present.all())
  assert all(seen.values()), seen


def test_max_actors_zero_leaves_the_stream_as_it_was(actor_source):
  zero, _ = take(data_config(max_actors=0), actor_source, 2)
  with_actors, _ = take(data_config(max_actors=A), actor_source, 2)
  for a, b in zip(zero, with_actors):
    assert set(a) == set(train_stream.TRAIN_KEYS)
    assert set(b) == set(a) | set(train_stream.ACTOR_KEYS)
    for key in a:  # the same clips and box targets
      np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
  'protocol', [dict(box_label_fraction=0.5), dict(labeled_video_fraction=0.5)]
)
def test_label_protocols_withhold_the_dense_targets(actor_source, protocol):
  videos = actor_source.splits['train']
  names = [v['name'] for v in videos]
  seed = 3
  if 'box_label_fraction' in protocol:
    kept = label_protocols.kept_names(
      names, seed, protocol['box_label_fraction'], label_protocols.BOX_LABEL
    )
  else:
    kept = label_protocols.kept_names(
      names, seed, protocol['labeled_video_fraction'], label_protocols.VIDEO_LABEL
    )
  cfg = data_config(max_actors=A, shuffle_buffer=4, **protocol)
  batches, _ = take(cfg, actor_source, 9, batch=2, seed=seed)
  withheld = 0
  for row in rows(batches):
    video = videos[row['label']] if row['label'] >= 0 else None
    if video is None:  # the video-level protocol hides the class: dense targets too
      assert not row['has_label'] and not row['dense_labeled']
      withheld += 1
    else:
      keeps = video['name'] in kept
      boxes, present, labels, dense = expected_actors(video, frame_ids(row['clip']), keeps)
      assert row['dense_labeled'] == dense
      withheld += not keeps and video['annotated']
      np.testing.assert_array_equal(row['actor_labels'], labels)
      np.testing.assert_array_equal(row['actor_present'], present)
      np.testing.assert_allclose(row['actor_boxes'], boxes, atol=1e-6)
    if not row['dense_labeled']:
      assert not row['actor_present'].any() and (row['actor_labels'] == -1).all()
      assert not row['actor_boxes'].any() and not row['actor_boxes_flip'].any()
  assert withheld > 0


def coordinate_image(index: int, size: int = SIZE) -> np.ndarray:
  """Frame `index` in red; green and blue are the pixel's x and y (8 levels a pixel)."""
  image = np.zeros((size, size, 3), np.uint8)
  image[..., 0] = 8 * index + 4
  image[..., 1] = (8 * np.arange(size) + 4)[None, :]
  image[..., 2] = (8 * np.arange(size) + 4)[:, None]
  return image


def crop_of(clip: np.ndarray) -> tuple[int, int, int]:
  """(side, x, y) in stored pixels of the square crop that a clip was resized from.

  Bilinear resizing (half-pixel centres) keeps the coordinate ramps linear inside the
  crop: output pixel j samples stored pixel x + (j + 0.5) * side / S - 0.5.
  """
  size = clip.shape[1]
  j = np.arange(size // 4, 3 * size // 4)
  green = clip[..., 1].mean((0, 1))[j].astype(np.float64)
  blue = clip[..., 2].mean((0, 2))[j].astype(np.float64)
  (slope_x, at0_x), (slope_y, at0_y) = np.polyfit(j, green, 1), np.polyfit(j, blue, 1)
  side = int(round(slope_x * size / 8))
  assert side == int(round(slope_y * size / 8))
  x = int(round((at0_x - 4) / 8 - 0.5 * side / size + 0.5))
  y = int(round((at0_y - 4) / 8 - 0.5 * side / size + 0.5))
  return side, x, y


def test_scale_crop_moves_every_actor_box_with_the_frame():
  rng = np.random.default_rng(4)
  videos = [
    actor_video(rng, f'C{i}/v_{i}', n, i, 2, image=coordinate_image)
    for i, n in enumerate((10, 16, 24, 12))
  ]
  source = sources.InMemorySource({'train': videos})
  cfg = data_config(max_actors=A, scale_augment=(0.5, 0.8), shuffle_buffer=4)
  batches, _ = take(cfg, source, 4, batch=4)
  crops, moved, dropped = set(), 0, 0
  for row in rows(batches):
    video = videos[row['label']]
    ids = np.round((row['clip'][..., 0].mean((1, 2)) - 4) / 8).astype(int)
    side, x, y = crop_of(row['clip'])
    crops.add((side, x, y))
    boxes, present, labels, dense = expected_actors(video, ids)
    assert dense and row['dense_labeled']
    # The reference crop: stored pixels [x, x + side) x [y, y + side) become [0, 1).
    x1y1 = (boxes[..., :2] * SIZE - [x, y]) / side
    wh = boxes[..., 2:] * SIZE / side
    lo, hi = np.clip(x1y1, 0, 1), np.clip(x1y1 + wh, 0, 1)
    share = np.prod(hi - lo, -1) / np.maximum(np.prod(wh, -1), 1e-12)
    keep = present & (share >= clips.MIN_BOX_VISIBLE)
    clear = np.abs(share - clips.MIN_BOX_VISIBLE) > 0.02  # away from the threshold
    np.testing.assert_array_equal(row['actor_present'][clear], keep[clear])
    cropped = np.where(keep[..., None], np.concatenate([lo, hi - lo], -1), 0.0)
    both = keep & row['actor_present']
    np.testing.assert_allclose(row['actor_boxes'][both], cropped[both], atol=1e-5)
    assert not row['actor_boxes'][~row['actor_present']].any()
    np.testing.assert_allclose(
      row['actor_boxes_flip'], mirrored(row['actor_boxes'], row['actor_present']), atol=1e-6
    )
    moved += int(both.sum())
    dropped += int((present & ~keep & clear).sum())
  assert len(crops) > 1 and moved > 0 and dropped > 0


def test_crop_boxes_by_hand():
  """Stored frame 32 px, crop side 16 at (8, 4): x -> (32 x - 8) / 16, y -> (32 y - 4) / 16."""
  spec = clips.WindowSpec(4, 1, 32, 32, 0.5, 0.5)
  window = clips.CropWindow(side=tf.constant(16), x=tf.constant(8), y=tf.constant(4))
  boxes = np.array(
    [
      [[0.25, 0.125, 0.25, 0.25], [0.0, 0.0, 0.25, 0.25]],  # inside; 25% visible
      [[0.5, 0.5, 0.25, 0.25], [0.5, 0.5, 0.25, 0.25]],  # half inside; absent
    ],
    np.float32,
  )
  present = np.array([[True, True], [True, False]])
  got, keep = clips.crop_boxes(tf.constant(boxes), tf.constant(present), window, spec)
  np.testing.assert_array_equal(keep, [[True, False], [True, False]])
  np.testing.assert_allclose(
    got.numpy(),
    [[[0.0, 0.0, 0.5, 0.5], [0, 0, 0, 0]], [[0.5, 0.75, 0.5, 0.25], [0, 0, 0, 0]]],
    atol=1e-6,
  )


def test_tfds_actor_targets_are_the_generated_tubes(synthetic_tfds):
  """On the built synthetic dataset: each clip's window is found by its decoded frames,
  and the actor boxes are the generator's pixel boxes over the 320x240 frame."""
  config = tfds_config(synthetic_tfds, max_actors=A, shuffle_buffer=8)
  source = sources.source_from_config(config.data)
  where = {}  # decoded frame bytes -> [(video name, frame index)]
  for ex in source.read('train', 0, source.num_examples('train')).as_numpy_iterator():
    for i, jpeg in enumerate(ex['frames']):
      frame = tf.io.decode_jpeg(jpeg, channels=3).numpy().tobytes()
      where.setdefault(frame, []).append((ex['name'].decode(), i))
  records = synthetic_tfds.truth.records
  batches, _ = take(config.data, source, 3, batch=8)
  checked = with_two = 0
  for row in rows(batches):
    windows = set()
    for name, first in where[row['clip'][0].tobytes()]:
      n = records[name].num_frames
      ids = (first + np.arange(T)) % n
      if all((name, int(i)) in where[row['clip'][t].tobytes()] for t, i in enumerate(ids)):
        windows.add((name, tuple(ids)))
    if len(windows) != 1:
      continue  # frames that repeat elsewhere: the window is ambiguous
    ((name, ids),) = windows
    record = records[name]
    present = np.zeros((T, A), bool)
    boxes = np.zeros((T, A, 4))
    for a, tube in enumerate(record.tubes[:A]):
      for t, f in enumerate(ids):
        if tube.start <= f < tube.end:
          x1, y1, x2, y2 = tube.boxes[f - tube.start] / [320, 240, 320, 240]
          boxes[t, a], present[t, a] = [x1, y1, x2 - x1, y2 - y1], True
    assert row['dense_labeled'] == bool(record.tubes)
    np.testing.assert_array_equal(row['actor_present'], present)
    np.testing.assert_allclose(row['actor_boxes'], boxes, atol=1e-6)
    labels = [t.label for t in record.tubes[:A]] + [-1] * (A - len(record.tubes[:A]))
    np.testing.assert_array_equal(row['actor_labels'], labels)
    checked += 1
    with_two += bool(present.all(1).any())
  assert checked >= 16 and with_two > 0


def test_random_batches_carry_the_actor_keys():
  config = full_config()
  config.data.max_actors = 3
  config.model = ml_collections.ConfigDict(dict(num_classes=5, num_box_classes=4))
  batch = random_source.random_batch(config, step=1)
  b = config.train.batch_size
  expected = {
    'actor_boxes': ((b, T, 3, 4), np.float32),
    'actor_boxes_flip': ((b, T, 3, 4), np.float32),
    'actor_present': ((b, T, 3), np.bool_),
    'actor_labels': ((b, 3), np.int32),
    'dense_labeled': ((b,), np.bool_),
  }
  for key, (shape, dtype) in expected.items():
    assert batch[key].shape == shape and batch[key].dtype == dtype, key
  present = batch['actor_present']
  assert not batch['actor_boxes'][~present].any()
  np.testing.assert_allclose(
    batch['actor_boxes_flip'], mirrored(batch['actor_boxes'], present), atol=1e-6
  )
  assert not present[~batch['dense_labeled']].any()
  assert (batch['actor_labels'][~batch['dense_labeled']] == -1).all()
  assert batch['actor_labels'].max() < 4 and present.any()
