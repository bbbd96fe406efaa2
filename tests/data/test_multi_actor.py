"""Multi-actor synthetic videos: several actors of the video's class, each with its own tube,
entering late, leaving early, crossing, always visible; the one-box cap they impose."""

import dataclasses

import numpy as np
import pytest

from stconsist_jax.data.synthetic import generator as synthetic
from stconsist_jax.data.synthetic import synthetic_video
from stconsist_jax.data.ucf101 import videos
from stconsist_jax.metrics import video_ap
from tests.data_fixtures import SYNTHETIC_SPEC_KWARGS

# The multi-actor demo's spec, with 6 instead of 15 videos per class (fast, same mix).
DEMO_SPEC = synthetic.SyntheticSpec(
  seed=0,
  num_classes=8,
  annotated_classes=6,
  videos_per_class=6,
  min_frames=32,
  max_frames=64,
  second_actor_prob=0.0,
  full_tube_prob=1.0,
  multi_actor_prob=0.6,
  max_actors=3,
)


def class_plans(spec):
  """(class index, plan) of every video, annotated classes first as `generate` plans them."""
  for ci in range(spec.num_classes):
    for vi in range(spec.videos_per_class):
      yield ci, synthetic.plan_video(spec, ci, vi, ci < spec.annotated_classes)


def boxes_per_frame(record) -> np.ndarray:
  """Ground-truth boxes on each frame of a video (independent of the generator)."""
  counts = np.zeros(record.num_frames, np.int64)
  for tube in record.tubes:
    counts[tube.start : tube.end] += 1
  return counts


def overlap(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Whether corner boxes a[i] and b[i] intersect."""
  return (np.minimum(a[:, 2], b[:, 2]) > np.maximum(a[:, 0], b[:, 0])) & (
    np.minimum(a[:, 3], b[:, 3]) > np.maximum(a[:, 1], b[:, 1])
  )


def test_single_actor_videos_are_those_of_the_spec_without_multi_actors():
  base = synthetic.SyntheticSpec(**SYNTHETIC_SPEC_KWARGS)
  multi = dataclasses.replace(base, multi_actor_prob=0.5, max_actors=3)
  same = changed = 0
  for (_, plan), (_, plain) in zip(class_plans(multi), class_plans(base)):
    assert all(not a.mirror and a.shift == (0.0, 0.0) for a in plain.actors)
    if plan == plain:
      same += 1
      continue
    changed += 1
    assert 2 <= len(plan.actors) <= 3 and plan.actors[0] == plain.actors[0]
    assert (plan.num_frames, plan.scroll, plan.bg_seed) == (
      plain.num_frames,
      plain.scroll,
      plain.bg_seed,
    )
  assert same > 0 and changed > 0


@pytest.fixture(scope='module')
def demo():
  """(class index, plan) of every video of DEMO_SPEC, and its records."""
  return list(class_plans(DEMO_SPEC)), synthetic.plan_records(DEMO_SPEC)


def test_multi_actor_videos_enter_late_leave_early_and_cross(demo):
  plans, records = demo
  annotated = {r.class_name: r.label for r in records.values() if r.tubes}
  assert len(annotated) == DEMO_SPEC.annotated_classes
  counts = {1: 0, 2: 0, 3: 0}
  partial = crossing = 0
  for ci, plan in plans:
    record = records[plan.path]
    counts[len(plan.actors)] += 1
    if ci >= DEMO_SPEC.annotated_classes:
      assert not record.tubes
      continue
    if len(plan.actors) == 1:
      continue
    # One tube per actor, over exactly the frames it is drawn on, one label for all.
    assert [(t.start, t.end) for t in record.tubes] == [(a.start, a.end) for a in plan.actors]
    assert len({t.label for t in record.tubes}) == 1
    n = record.num_frames
    assert (record.tubes[0].start, record.tubes[0].end) == (0, n)
    partial += any(t.start > 0 or t.end < n for t in record.tubes[1:])
    first = record.tubes[0].boxes
    crossing += any(overlap(first[t.start : t.end], t.boxes).any() for t in record.tubes[1:])
  multi = counts[2] + counts[3]
  assert counts[2] > 0 and counts[3] > 0 and counts[1] > 0
  annotated_multi = sum(
    1 for ci, plan in plans if ci < DEMO_SPEC.annotated_classes and len(plan.actors) > 1
  )
  assert multi > 0.3 * sum(counts.values())
  assert partial >= 0.8 * annotated_multi and crossing >= 0.8 * annotated_multi


def test_one_box_cap_of_the_test_split_is_at_most_three_quarters(demo):
  _, records = demo
  test = synthetic.test_groups(1, synthetic.group_count(DEMO_SPEC))
  counts = [
    boxes_per_frame(r) for p, r in records.items() if r.tubes and videos.group_of(p) in test
  ]
  assert len(counts) == 2 * DEMO_SPEC.annotated_classes  # groups 1 and 4 of 6
  cap = video_ap.one_box_cap(np.concatenate(counts))
  # Frames with a box over boxes, by hand: one actor per frame would give 1.
  all_counts = np.concatenate(counts)
  assert cap == pytest.approx((all_counts > 0).sum() / all_counts.sum())
  assert cap <= 0.75


def test_every_actor_is_drawn_visibly_inside_its_box(tmp_path):
  spec = synthetic.SyntheticSpec(
    seed=1,
    num_classes=3,
    annotated_classes=3,
    videos_per_class=2,
    min_frames=20,
    max_frames=28,
    second_actor_prob=0.0,
    multi_actor_prob=1.0,
    max_actors=3,
  )
  truth = synthetic.generate(tmp_path / 'ucf101', spec)
  assert truth.records == synthetic.plan_records(spec)  # the plans alone give the truth
  checked = 0
  for _, plan in class_plans(spec):
    record = truth.records[plan.path]
    assert len(record.tubes) == len(plan.actors) >= 2
    frames, _ = synthetic_video.render(plan, (spec.height, spec.width))
    for actor, tube in zip(plan.actors, record.tubes):
      for f in range(tube.start, tube.end):
        x1, y1, x2, y2 = tube.boxes[f - tube.start].astype(int)
        painted = np.all(frames[f] == np.array(actor.rgb, np.uint8), axis=-1)
        inside = painted[y1:y2, x1:x2].sum()
        # Visible: a fair share of the box shows the actor's colour, none outside it.
        assert inside >= 0.15 * (x2 - x1) * (y2 - y1), (plan.path, f)
        assert inside == painted.sum(), (plan.path, f)
        checked += 1
  assert checked > 100


@pytest.mark.parametrize(
  'fields, pattern',
  [
    (dict(max_actors=4), r'max_actors must be in \[1, 3\]'),
    (dict(max_actors=0), r'max_actors must be in \[1, 3\]'),
    (dict(multi_actor_prob=0.5), 'multi_actor_prob > 0 needs max_actors >= 2'),
    (dict(multi_actor_prob=1.5, max_actors=2), r'multi_actor_prob must be in \[0, 1\]'),
  ],
)
def test_bad_multi_actor_fields_fail_in_one_line(fields, pattern):
  with pytest.raises(synthetic.SpecError, match=pattern):
    synthetic.SyntheticSpec(**fields).check()
