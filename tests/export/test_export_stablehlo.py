"""The StableHLO export (jax.export): the serialized file, deserialized and called, gives the
JAX model's outputs for any batch size; a fixed batch refuses another."""

import json

import numpy as np
import pytest

from stconsist_jax.export import exporter
from stconsist_jax.export import to_stablehlo
from tests.export import export_models


@pytest.fixture(scope='module', params=['spatial', 'mlp'])
def exported(request, tmp_path_factory):
  r = export_models.restored(request.param)
  out = tmp_path_factory.mktemp('stablehlo') / request.param
  meta = exporter.export(r, out, exporter.Options('stablehlo'))
  return r, out, meta


def test_outputs_equal_jax_at_other_batch_sizes(exported):
  r, out, meta = exported
  call = to_stablehlo.load(out / 'model.stablehlo')
  for batch in (3, 1):
    clip = export_models.clips(batch, seed=batch)
    export_models.assert_equal_outputs(call(clip), export_models.jax_outputs(r, clip))
  assert meta['input']['shape'] == ['batch', 8, 48, 48, 3]
  assert meta['exported_with']['platforms'] == ['cpu', 'cuda']
  assert json.loads((out / 'metadata.json').read_text()) == meta


def test_fixed_batch_export_takes_that_batch_only(tmp_path):
  r = export_models.restored('spatial')
  meta = exporter.export(r, tmp_path / 'fixed', exporter.Options('stablehlo', batch_size=2))
  assert meta['input']['shape'] == [2, 8, 48, 48, 3]
  assert [o['shape'][0] for o in meta['outputs']] == [2, 2]
  call = to_stablehlo.load(tmp_path / 'fixed' / 'model.stablehlo')
  clip = export_models.clips(2)
  export_models.assert_equal_outputs(call(clip), export_models.jax_outputs(r, clip))
  with pytest.raises(ValueError, match='shape'):
    call(np.zeros((3, 8, 48, 48, 3), np.uint8))
