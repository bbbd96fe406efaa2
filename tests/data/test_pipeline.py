"""Tests of the tf.data input pipeline: windows, flips, box targets, semi-supervision, eval, resume.

Videos are built in memory: frame i carries its index in the red/blue channels (so the
chosen window is read back from the pixels) and a horizontal gradient in green (so a
flip is visible); tubes and boxes come from a numpy generator that is the ground truth.
"""

import io
import logging

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from stconsist_jax.core import clip_geometry
from stconsist_jax.data.pipeline import clips
from stconsist_jax.data.pipeline import eval_streams
from stconsist_jax.data.pipeline import label_protocols
from stconsist_jax.data.pipeline import sources
from stconsist_jax.data.pipeline import train_stream

SIZE = 32
T = 8


def frame_image(index: int, size: int = SIZE) -> np.ndarray:
  image = np.zeros((size, size, 3), np.uint8)
  image[..., 0] = 8 * (index % 32) + 4
  image[..., 2] = 8 * (index // 32) + 4
  image[..., 1] = np.linspace(0, 255, size)[None, :].astype(np.uint8)
  return image


def encode(image: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format='JPEG', quality=95, subsampling=0)
  return buffer.getvalue()


def frame_ids(clip: np.ndarray) -> np.ndarray:
  """Frame indices read back from decoded frames `(T, H, W, 3)`."""
  red = clip[..., 0].reshape(len(clip), -1).mean(1)
  blue = clip[..., 2].reshape(len(clip), -1).mean(1)
  return (np.round((red - 4) / 8) + 32 * np.round((blue - 4) / 8)).astype(int)


def make_video(
  rng: np.random.Generator, name: str, num_frames: int, label: int, num_tubes: int
) -> dict:
  present = np.zeros((num_tubes, num_frames), bool)
  boxes = np.zeros((num_tubes, num_frames, 4), np.float32)
  labels = np.full((num_tubes,), label % 24, np.int32)
  for k in range(num_tubes):
    start = rng.integers(0, num_frames // 2)
    end = rng.integers(start + 1, num_frames + 1)
    present[k, start:end] = True
    if rng.random() < 0.3:  # a gap inside the tube
      present[k, rng.integers(start, end)] = False
    xy = rng.uniform(0, 0.5, (num_frames, 2))
    wh = rng.uniform(0.1, 0.5, (num_frames, 2))
    boxes[k] = np.where(present[k, :, None], np.concatenate([xy, xy + wh], 1), 0)
  return {
    'frames': [encode(frame_image(i)) for i in range(num_frames)],
    'label': label,
    'name': name,
    'num_frames': num_frames,
    'annotated': num_tubes > 0,
    'tube_labels': labels,
    'tube_boxes': boxes,
    'tube_present': present,
  }


def make_split(seed: int, count: int, prefix: str, annotated_every: int = 2) -> list[dict]:
  rng = np.random.default_rng(seed)
  videos = []
  for i in range(count):
    num_frames = int(rng.choice([5, 9, 14, 20, 31]))
    tubes = 0 if i % annotated_every else int(rng.integers(1, 3))
    videos.append(make_video(rng, f'C{i % 7}/v_{prefix}_{i:03d}', num_frames, i % 7, tubes))
  return videos


@pytest.fixture(scope='module')
def source() -> sources.InMemorySource:
  return sources.InMemorySource({'train': make_split(0, 14, 'tr'), 'test': make_split(1, 9, 'te')})


def data_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(
    name='in_memory',
    data_dir='',
    split=1,
    frame_size=SIZE,
    image_size=SIZE,
    num_frames=T,
    frame_stride=1,
    classes='all',
    box_label_fraction=1.0,
    labeled_per_batch=0,
    scale_augment=(1.0, 1.0),
    shuffle_buffer=16,
    host_flip=False,
  )
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def full_config(**eval_overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.seed = 3
  config.data = data_config()
  config.train = ml_collections.ConfigDict(dict(batch_size=4))
  config.eval = ml_collections.ConfigDict(
    dict(clips_per_video=3, frame_stride=1, batch_size=4, max_videos=0, tube_frame_stride=1)
  )
  config.eval.update(eval_overrides)
  return config


def take(data_cfg, source, steps, batch=4, seed=3, start_step=0, **kwargs):
  ds = train_stream.make_train_dataset(
    data_cfg, batch_size=batch, seed=seed, source=source, start_step=start_step, **kwargs
  )
  iterator = train_stream.BatchIterator(ds)
  return [next(iterator) for _ in range(steps)], iterator


def by_name(videos: list[dict]) -> dict[bytes, dict]:
  return {v['name']: v for v in videos}


def expected_box(video: dict, ids: np.ndarray) -> tuple[np.ndarray, bool, int]:
  """Independent numpy reference: tube 0 averaged over the window's central frames."""
  if not video['annotated']:
    return np.zeros(4), False, -1
  central = ids[[T // 2 - 1, T // 2]]
  present = video['tube_present'][0, central]
  if not present.any():
    return np.zeros(4), False, -1
  corners = video['tube_boxes'][0, central][present].astype(np.float64).mean(0)
  x1, y1, x2, y2 = corners
  return np.array([x1, y1, x2 - x1, y2 - y1]), True, int(video['tube_labels'][0])


@pytest.fixture(scope='module')
def unique_source() -> sources.InMemorySource:
  """Nine videos whose label is their index, so each clip names its video."""
  rng = np.random.default_rng(5)
  lengths = [5, 9, 14, 16, 20, 23, 31, 12, 27]
  videos = [
    make_video(rng, f'C{i}/v_{i}', n, i, 0 if i % 3 == 2 else 1 + i % 2)
    for i, n in enumerate(lengths)
  ]
  return sources.InMemorySource({'train': videos})


# ---------------------------------------------------------------------- training clips


def test_windows_inside_video_and_loop_padding(unique_source):
  videos = unique_source.splits['train']
  stride = 2
  span = (T - 1) * stride + 1
  batches, _ = take(data_config(frame_stride=stride, shuffle_buffer=4), unique_source, 12, batch=3)
  starts = {}
  for batch in batches:
    for clip, label in zip(batch['clip'], batch['label']):
      n = len(videos[label]['frames'])
      ids = frame_ids(clip)
      if n >= span:  # inside the video, consecutive at the stride
        assert 0 <= ids[0] <= n - span
        np.testing.assert_array_equal(ids, ids[0] + stride * np.arange(T))
      else:  # loop-padded from the first frame
        np.testing.assert_array_equal(ids, (stride * np.arange(T)) % n)
      starts.setdefault(int(label), set()).add(int(ids[0]))
  assert any(len(videos[i]['frames']) < span for i in starts)
  assert any(len(s) > 1 for s in starts.values())  # the start is random


def test_flipped_clip_and_box_flip_algebra(source):
  batches, _ = take(data_config(host_flip=True), source, 3)
  for batch in batches:
    np.testing.assert_array_equal(batch['clip_flip'], batch['clip'][:, :, :, ::-1, :])
    assert not np.array_equal(batch['clip_flip'], batch['clip'])  # gradient => real flip
    x, y, w, h = batch['box'].T
    expected = np.stack([1 - x - w, y, w, h], 1) * batch['has_box'][:, None]
    np.testing.assert_allclose(batch['box_flip'], expected, atol=1e-6)
    assert batch['clip'].dtype == np.uint8 and batch['clip'].shape == (4, T, SIZE, SIZE, 3)


def test_box_target_matches_numpy_reference_and_has_box_mask(unique_source):
  videos = unique_source.splits['train']
  batches, _ = take(data_config(shuffle_buffer=4), unique_source, 12, batch=3)
  checked = with_box = 0
  for batch in batches:
    for clip, label, box, has, tube_label in zip(
      batch['clip'], batch['label'], batch['box'], batch['has_box'], batch['tube_label']
    ):
      box_ref, has_ref, tube_ref = expected_box(videos[label], frame_ids(clip))
      assert has == has_ref
      assert tube_label == tube_ref
      np.testing.assert_allclose(box, box_ref, atol=1e-6)
      checked += 1
      with_box += has
  assert checked == 36 and 0 < with_box < checked


def test_box_label_fraction_keeps_a_nested_share():
  names = [f'Class{i % 24}/v_Class_g{i:04d}_c01' for i in range(4000)]
  kept = {}
  for fraction in (0.0, 0.1, 0.5, 1.0):
    kept[fraction] = np.array(train_stream.box_label_kept(names, seed=7, fraction=fraction))
  n = len(names)
  assert kept[0.0].sum() == 0 and kept[1.0].sum() == n
  for fraction in (0.1, 0.5):
    sigma = np.sqrt(n * fraction * (1 - fraction))
    assert abs(kept[fraction].sum() - fraction * n) < 4 * sigma
  assert not np.any(kept[0.1] & ~kept[0.5])  # nested
  other_seed = np.array(train_stream.box_label_kept(names, seed=8, fraction=0.5))
  assert (other_seed != kept[0.5]).mean() > 0.3  # the seed changes the subset


def test_box_label_fraction_zero_removes_every_box(source):
  batches, _ = take(data_config(box_label_fraction=0.0), source, 4)
  for batch in batches:
    assert not batch['has_box'].any()
    assert (batch['tube_label'] == -1).all() and not batch['box'].any()


def test_labeled_per_batch_gives_boxes_in_the_first_slots(unique_source):
  videos = unique_source.splits['train']

  def some_window_has_box(video):
    n = len(video['frames'])
    present = video['tube_present'][0]
    return any(
      present[[(s + T // 2 - 1) % n, (s + T // 2) % n]].any() for s in range(max(n - T + 1, 1))
    )

  batches, _ = take(data_config(labeled_per_batch=2), unique_source, 6)
  for batch in batches:
    labels = batch['label']
    assert all(videos[i]['annotated'] for i in labels[:2])
    assert not any(videos[i]['annotated'] for i in labels[2:])
    assert not batch['has_box'][2:].any()
    for i, has in zip(labels[:2], batch['has_box'][:2]):
      assert has == some_window_has_box(videos[i])  # windows drawn where boxes exist
  assert sum(b['has_box'].sum() for b in batches) > 6


def _check_unlabeled_rows(batch):
  unlabeled = ~batch['has_label']
  assert (batch['label'][unlabeled] == -1).all() and (batch['label'][~unlabeled] >= 0).all()
  assert not batch['has_box'][unlabeled].any() and not batch['box'][unlabeled].any()
  assert (batch['tube_label'][unlabeled] == -1).all()


def test_labeled_video_fraction_marks_the_kept_videos(unique_source):
  names = [v['name'] for v in unique_source.splits['train']]
  kept = label_protocols.kept_names(names, 3, 0.5, label_protocols.VIDEO_LABEL)
  assert 0 < len(kept) < len(names)
  batches, _ = take(data_config(labeled_video_fraction=0.5), unique_source, 9, seed=3)
  seen = set()
  for batch in batches:
    assert set(batch) == set(train_stream.TRAIN_KEYS)
    _check_unlabeled_rows(batch)
    seen |= set(batch['label'][batch['has_label']].tolist())
  assert {names[i] for i in seen} == set(kept)
  # 36 clips are four passes over the nine videos.
  assert sum((~b['has_label']).sum() for b in batches) == 4 * (len(names) - len(kept))
  everything, _ = take(data_config(), unique_source, 3)
  assert all(b['has_label'].all() for b in everything)


def test_labeled_videos_list_and_labeled_per_batch(unique_source, tmp_path):
  listed = tmp_path / 'labeled.txt'
  label_protocols.write_video_list(listed, ['C0/v_0', 'C4/v_4', 'C1/v_1'])
  cfg = data_config(labeled_videos=str(listed))
  batches, _ = take(cfg, unique_source, 9)
  for batch in batches:
    _check_unlabeled_rows(batch)
    assert set(batch['label'][batch['has_label']].tolist()) <= {0, 1, 4}
  assert sum((~b['has_label']).sum() for b in batches) == 4 * 6
  # The first k rows: videos that keep class and boxes; the rest the other videos.
  batches, _ = take(data_config(labeled_videos=str(listed), labeled_per_batch=2), unique_source, 6)
  for batch in batches:
    _check_unlabeled_rows(batch)
    assert batch['has_label'][:2].all() and set(batch['label'][:2].tolist()) <= {0, 1, 4}
    assert not batch['has_label'][2:].any()


def test_classes_24_keeps_annotated_videos_relabelled(source):
  batches, _ = take(data_config(classes='ucf24'), source, 4)
  annotated = {(v['label'] % 24) for v in source.splits['train'] if v['annotated']}
  for batch in batches:
    assert set(batch['label'].tolist()) <= annotated


def test_scale_augment_keeps_boxes_inside_the_crop(source):
  batches, _ = take(data_config(scale_augment=(0.5, 0.9), image_size=24), source, 5)
  for batch in batches:
    assert batch['clip'].shape == (4, T, 24, 24, 3)
    box, has = batch['box'], batch['has_box']
    assert (box[has, :2] >= 0).all() and (box[has, :2] + box[has, 2:] <= 1 + 1e-6).all()
    assert not box[~has].any()


def test_stream_is_a_pure_function_of_seed_and_step(source):
  cfg = data_config(labeled_per_batch=1, scale_augment=(0.8, 1.0))
  full, _ = take(cfg, source, 9)
  again, _ = take(cfg, source, 9)
  resumed, _ = take(cfg, source, 3, start_step=6)
  for a, b in zip(full, again):
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  for a, b in zip(full[6:], resumed):
    assert set(a) == set(train_stream.TRAIN_KEYS)
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])
  other, _ = take(cfg, source, 3, seed=4)
  assert not np.array_equal(other[0]['clip'], full[0]['clip'])


def test_hosts_read_disjoint_shares(unique_source):
  seen = []
  for host in range(2):
    batches, _ = take(data_config(), unique_source, 8, batch=1, process_index=host, process_count=2)
    seen.append({int(b['label'][0]) for b in batches})
  assert seen == [{0, 1, 2, 3}, {4, 5, 6, 7, 8}]


# ---------------------------------------------------------------------- robustness


def corrupt_source() -> sources.InMemorySource:
  rng = np.random.default_rng(9)
  videos = [make_video(rng, f'C{i}/v_{i}', 10, i, 1) for i in range(6)]
  videos[1]['frames'] = [b'not a jpeg'] * 10  # undecodable frames
  videos[3]['num_frames'] = 99  # record inconsistent with its frames
  return sources.InMemorySource({'train': videos})


def test_corrupt_records_are_counted_and_skipped(caplog):
  source = corrupt_source()
  with caplog.at_level(logging.WARNING):
    batches, iterator = take(data_config(shuffle_buffer=1), source, 8, batch=1)
  labels = [int(b['label'][0]) for b in batches]
  assert labels == [0, 2, 4, 5, 0, 2, 4, 5]  # two epochs, never 1 or 3
  assert iterator.num_skipped == 4
  assert any('undecodable' in r.getMessage() for r in caplog.records)


def test_resume_skips_without_decoding():
  source = corrupt_source()
  # Step 2 (batch 1) lies after the corrupt video 1 of the first epoch: starting there
  # must not decode video 1, so nothing is counted as skipped before video 3.
  batches, iterator = take(data_config(shuffle_buffer=1), source, 1, batch=1, start_step=2)
  assert int(batches[0]['label'][0]) == 2 and iterator.num_skipped == 0


# ---------------------------------------------------------------------- evaluation


def _clip_stream(config, source, hosts):
  rows = []
  counts = set()
  for host in range(hosts):
    ds, num_batches = eval_streams.make_eval_clip_dataset(
      config, process_index=host, process_count=hosts, source=source
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == num_batches
    counts.add(num_batches)
    for batch in batches:
      assert batch['clip'].shape[0] == config.eval.batch_size // hosts
      for i in np.flatnonzero(batch['valid']):
        rows.append(
          (
            int(batch['video_id'][i]),
            frame_ids(batch['clip'][i]),
            batch['label'][i],
            batch['box'][i],
            batch['has_box'][i],
          )
        )
      assert not batch['clip'][~batch['valid']].any()
  assert len(counts) == 1
  return rows


@pytest.mark.parametrize('hosts', [1, 2])
def test_eval_clip_stream_covers_each_video_once(source, hosts):
  config = full_config()
  videos = source.splits['test']
  rows = _clip_stream(config, source, hosts)
  k = config.eval.clips_per_video
  ids = [r[0] for r in rows]
  assert sorted(ids) == sorted(list(range(len(videos))) * k)
  for video_id, frames, label, box, has in rows:
    video = videos[video_id]
    assert label == video['label']
    assert frames.max() < len(video['frames'])
    box_ref, has_ref, _ = expected_box(video, frames)
    assert has == has_ref
    np.testing.assert_allclose(box, box_ref, atol=1e-6)
  for video_id, video in enumerate(videos):  # uniform placement: first and last start
    starts = sorted(r[1][0] for r in rows if r[0] == video_id)
    assert starts[0] == 0 and starts[-1] == max(len(video['frames']) - T, 0)


@pytest.mark.parametrize('hosts', [1, 2])
def test_eval_frame_stream_covers_each_annotated_frame_once(source, hosts):
  config = full_config(frame_stride=2)
  videos = source.splits['test']
  expected = sorted(
    (v, f)
    for v, video in enumerate(videos)
    for f in np.flatnonzero(video['tube_present'].any(0))
    if f % 2 == 0
  )
  max_boxes = max(len(v['tube_labels']) for v in videos)
  seen, counts = [], set()
  for host in range(hosts):
    ds, num_batches = eval_streams.make_eval_frame_dataset(
      config, process_index=host, process_count=hosts, source=source
    )
    batches = list(ds.as_numpy_iterator())
    assert len(batches) == num_batches
    counts.add(num_batches)
    for batch in batches:
      assert batch['gt_boxes'].shape[1:] == (max_boxes, 4)
      for i in np.flatnonzero(batch['valid']):
        video_id, frame = int(batch['video_id'][i]), int(batch['frame'][i])
        video = videos[video_id]
        seen.append((video_id, frame))
        ids = frame_ids(batch['clip'][i])
        n = len(video['frames'])
        np.testing.assert_array_equal(ids, np.clip(frame + np.arange(T) - T // 2, 0, n - 1))
        present = video['tube_present'][:, frame]
        labels = batch['gt_labels'][i]
        np.testing.assert_array_equal(labels[: present.sum()], video['tube_labels'][present])
        assert (labels[present.sum() :] == -1).all()
        np.testing.assert_allclose(
          batch['gt_boxes'][i][: present.sum()], video['tube_boxes'][present, frame], atol=1e-6
        )
  assert len(counts) == 1
  assert sorted(seen) == expected


@pytest.mark.parametrize(
  'num_frames,stride,frame,video_frames,expected',
  [
    (8, 1, 0, 30, [0, 0, 0, 0, 0, 1, 2, 3]),
    (8, 2, 3, 30, [0, 0, 0, 1, 3, 5, 7, 9]),
    (7, 1, 4, 5, [1, 2, 3, 4, 4, 4, 4]),
    (16, 1, 0, 1, [0] * 16),
    (4, 3, 10, 11, [4, 7, 10, 10]),
    (5, 2, 6, 20, [2, 4, 6, 8, 10]),
  ],
)
def test_eval_and_prediction_place_clips_alike(num_frames, stride, frame, video_frames, expected):
  """The tf eval streams and numpy prediction cut the same frames around a centre frame."""
  spec = clips.WindowSpec(num_frames, stride, SIZE, SIZE)
  got_tf = clips.centred_indices(tf.constant(frame), tf.constant(video_frames), spec)
  assert got_tf.dtype == tf.int32
  np.testing.assert_array_equal(got_tf.numpy(), expected)
  offsets = clip_geometry.centred_offsets(num_frames, stride)
  np.testing.assert_array_equal(np.clip(frame + offsets, 0, video_frames - 1), expected)


# ---------------------------------------------------------------------- the TFDS dataset


def tfds_config(synthetic_tfds, **data_overrides) -> ml_collections.ConfigDict:
  config = full_config()
  config.data = data_config(
    name='synthetic',
    data_dir=str(synthetic_tfds.data_dir),
    split=synthetic_tfds.split,
    frame_size=synthetic_tfds.frame_size,
    image_size=synthetic_tfds.frame_size,
    **data_overrides,
  )
  return config


def test_tfds_eval_clips_match_the_annotation_records(synthetic_tfds):
  config = tfds_config(synthetic_tfds)
  source = sources.source_from_config(config.data)
  num_videos = source.num_examples('test')
  names = [
    n.decode()
    for n in source.read('test', 0, num_videos).map(lambda ex: ex['name']).as_numpy_iterator()
  ]
  assert sorted(names) == sorted(synthetic_tfds.truth.splits[1][1])
  k = config.eval.clips_per_video
  ds, _ = eval_streams.make_eval_clip_dataset(config, source=source)
  rows = [
    (int(b['video_id'][i]), b['label'][i], b['box'][i], b['has_box'][i])
    for b in ds.as_numpy_iterator()
    for i in np.flatnonzero(b['valid'])
  ]
  assert sorted(r[0] for r in rows) == sorted(list(range(num_videos)) * k)
  height, width = 240, 320  # the synthetic videos' original size
  clip_of_video = {}
  for video_id, label, box, has in rows:
    record = synthetic_tfds.truth.records[names[video_id]]
    assert label == record.label
    clip = clip_of_video.get(video_id, 0)
    clip_of_video[video_id] = clip + 1
    start = round(clip * (record.num_frames - T) / (k - 1))  # uniform placement
    central = np.array([start + T // 2 - 1, start + T // 2])
    if not record.tubes:
      assert not has and not box.any()
      continue
    tube = record.tubes[0]
    inside = (central >= tube.start) & (central < tube.end)
    assert has == inside.any()
    if inside.any():
      corners = tube.boxes[central[inside] - tube.start].mean(0)
      x1, y1, x2, y2 = corners / [width, height, width, height]
      np.testing.assert_allclose(box, [x1, y1, x2 - x1, y2 - y1], atol=1e-5)


def test_tfds_training_stream_and_frame_stream(synthetic_tfds):
  config = tfds_config(synthetic_tfds, labeled_per_batch=1)
  iterator = train_stream.train_iterator(config, process_index=1, process_count=2)
  batch = next(iterator)
  # The flipped clip is left to the train step (no data.host_flip).
  assert set(batch) == set(train_stream.TRAIN_KEYS) and 'clip_flip' not in batch
  assert batch['clip'].shape == (2, T, 32, 32, 3) and batch['clip'].dtype == np.uint8
  records = synthetic_tfds.truth.records
  expected = sorted(
    (name, f)
    for name in synthetic_tfds.truth.splits[1][1]
    for f in sorted({f for t in records[name].tubes for f in range(t.start, t.end)})
  )
  source = sources.source_from_config(config.data)
  names = [
    n.decode()
    for n in source.read('test', 0, source.num_examples('test'))
    .map(lambda ex: ex['name'])
    .as_numpy_iterator()
  ]
  seen = []
  for host in range(2):
    ds, _ = eval_streams.make_eval_frame_dataset(config, process_index=host, process_count=2)
    for b in ds.as_numpy_iterator():
      seen += [(names[b['video_id'][i]], int(b['frame'][i])) for i in np.flatnonzero(b['valid'])]
  assert sorted(seen) == expected


@pytest.mark.parametrize('classes', ['all', 'ucf24'])
def test_label_names_follow_the_built_dataset(synthetic_tfds, classes):
  config = tfds_config(synthetic_tfds, classes=classes)
  truth = synthetic_tfds.truth
  expected = truth.class_names if classes == 'all' else truth.annotated_class_names
  assert sources.label_names(config.data) == list(expected)


def test_num_classes_mismatch_fails_before_training(synthetic_tfds):
  from stconsist_jax.config import schema
  from stconsist_jax.training import train

  config = tfds_config(synthetic_tfds)
  config.model = ml_collections.ConfigDict({'num_classes': 101})
  with pytest.raises(
    schema.ConfigError,
    match=rf'model.num_classes=101 differs from the '
    rf'{len(synthetic_tfds.truth.class_names)} labels',
  ):
    train.check_num_classes(config)
