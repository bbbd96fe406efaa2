"""The training loop's input and diagnostics: device prefetch, a run out of data, profiling.

Tiny runs on random data on one simulated CPU device (see test_train.tiny_config).
"""

import itertools

import jax
import pytest

from stconsist_jax.training import distributed
from stconsist_jax.training import summaries
from stconsist_jax.training import train
from stconsist_jax.data.pipeline import random_source

import test_train  # pylint: disable=g-bad-import-order


def _run(config, workdir, **kwargs):
  mesh = distributed.make_mesh(jax.devices()[:1])
  return train.train_and_evaluate(config, str(workdir), mesh=mesh, **kwargs)


def test_prefetched_run_equals_unprefetched_and_profiles_the_chosen_steps(tmp_path):
  results = {}
  for prefetch in (0, 2):
    config = test_train.tiny_config(num_steps=4)
    config.data.device_prefetch = prefetch
    if prefetch:
      config.train.profile_steps = (1, 2)
    _run(config, tmp_path / f'prefetch{prefetch}')
    results[prefetch] = summaries.read_metrics(tmp_path / f'prefetch{prefetch}')
  assert sorted(results[0]) == [1, 2, 3, 4]
  assert results[2] == results[0], 'the same batches in the same order: the same numbers'
  assert results[0][4]['loss'] != results[0][1]['loss']
  traces = list((tmp_path / 'prefetch2' / 'profile').glob('plugins/profile/*/*.xplane.pb'))
  assert len(traces) == 1 and traces[0].stat().st_size > 0
  assert not (tmp_path / 'prefetch0' / 'profile').exists()


def test_data_running_out_is_a_clear_error_at_the_missing_step(tmp_path):
  config = test_train.tiny_config(num_steps=4)

  def two_batches(cfg, start_step):
    return (
      random_source.random_batch(cfg, s) for s in itertools.islice(itertools.count(start_step), 2)
    )

  with pytest.raises(ValueError, match='ran out at step 2'):
    _run(config, tmp_path, batch_iter_fn=two_batches)
  records = summaries.read_metrics_jsonl(tmp_path / summaries.METRICS_FILENAME)
  assert [r['step'] for r in records] == [1, 2], 'the steps run are logged, once each'
