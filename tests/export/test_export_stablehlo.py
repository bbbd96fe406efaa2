"""The StableHLO export (jax.export): the serialized file, deserialized and called, gives the
JAX model's outputs for any batch size; a fixed batch refuses another."""

import json

import numpy as np
import pytest

from stconsist_jax.export import exporter
from stconsist_jax.export import to_stablehlo
from stconsist_jax.prediction import export_metadata
from tests.export import export_models


@pytest.fixture(scope='module', params=export_models.HEADS)
def exported(request, tmp_path_factory):
  r = export_models.restored(request.param)
  out = tmp_path_factory.mktemp('stablehlo') / request.param
  meta = exporter.export(r, out, exporter.Options('stablehlo', check=False))
  return r, out, meta


def test_outputs_equal_jax_at_other_batch_sizes(exported):
  r, out, meta = exported
  call = to_stablehlo.load(out / 'model.stablehlo')
  for batch in (3, 1):
    clip = export_models.clips(batch, seed=batch)
    export_models.assert_equal_outputs(call(clip), export_models.jax_outputs(r, clip))
  assert meta['input']['shape'] == ['batch', 8, 48, 48, 3]
  assert [o['name'] for o in meta['outputs']] == export_models.OUTPUT_NAMES[
    meta['model']['box_head']
  ]
  assert meta['exported_with']['platforms'] == ['cpu', 'cuda']
  assert json.loads((out / 'metadata.json').read_text()) == meta


def test_presence_export_equals_jax_and_is_checked(tmp_path):
  r = export_models.restored('tubelet', presence=True)
  meta = exporter.export(r, tmp_path / 'presence', exporter.Options('stablehlo'))
  names = [o['name'] for o in meta['outputs']]
  assert names == sorted(
    export_models.OUTPUT_NAMES['tubelet'] + ['det_present', 'tubelet_presence']
  )
  shapes = {o['name']: (o['dtype'], o['shape']) for o in meta['outputs']}
  assert shapes['det_present'] == ('bool', ['batch', 6, 8])  # top 6, K = 8
  assert shapes['tubelet_presence'] == ('float32', ['batch', 12, 12, 8])  # 48 px / stride 4
  assert meta['tubelet']['presence_threshold'] == 0.5
  assert meta['checked']['max_relative_difference']['det_present'] == 0
  wrong = json.loads(json.dumps(meta))
  next(o for o in wrong['outputs'] if o['name'] == 'det_present')['shape'] = ['batch', 6, 7]
  with pytest.raises(export_metadata.MetadataError, match="output 'det_present' has shape"):
    export_metadata.validate(wrong)
  call = to_stablehlo.load(tmp_path / 'presence' / 'model.stablehlo')
  clip = export_models.clips(3, seed=3)
  expected = export_models.jax_outputs(r, clip)
  # Presence that decides something: valid rows present on some of their frames only.
  assert (expected['det_valid'] & expected['det_present'].any(-1)).any()
  assert (expected['det_valid'] & ~expected['det_present'].all(-1)).any()
  export_models.assert_equal_outputs(call(clip), expected)


def test_fixed_batch_export_takes_that_batch_only(tmp_path):
  r = export_models.restored('spatial')
  meta = exporter.export(
    r, tmp_path / 'fixed', exporter.Options('stablehlo', batch_size=2, check=False)
  )
  assert meta['input']['shape'] == [2, 8, 48, 48, 3]
  assert [o['shape'][0] for o in meta['outputs']] == [2, 2]
  call = to_stablehlo.load(tmp_path / 'fixed' / 'model.stablehlo')
  clip = export_models.clips(2)
  export_models.assert_equal_outputs(call(clip), export_models.jax_outputs(r, clip))
  with pytest.raises(ValueError, match='shape'):
    call(np.zeros((3, 8, 48, 48, 3), np.uint8))


def test_check_runs_the_export_and_records_the_difference(tmp_path):
  r = export_models.restored('spatial')
  meta = exporter.export(r, tmp_path / 'checked', exporter.Options('stablehlo'))
  checked = meta['checked']
  assert (checked['runtime'], checked['batch'], checked['tolerance']) == ('jax', 2, 1e-3)
  assert sorted(checked['max_relative_difference']) == ['boxes', 'logits']
  assert max(checked['max_relative_difference'].values()) <= 1e-6  # The same XLA program.


def test_check_refuses_an_export_that_computes_something_else(tmp_path, monkeypatch):
  def shifted(path, clip):
    out = to_stablehlo.run(path, clip)
    return dict(out, logits=out['logits'] + 0.01 * np.abs(out['logits']).max())

  monkeypatch.setitem(exporter.RUNTIMES, 'stablehlo', ('jax', shifted))
  r = export_models.restored('spatial')
  with pytest.raises(exporter.ExportMismatchError) as e:
    exporter.export(r, tmp_path / 'wrong', exporter.Options('stablehlo'))
  assert str(e.value) == (
    "the stablehlo export, run by jax, does not compute the model: output 'logits' differs "
    'by 0.01 of its largest value (tolerance 0.001); nothing was written'
  )

  def broken(path, clip):
    raise RuntimeError('Incompatible dimensions\nat node Add')

  monkeypatch.setitem(exporter.RUNTIMES, 'stablehlo', ('jax', broken))
  with pytest.raises(exporter.ExportMismatchError, match='cannot be run by jax'):
    exporter.export(r, tmp_path / 'wrong', exporter.Options('stablehlo'))
  assert list(tmp_path.iterdir()) == []  # Neither the export nor its partial folder.


def test_output_differences_by_hand():
  expected = {'a': np.array([1.0, -4.0], np.float32), 'v': np.array([1, 0, 1, 1], bool)}
  found = {'a': np.array([1.0, -3.9], np.float32), 'v': np.array([1, 1, 1, 1], bool)}
  differences = exporter.output_differences(expected, found)
  assert differences['a'] == pytest.approx(0.1 / 4, rel=1e-5) and differences['v'] == 0.25


def test_decoded_detections_are_compared_row_to_row_whatever_their_order():
  """Rows 0 and 1 swapped (tied scores): no difference; a box that moved still differs."""
  boxes = np.zeros((1, 3, 1, 4), np.float32)
  boxes[0, :, 0] = [[0.1, 0.1, 0.2, 0.2], [0.5, 0.5, 0.9, 0.9], [0, 0, 0, 0]]
  scores = np.array([[[0.9, 0.1], [0.9, 0.0], [0, 0]]], np.float32)
  expected = {
    'det_boxes': boxes,
    'det_scores': scores,
    'det_valid': np.array([[True, True, False]]),
  }
  swapped = {k: v[:, [1, 0, 2]] for k, v in expected.items()}
  matched = exporter.match_detections(expected, swapped)
  assert max(exporter.output_differences(expected, matched).values()) == 0
  moved = dict(swapped, det_boxes=swapped['det_boxes'].copy())
  moved['det_boxes'][0, 0, 0] += 0.05  # the (0.5, 0.5) box, now row 0
  differences = exporter.output_differences(expected, exporter.match_detections(expected, moved))
  assert differences['det_boxes'] == pytest.approx(0.05 / 0.9) and differences['det_valid'] == 0


def test_presence_rows_move_with_their_detections():
  """det_present is reordered with the rows it belongs to."""
  boxes = np.zeros((1, 2, 2, 4), np.float32)
  boxes[0, :, :] = [[[0.1, 0.1, 0.2, 0.2]] * 2, [[0.5, 0.5, 0.9, 0.9]] * 2]
  expected = {
    'det_boxes': boxes,
    'det_scores': np.array([[[0.9], [0.9]]], np.float32),
    'det_valid': np.array([[True, True]]),
    'det_present': np.array([[[True, False], [False, True]]]),
  }
  swapped = {k: v[:, [1, 0]] for k, v in expected.items()}
  matched = exporter.match_detections(expected, swapped)
  assert exporter.output_differences(expected, matched)['det_present'] == 0
  wrong = dict(swapped, det_present=expected['det_present'])  # not moved with its rows
  assert exporter.output_differences(expected, exporter.match_detections(expected, wrong))[
    'det_present'
  ] == pytest.approx(1.0)
