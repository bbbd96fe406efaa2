"""What a workdir's metrics.jsonl says about resumed runs: the steps logged more than once."""

from etils import epath

from stconsist_jax.training import summaries


def steps_run_twice(workdir):
  """{step: [metrics of each run that logged it]} for the steps a resume repeated."""
  runs = {}
  for record in summaries.read_metrics_jsonl(epath.Path(workdir) / summaries.METRICS_FILENAME):
    runs.setdefault(record.pop('step'), []).append(record)
  return {step: records for step, records in runs.items() if len(records) > 1}
