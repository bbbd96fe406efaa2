"""The whole-video evaluation stream: each clip's frame indices, and how its clips cover
every frame for a tubelet head of K output frames."""

import numpy as np

from stconsist_jax.core import clip_geometry
from stconsist_jax.data.pipeline import eval_streams
from stconsist_jax.data.pipeline import sources
from tests.data.test_pipeline import T
from tests.data.test_pipeline import frame_ids
from tests.data.test_pipeline import full_config
from tests.data.test_pipeline import make_video


def test_whole_video_clips_carry_their_frame_indices_and_cover_every_frame():
  stride = 3
  rng = np.random.default_rng(2)
  videos = [make_video(rng, f'C{i}/v_{i}', n, i, 1) for i, n in enumerate((5, 11, 20))]
  source = sources.InMemorySource({'test': videos})
  config = full_config(tube_frame_stride=stride)
  ds, _ = eval_streams.make_eval_video_dataset(config, source=source)
  indices = {}
  for batch in ds.as_numpy_iterator():
    assert batch['frame_indices'].dtype == np.int32
    assert batch['frame_indices'].shape == (config.eval.batch_size, T)
    for i in np.flatnonzero(batch['valid']):
      video_id, frame = int(batch['video_id'][i]), int(batch['frame'][i])
      n = len(videos[video_id]['frames'])
      row = batch['frame_indices'][i]
      np.testing.assert_array_equal(row, frame_ids(batch['clip'][i]))
      np.testing.assert_array_equal(row, np.clip(frame + np.arange(T) - T // 2, 0, n - 1))
      indices.setdefault(video_id, []).append(row)
  assert sorted(indices) == [0, 1, 2]
  for video_id, clip_rows in indices.items():
    n = len(videos[video_id]['frames'])
    for k in range(max(stride, 2), T + 1):  # tubelets of K >= s output frames
      p0 = (T - k) // 2
      covered = set(np.concatenate([r[p0 : p0 + k] for r in clip_rows]).tolist())
      assert covered == set(range(n)), (video_id, k)


def test_whole_video_placement_covers_every_frame_for_strides_up_to_k():
  """Clips every s frames (and the last), K central outputs: every frame is an output
  frame when s <= K, except K = 1 with T even (the output sits before the centre)."""
  for num_frames in (7, 8, 16):
    offsets = clip_geometry.centred_offsets(num_frames)
    for n in (1, 2, 5, 17, 40):
      for s in range(1, num_frames + 1):
        centres = eval_streams.video_clip_frames(n, s).numpy()
        windows = np.clip(centres[:, None] + offsets[None], 0, n - 1)
        for k in range(s, num_frames + 1):
          p0 = (num_frames - k) // 2
          covered = set(windows[:, p0 : p0 + k].ravel().tolist())
          expected = n == 1 or not (k == 1 and num_frames % 2 == 0)
          assert (covered == set(range(n))) == expected, (num_frames, n, s, k)
