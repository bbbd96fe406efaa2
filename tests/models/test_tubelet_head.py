"""Tests of the dense tubelet head (stconsist_jax.models.tubelet_head) inside the Detector.

One tiny demo-sized model (R3D-10, widen 0.25, 8 x 48 x 48 clips) is shared by the module;
shapes of larger models come from `jax.eval_shape`, which compiles nothing.
"""

import functools
import math

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from stconsist_jax.models import build_model
from stconsist_jax.models import Detector
from stconsist_jax.models import resnet3d
from stconsist_jax.models import tubelet_head

# The demo backbone: no max-pool, so the stages have strides 2, 4, 8, 16.
TINY_BACKBONE = dict(
  depth=10,
  widen_factor=0.25,
  shortcut_type='A',
  conv1_t_size=3,
  conv1_t_stride=2,
  no_max_pool=True,
)
TUBELET = dict(num_box_classes=6, tubelet_frames=4, tubelet_width=16, tubelet_top_n=5)
CLIP_SHAPE = (2, 8, 48, 48, 3)
BF16_RTOL = 5e-2  # As the backbone's bf16 test: max |difference| / max |value|.


def _tiny(box_head='tubelet', dtype=jnp.float32, **kwargs):
  extra = TUBELET if box_head == 'tubelet' else {}
  return Detector(
    num_classes=8,
    backbone_kwargs=TINY_BACKBONE,
    box_head=box_head,
    dtype=dtype,
    **extra,
    **kwargs,
  )


def _shapes(tree):
  return {
    '/'.join(path): leaf.shape for path, leaf in flax.traverse_util.flatten_dict(tree).items()
  }


def _softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def _random_variables(model, clip):
  """He-scaled kernels, small biases, BatchNorm statistics near (0, 1), filled in numpy
  (on CPU `model.init` compiles a random kernel per parameter shape)."""
  rng = np.random.RandomState(0)
  shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), clip, train=False))

  def fill(path, leaf):
    name = path[-1].key
    if name == 'kernel':
      return rng.randn(*leaf.shape) * np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
    if name in ('scale', 'var'):
      return 0.5 + rng.rand(*leaf.shape)
    return 0.1 * rng.randn(*leaf.shape)

  filled = jax.tree_util.tree_map_with_path(fill, shapes)
  return jax.tree_util.tree_map(lambda v: jnp.asarray(v, jnp.float32), filled)


@pytest.fixture(scope='module')
def tiny():
  """(model, variables, clip, inference outputs as numpy) of the shared tiny model."""
  model = _tiny()
  clip = jnp.asarray(np.random.RandomState(0).randint(0, 256, CLIP_SHAPE), jnp.uint8)
  variables = _random_variables(model, clip)
  out = jax.jit(functools.partial(model.apply, train=False))(variables, clip)
  return model, variables, clip, {k: np.asarray(v) for k, v in out.items()}


def test_stage_strides_match_the_maps():
  x = jax.ShapeDtypeStruct((1, 8, 48, 48, 3), jnp.float32)
  model = resnet3d.ResNet3D(**TINY_BACKBONE)
  out = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x, False)[0], x)
  assert [s.shape[2] for s in out['stages']] == [24, 12, 6, 3]
  assert resnet3d.stage_strides(True) == (2, 4, 8, 16)
  assert resnet3d.stage_strides(False) == (4, 8, 16, 32)
  assert out['stages'][-1].shape == out['feature_map'].shape


@pytest.mark.parametrize(
  'strides,stride,expected',
  [((2, 4, 8, 16), 8, 2), ((4, 8, 16, 32), 8, 1), ((4, 8, 16, 32), 4, 0), ((4, 16, 32, 64), 8, 0)],
)
def test_pick_stage(strides, stride, expected):
  assert tubelet_head.pick_stage(strides, stride) == expected


def test_pick_stage_finer_than_every_stage():
  with pytest.raises(ValueError, match='finer than every backbone stage'):
    tubelet_head.pick_stage((4, 8, 16, 32), 2)


@pytest.mark.parametrize(
  'stride,size,laterals', [(4, 32, (2, 3, 4)), (8, 16, (3, 4)), (16, 8, (4,))]
)
def test_head_neck_per_stride(stride, size, laterals):
  """R3D-34-like stages of a 16 x 128 x 128 clip (max-pool: strides 4, 8, 16, 32)."""
  shapes = [(1, 8, 32, 32, 64), (1, 4, 16, 16, 128), (1, 2, 8, 8, 256), (1, 1, 4, 4, 512)]
  stages = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  head = tubelet_head.TubeletHead(num_box_classes=24, num_frames=16, stride=stride, width=32)
  out, variables = jax.eval_shape(lambda s: head.init_with_output(jax.random.key(0), s), stages)
  assert out['tubelet_logits'].shape == (1, size, size, 25)
  assert out['tubelet_boxes'].shape == (1, size, size, 16, 4)
  index = {4: 0, 8: 1, 16: 2}[stride]
  t, c = shapes[index][1], shapes[index][4]
  params = _shapes(variables['params'])
  assert params['temporal/kernel'] == (1, 1, t * c, 32)  # The t steps side by side.
  assert {k.split('/')[0] for k in params} == {
    'temporal',
    'conv',
    'cls',
    'box',
    *(f'lateral_{i}' for i in laterals),
  }
  for i in laterals:
    assert params[f'lateral_{i}/kernel'] == (1, 1, shapes[i - 1][4], 32)


@pytest.mark.parametrize('height, width', [(4, 6), (5, 3)])
def test_space_to_depth_against_a_loop(height, width):
  x = np.random.RandomState(0).randn(2, 3, height, width, 2).astype(np.float32)
  got = np.asarray(tubelet_head.space_to_depth(jnp.asarray(x), 2))
  h, w = -(-height // 2), -(-width // 2)
  want = np.zeros((2, h, w, 3, 2, 2, 2), np.float32)  # (n, i, j, time, row, col, channel)
  for i in range(h):
    for j in range(w):
      for a in range(2):
        for b in range(2):
          if 2 * i + a < height and 2 * j + b < width:
            want[:, i, j, :, a, b] = x[:, :, 2 * i + a, 2 * j + b]
  np.testing.assert_array_equal(got, want.reshape(2, h, w, 24))


@pytest.mark.parametrize('stride, finer_index', [(8, 0), (16, 1), (4, None)])
def test_finer_stage_adds_the_next_finer_stage_by_space_to_depth(stride, finer_index):
  """R3D-34-like stages (strides 4, 8, 16, 32): the stage finer than the stride stage gives
  its t steps and 2 x 2 cells per stride cell; the finest stage has none finer."""
  shapes = [(1, 8, 32, 32, 64), (1, 4, 16, 16, 128), (1, 2, 8, 8, 256), (1, 1, 4, 4, 512)]
  stages = [jax.ShapeDtypeStruct(s, jnp.float32) for s in shapes]
  head = tubelet_head.TubeletHead(
    num_box_classes=3, num_frames=16, stride=stride, width=8, finer_stage=True
  )
  out, variables = jax.eval_shape(lambda s: head.init_with_output(jax.random.key(0), s), stages)
  params = _shapes(variables['params'])
  assert out['tubelet_boxes'].shape == (1, 128 // stride, 128 // stride, 16, 4)
  if finer_index is None:
    assert 'temporal_finer/kernel' not in params
  else:
    t, c = shapes[finer_index][1], shapes[finer_index][4]
    assert params['temporal_finer/kernel'] == (1, 1, t * 2 * 2 * c, 8)


def test_initial_foreground_probability_is_small():
  # C / (e^b + C) = 0.01 with C = 6: e^b = 6 * 99.
  assert tubelet_head.background_bias(6) == pytest.approx(math.log(594))
  rng = np.random.RandomState(0)
  shapes = [(2, 4, 8, 8, 4), (2, 2, 4, 4, 8), (2, 1, 2, 2, 8), (2, 1, 1, 1, 8)]
  stages = [jnp.asarray(rng.rand(*s), jnp.float32) for s in shapes]
  head = tubelet_head.TubeletHead(
    num_box_classes=6, num_frames=2, stride=4, width=8, stage_strides=(2, 4, 8, 16)
  )
  out, _ = jax.jit(lambda s: head.init_with_output(jax.random.key(0), s))(stages)
  foreground = _softmax(np.asarray(out['tubelet_logits']))[..., 1:].sum(-1)
  assert out['tubelet_logits'].shape == (2, 4, 4, 7)
  np.testing.assert_allclose(foreground, 0.01, rtol=0.2)


def test_presence_output_starts_near_present():
  # sigmoid(b) = 0.9: b = log 9.
  assert tubelet_head.presence_bias() == pytest.approx(math.log(9))
  rng = np.random.RandomState(0)
  shapes = [(2, 4, 8, 8, 4), (2, 2, 4, 4, 8), (2, 1, 2, 2, 8), (2, 1, 1, 1, 8)]
  stages = [jnp.asarray(rng.rand(*s), jnp.float32) for s in shapes]
  head = tubelet_head.TubeletHead(
    num_box_classes=6, num_frames=3, stride=4, width=8, stage_strides=(2, 4, 8, 16), presence=True
  )
  out, variables = jax.jit(lambda s: head.init_with_output(jax.random.key(0), s))(stages)
  assert out['tubelet_presence'].shape == (2, 4, 4, 3)
  assert out['tubelet_presence'].dtype == jnp.float32
  assert _shapes(variables['params']['presence']) == {'kernel': (1, 1, 8, 3), 'bias': (3,)}
  probs = 1 / (1 + np.exp(-np.asarray(out['tubelet_presence'])))
  np.testing.assert_allclose(probs, 0.9, atol=0.02)


def test_detector_with_presence_outputs():
  model = _tiny(tubelet_presence=True)
  clip = jax.ShapeDtypeStruct(CLIP_SHAPE, jnp.uint8)
  out, variables = jax.eval_shape(
    lambda c: model.init_with_output(jax.random.key(0), c, train=False), clip
  )
  assert (out['tubelet_presence'].shape, out['tubelet_presence'].dtype) == (
    (2, 6, 6, 4),
    jnp.float32,
  )
  assert (out['det_present'].shape, out['det_present'].dtype) == ((2, 5, 4), jnp.bool_)
  assert 'presence' in variables['params']['box_head']
  train_out, _ = jax.eval_shape(
    lambda v, c: model.apply(v, c, train=True, mutable=['batch_stats']), variables, clip
  )
  assert 'tubelet_presence' in train_out and 'det_present' not in train_out
  config = ml_collections.ConfigDict(
    dict(box_head='tubelet', tubelet_presence=True, tubelet_presence_threshold=0.7)
  )
  built = build_model(config)
  assert (built.tubelet_presence, built.tubelet_presence_threshold) == (True, 0.7)
  config = ml_collections.ConfigDict(dict(box_head='tubelet'))  # saved before presence
  assert build_model(config).tubelet_presence is False


def test_tiny_detector_outputs(tiny):
  _, variables, _, out = tiny
  assert set(variables['params']) == {'backbone', 'classifier', 'box_head'}
  # 48 / 8 = 6 cells a side; K = 4 of the 8 frames; 6 box classes + background.
  expected = {
    'logits': ((2, 8), np.float32),
    'boxes': ((2, 4), np.float32),
    'tubelet_logits': ((2, 6, 6, 7), np.float32),
    'tubelet_boxes': ((2, 6, 6, 4, 4), np.float32),
    'det_boxes': ((2, 5, 4, 4), np.float32),
    'det_scores': ((2, 5, 6), np.float32),
    'det_valid': ((2, 5), np.bool_),
  }
  assert {k: (v.shape, v.dtype) for k, v in out.items()} == expected
  sizes = out['tubelet_boxes'][..., 2:]
  assert (sizes > 0).all() and (sizes < 1).all()
  assert (out['det_boxes'] >= 0).all() and (out['det_boxes'] <= 1).all()


def test_first_detection_and_box_are_the_best_location(tiny):
  """Recomputed in numpy from the dense outputs: softmax, best foreground cell, the
  contract's geometry, the centre frames (1 and 2 of K = 4)."""
  _, _, _, out = tiny
  probs = _softmax(out['tubelet_logits'])[..., 1:]
  for n in range(2):
    i, j = np.unravel_index(probs[n].max(-1).argmax(), (6, 6))
    np.testing.assert_allclose(out['det_scores'][n, 0], probs[n, i, j], rtol=1e-5)
    dx, dy, bw, bh = out['tubelet_boxes'][n, i, j].T
    cx, cy = (j + 0.5 + dx) / 6, (i + 0.5 + dy) / 6
    corners = np.clip(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1), 0, 1)
    assert out['det_valid'][n, 0]
    np.testing.assert_allclose(out['det_boxes'][n, 0], corners, atol=1e-6)
    x1, y1, x2, y2 = corners[1:3].mean(0)
    np.testing.assert_allclose(out['boxes'][n], [x1, y1, x2 - x1, y2 - y1], atol=1e-6)


def test_training_outputs_have_no_decoding(tiny):
  model, variables, clip, _ = tiny
  out, _ = jax.eval_shape(
    lambda v: model.apply(v, clip, train=True, mutable=['batch_stats']), variables
  )
  assert set(out) == {'logits', 'boxes', 'tubelet_logits', 'tubelet_boxes'}


def test_bfloat16_compute_float32_outputs(tiny):
  _, variables, clip, ref = tiny
  low = jax.jit(functools.partial(_tiny(dtype=jnp.bfloat16).apply, train=False))(variables, clip)
  for key in ('logits', 'boxes', 'tubelet_logits', 'tubelet_boxes', 'det_boxes', 'det_scores'):
    assert low[key].dtype == jnp.float32, key
  rel = np.abs(np.asarray(low['tubelet_logits']) - ref['tubelet_logits']).max()
  rel /= np.abs(ref['tubelet_logits']).max()
  assert 0 < rel < BF16_RTOL, rel  # It really computed in bfloat16, and closely.


@pytest.mark.parametrize(
  'box_head,hidden,expected',
  [
    (
      'mlp',
      (16,),
      {
        'hidden_0/kernel': (128, 16),
        'hidden_0/bias': (16,),
        'out/kernel': (16, 4),
        'out/bias': (4,),
      },
    ),
    (
      'spatial',
      (16,),
      {
        'hidden_0/kernel': (1, 1, 128, 16),
        'hidden_0/bias': (16,),
        'out/kernel': (1, 1, 16, 5),
        'out/bias': (5,),
      },
    ),
    ('none', (16,), None),
  ],
)
def test_existing_heads_unchanged(tiny, box_head, hidden, expected):
  _, tubelet_variables, clip, _ = tiny
  model = _tiny(box_head, box_hidden=hidden)
  out, variables = jax.eval_shape(
    lambda: model.init_with_output(jax.random.key(0), clip, train=False)
  )
  assert set(out) == {'logits', 'boxes'}
  params = variables['params']
  if expected is None:
    assert 'box_head' not in params
  else:
    assert _shapes(params['box_head']) == expected
  # The backbone and classifier do not depend on the head.
  for scope in ('backbone', 'classifier'):
    assert _shapes(params[scope]) == _shapes(tubelet_variables['params'][scope])


def test_r3d34_tubelet_shapes_at_stride_8():
  model = Detector(
    num_classes=24,
    backbone_kwargs=dict(depth=34, shortcut_type='B'),
    box_head='tubelet',
    num_box_classes=24,
  )
  clip = jax.ShapeDtypeStruct((1, 16, 128, 128, 3), jnp.uint8)
  out, variables = jax.eval_shape(
    lambda c: model.init_with_output(jax.random.key(0), c, train=False), clip
  )
  assert out['tubelet_logits'].shape == (1, 16, 16, 25)
  assert out['tubelet_boxes'].shape == (1, 16, 16, 16, 4)
  assert out['det_boxes'].shape == (1, 10, 16, 4)
  head = _shapes(variables['params']['box_head'])
  assert head['temporal/kernel'] == (1, 1, 4 * 128, 256)  # layer2: 4 time steps x 128.


def test_build_model_reads_the_tubelet_keys():
  config = ml_collections.ConfigDict(
    dict(
      depth=10,
      widen_factor=0.25,
      shortcut_type='A',
      conv1_t_size=3,
      conv1_t_stride=2,
      no_max_pool=True,
      num_classes=8,
      box_head='tubelet',
      num_box_classes=6,
      tubelet_frames=4,
      tubelet_stride=16,
      tubelet_width=12,
      tubelet_top_n=3,
      tubelet_nms=0.4,
    )
  )
  model = build_model(config)
  assert (model.num_box_classes, model.tubelet_frames, model.tubelet_stride) == (6, 4, 16)
  assert (model.tubelet_width, model.tubelet_top_n, model.tubelet_nms) == (12, 3, 0.4)
  clip = jax.ShapeDtypeStruct(CLIP_SHAPE, jnp.uint8)
  out = jax.eval_shape(lambda c: model.init_with_output(jax.random.key(0), c, train=False)[0], clip)
  assert out['tubelet_logits'].shape == (2, 3, 3, 7)  # 48 / 16 = 3: layer4, no laterals.
  assert out['det_scores'].shape == (2, 3, 6)

  config.tubelet_frames = 9  # More than the clip's 8 frames.
  with pytest.raises(ValueError, match='tubelet_frames must be in 0..8'):
    jax.eval_shape(lambda c: build_model(config).init(jax.random.key(0), c, train=False), clip)


def test_flip_test_averages_each_box_with_its_mirror_images(tiny):
  """tubelet_flip_test: the clip's own class scores, and at each cell the mean of its boxes
  and of the mirror image's boxes at the mirrored cell (i, w - 1 - j) with dx negated,
  recomputed in numpy from two plain forward passes; the first detection decodes them."""
  model, variables, clip, plain = tiny
  apply = jax.jit(functools.partial(model.apply, train=False))
  mirror = {k: np.asarray(v) for k, v in apply(variables, clip[:, :, :, ::-1]).items()}
  flip_test = _tiny(tubelet_flip_test=True)
  got = jax.jit(functools.partial(flip_test.apply, train=False))(variables, clip)
  mirrored = mirror['tubelet_boxes'][:, :, ::-1].copy()
  mirrored[..., 0] *= -1
  expected = (plain['tubelet_boxes'] + mirrored) / 2
  # Two forward passes in one program: XLA may round differently, by ~1e-6.
  np.testing.assert_allclose(got['tubelet_boxes'], expected, rtol=1e-5, atol=1e-5)
  for key in ('logits', 'tubelet_logits', 'det_scores'):
    np.testing.assert_allclose(got[key], plain[key], rtol=1e-5, atol=1e-5)
  probs = _softmax(plain['tubelet_logits'])[..., 1:]
  for n in range(2):
    i, j = np.unravel_index(probs[n].max(-1).argmax(), (6, 6))
    dx, dy, bw, bh = expected[n, i, j].T
    cx, cy = (j + 0.5 + dx) / 6, (i + 0.5 + dy) / 6
    corners = np.clip(np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], -1), 0, 1)
    np.testing.assert_allclose(got['det_boxes'][n, 0], corners, atol=1e-5)
  assert flip_test.tubelet_flip_test and not model.tubelet_flip_test
