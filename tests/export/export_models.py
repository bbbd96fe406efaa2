"""The tiny models the export tests convert, their exports and inputs, and the equality the
exports must meet: each runtime's outputs equal JAX's to 1e-4 relative (float32)."""

import jax
import numpy as np

from benchmarks import torch_resnet3d
from stconsist_jax import models
from stconsist_jax.configs import demo
from stconsist_jax.export import exporter
from stconsist_jax.prediction import predict

NUM_FRAMES, SIZE = 8, 48
RTOL = 1e-4
HEADS = ('spatial', 'mlp', 'tubelet')
# The exported outputs of each head, in the model file's (name) order.
OUTPUT_NAMES = {
  'spatial': ['boxes', 'logits'],
  'mlp': ['boxes', 'logits'],
  'tubelet': [
    'boxes',
    'det_boxes',
    'det_scores',
    'det_valid',
    'logits',
    'tubelet_boxes',
    'tubelet_logits',
  ],
}


def tiny_config(head, presence=False):
  """The demo model (depth 10, widen 0.25, 8x48x48 clips) with `head`. The 'mlp' variant
  has R3D-34's layout at depth 18: the max-pool stem, projection shortcuts ('B') and two
  blocks per stage (the second block after a projection is what a jax2onnx optimizer
  pass broke), so the full-size model's graph is exported too. 'tubelet' is the demo's
  own head (K = T = 8 boxes per cell, top 6 decoded tubelets per clip); `presence` adds
  its per-frame presence output and the demo's flip test (two forward passes: exported
  once per format that tests presence, not in every test)."""
  config = demo.get_config()
  config.data.name = 'random'
  config.model.box_head = head
  config.model.tubelet_presence = presence
  config.model.tubelet_flip_test = presence
  if head == 'mlp':
    config.model.box_hidden = (16,)
    config.model.depth = 18
    config.model.shortcut_type = 'B'
    config.model.no_max_pool = False
    config.model.conv1_t_stride = 1
  return config


def restored(head, seed=0, presence=False):
  """A `predict.RestoredModel` as restore_model gives it, with random weights and
  non-trivial BatchNorm statistics; the model as configured (conv_impl 'auto')."""
  config = tiny_config(head, presence)
  model = models.build_model(config.model)
  clip = np.zeros((1, NUM_FRAMES, SIZE, SIZE, 3), np.uint8)
  variables = torch_resnet3d.random_flax_variables(model, clip, train=False, seed=seed)
  info = {
    'source': 'workdir',
    'path': '/runs/tiny',
    'step': 7,
    'architecture': f'tiny {head}',
    'classification_only': False,
    'num_classes': int(config.model.num_classes),
    'config_hash': 'abcdef012345',
  }
  names = [f'action {i}' for i in range(int(config.model.num_classes))]
  return predict.RestoredModel(config, model, dict(variables), True, names, info)


def export_heads(tmp_path_factory, format_name):
  """head -> (restored model, export folder, metadata) for each of HEADS, exported to
  `format_name`; the export's own runtime check is off (the tests using it are that check)."""
  found = {}
  for head in HEADS:
    r = restored(head)
    out = tmp_path_factory.mktemp(format_name) / head
    found[head] = r, out, exporter.export(r, out, exporter.Options(format_name, check=False))
  return found


def clips(batch, seed=1):
  return np.random.default_rng(seed).integers(0, 256, (batch, NUM_FRAMES, SIZE, SIZE, 3), np.uint8)


def jax_outputs(r, clip):
  """The reference: the model applied by JAX as prediction applies it."""
  out = jax.jit(lambda v, c: r.model.apply(v, c, train=False))(r.variables, clip)
  return {k: np.asarray(v) for k, v in out.items()}


DETECTIONS = ('det_boxes', 'det_scores', 'det_valid', 'det_present')  # det_present: optional


def in_expected_order(found, expected):
  """The found decoded detections of each clip in the order of the expected ones they
  match (the nearest box): scores equal to float32 precision (a saturated softmax) may come
  in either order from two runtimes."""
  found = {k: np.array(v) for k, v in found.items()}
  for b in range(len(expected['det_valid'])):
    rows = list(range(found['det_valid'].shape[1]))
    order = []
    for i in range(len(rows)):
      distance = [
        np.abs(found['det_boxes'][b, j] - expected['det_boxes'][b, i]).max() for j in rows
      ]
      order.append(rows.pop(int(np.argmin(distance))))
    for k in DETECTIONS:
      if k in found:
        found[k][b] = found[k][b, order]
  return found


def assert_equal_outputs(found, expected):
  """Same names, shapes and dtypes; values within RTOL of each output's largest value,
  booleans (the tubelet head's det_valid) equal; decoded detections matched row to row."""
  assert sorted(found) == sorted(expected)
  if 'det_valid' in expected:  # Decoded detections to compare, not only padding.
    assert expected['det_valid'].any()
    found = in_expected_order(found, expected)
  for name, want in expected.items():
    got = np.asarray(found[name])
    assert got.shape == want.shape and got.dtype == want.dtype, (name, got.shape, got.dtype)
    if want.dtype == bool:
      np.testing.assert_array_equal(got, want, err_msg=name)
      continue
    scale = float(np.abs(want).max())
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=name)
