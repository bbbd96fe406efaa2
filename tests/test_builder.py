"""The TFDS builder on synthetic UCF-101 folders: read-back, skips, splits, atomicity."""

import shutil

import cv2
import numpy as np
import pytest
import tensorflow_datasets as tfds

from stconsist_jax.data import annotations as ann
from stconsist_jax.data import synthetic
from stconsist_jax.data import tfds_builder
from stconsist_jax.data import video_decode


def _read_all(builder, split):
  return {ex["name"].decode(): ex
          for ex in tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False))}


def test_configs():
  names = [c.name for c in tfds_builder.Ucf101Stconsist.BUILDER_CONFIGS]
  assert names[0] == "split1_128" and tfds_builder.Ucf101Stconsist.name == "ucf101_stconsist"
  assert {"split2_64", "split3_32"} <= set(names)
  cfg = tfds_builder.make_config(2, 48)
  assert (cfg.name, cfg.split, cfg.frame_size, len(cfg.class_names)) == ("split2_48", 2, 48, 101)
  with pytest.raises(ValueError, match="split must be"):
    tfds_builder.make_config(4, 64)


def test_read_back_equals_generator(synthetic_tfds):
  truth = synthetic_tfds.truth
  size = synthetic_tfds.frame_size
  b = synthetic_tfds.builder
  assert b.info.features["label"].names == list(truth.class_names)
  for split, paths in zip(("train", "test"), truth.splits[1]):
    got = _read_all(b, split)
    assert sorted(got) == sorted(paths)
  got = _read_all(b, "train")
  checked_frames = 0
  for name, ex in got.items():
    rec = truth.records[name]
    n = rec.num_frames
    assert ex["num_frames"] == n and ex["frames"].shape == (n, size, size, 3)
    assert ex["label"] == truth.class_names.index(rec.class_name) == rec.label
    assert tuple(ex["original_size"]) == (240, 320)
    assert bool(ex["annotated"]) == bool(rec.tubes)
    assert ex["tube_boxes"].shape == (len(rec.tubes), n, 4)
    np.testing.assert_array_equal(ex["tube_labels"], [t.label for t in rec.tubes])
    for k, t in enumerate(rec.tubes):
      present = np.zeros(n, bool)
      present[t.start:t.end] = True
      np.testing.assert_array_equal(ex["tube_present"][k], present)
      assert np.all(ex["tube_boxes"][k][~present] == 0)
      # Normalized corners: within a pixel of the drawn box at the stored size.
      in_pixels = ex["tube_boxes"][k, t.start:t.end] * size
      drawn = t.boxes * [size / 320, size / 240, size / 320, size / 240]
      assert np.abs(in_pixels - drawn).max() < 1e-3
    if checked_frames < 3:
      rendered, _ = synthetic.render_video(truth.spec, name)
      small = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA)
                        for f in rendered])
      err = np.abs(ex["frames"].astype(np.float64) - small).mean()
      assert err < 12.0, (name, err)
      checked_frames += 1
  assert checked_frames == 3


def test_actor_inside_its_stored_box(synthetic_tfds):
  """Independent of the box arithmetic: the actor's colour sits inside the stored box."""
  truth, size = synthetic_tfds.truth, synthetic_tfds.frame_size
  located = 0
  for name, ex in list(_read_all(synthetic_tfds.builder, "test").items()):
    rec = truth.records[name]
    if len(rec.tubes) != 1:
      continue
    t = rec.tubes[0]
    f = (t.start + t.end) // 2
    rendered, _ = synthetic.render_video(truth.spec, name)
    small = cv2.resize(rendered[f], (size, size), interpolation=cv2.INTER_AREA)
    diff = np.abs(ex["frames"][f].astype(int) - small.astype(int)).mean()
    assert diff < 15
    x1, y1, x2, y2 = ex["tube_boxes"][0, f] * size
    stored = ex["frames"][f].astype(int)
    actor_rgb = np.array(rendered[f][int(t.boxes[f - t.start][1] + t.boxes[f - t.start][3]) // 2,
                                     int(t.boxes[f - t.start][0] + t.boxes[f - t.start][2]) // 2])
    close = np.abs(stored - actor_rgb).sum(-1) < 60
    ys, xs = np.nonzero(close)
    if len(xs) < 4:
      continue  # hollow shapes (rings) have background at their centre
    cx, cy = xs.mean() + 0.5, ys.mean() + 0.5
    assert x1 - 1 <= cx <= x2 + 1 and y1 - 1 <= cy <= y2 + 1
    located += 1
  assert located >= 2


def test_corrupt_truncated_and_missing_videos_are_skipped(tmp_path):
  spec = synthetic.SyntheticSpec(seed=3, num_classes=2, annotated_classes=1,
                                 videos_per_class=3, min_frames=24, max_frames=30,
                                 second_actor_prob=0.0)
  truth = synthetic.generate(tmp_path / "src", spec)
  train, test = truth.splits[1]
  videos = tmp_path / "src" / "UCF-101"
  corrupt, missing = train[0], train[1]
  truncated = next(p for p in train + test if truth.records[p].tubes and p not in (
      corrupt, missing))
  (videos / f"{corrupt}.avi").write_bytes(b"RIFF\x00\x00\x00\x00AVI garbage" * 10)
  (videos / f"{missing}.avi").unlink()
  frames, _ = synthetic.render_video(spec, truncated)
  synthetic.write_video(frames[:5], videos / f"{truncated}.avi")

  b = tfds_builder.build(tmp_path / "src", tmp_path / "out", split=1, frame_size=16,
                         num_workers=2)
  report = tfds_builder.read_report(b)
  skipped = {s["video"]: s["reason"] for v in report["skipped"].values() for s in v}
  assert set(skipped) == {corrupt, missing, truncated}
  assert "missing" in skipped[missing]
  assert "truncated: decoded 5 of" in skipped[truncated]
  assert report["annotation_problems"]["counts"]["video_file_missing"] == 1
  written = set(_read_all(b, "train")) | set(_read_all(b, "test"))
  assert written == set(truth.records) - set(skipped)
  assert sum(report["videos_written"].values()) == len(written)
  assert all(v > 0 for v in report["videos_per_second"].values())
  # Written through TFDS's incomplete dir, renamed when done: nothing left behind.
  leftovers = [p.name for p in (tmp_path / "out" / "ucf101_stconsist").rglob("*")
               if "incomplete" in p.name]
  assert leftovers == []


def test_failed_build_leaves_no_dataset(synthetic_root, tmp_path, monkeypatch):
  calls = []

  def failing(task):
    calls.append(task.path)
    if len(calls) == 3:
      raise RuntimeError("disk full")
    return video_decode.decode_video(task)

  monkeypatch.setattr(video_decode, "decode_video", failing)
  with pytest.raises(RuntimeError, match="disk full"):
    tfds_builder.build(synthetic_root.root, tmp_path / "out", frame_size=16, num_workers=0)
  b = tfds_builder.builder(tfds_builder.make_config(1, 16, manual_dir=synthetic_root.root),
                           tmp_path / "out")
  assert not b.data_path.exists()


def test_split_lists_honoured(synthetic_root, tmp_path):
  """A hand-edited test list decides the test split, including another split number."""
  src = tmp_path / "src"
  shutil.copytree(synthetic_root.root, src)
  lists = src / "ucfTrainTestlist"
  train, test = ann.official_split(lists, 2)
  keep_test = test[:3]
  (lists / "testlist02.txt").write_text("".join(f"{p}.avi\n" for p in keep_test))
  b = tfds_builder.build(src, tmp_path / "out", split=2, frame_size=16, num_workers=0)
  assert sorted(_read_all(b, "test")) == sorted(keep_test)
  assert sorted(_read_all(b, "train")) == sorted(train)


def test_class_list_mismatch_is_a_clear_error(synthetic_root, tmp_path):
  b = tfds_builder.builder("split1_32", tmp_path / "out")
  with pytest.raises(ValueError, match="classInd.txt lists 6 classes"):
    b.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir=str(synthetic_root.root)))


def test_annotated_class_names_recorded_in_metadata(synthetic_tfds):
  # The 24-way tube labels name classes only through this list, so a reader of the
  # built dataset (evaluation's frame-mAP) can map them back without the pickle.
  reread = tfds.builder_from_directory(str(synthetic_tfds.builder_dir))
  assert list(reread.info.metadata["annotated_class_names"]) == list(
      synthetic_tfds.truth.annotated_class_names)


def test_annotated_class_names_of_real_annotations_follow_ucf24_order(ucf24_dir):
  records = ann.load_annotations(ucf24_dir / "pyannot.pkl")
  expected = (ucf24_dir / "classes.txt").read_text().split()
  assert tfds_builder.annotated_class_names(records) == expected


def test_tube_label_shared_by_two_classes_is_a_clear_error():
  boxes = np.zeros((2, 4))
  records = {
      "A/v_A_g01_c01": ann.VideoRecord("A/v_A_g01_c01", 0, "A", 2,
                                       (ann.Tube(0, 0, 2, boxes),)),
      "B/v_B_g01_c01": ann.VideoRecord("B/v_B_g01_c01", 1, "B", 2,
                                       (ann.Tube(0, 0, 2, boxes),)),
  }
  with pytest.raises(ValueError, match="tube label 0 is used by classes 'A' and 'B'"):
    tfds_builder.annotated_class_names(records)
