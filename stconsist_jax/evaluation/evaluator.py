"""The evaluator interface: each output type is an evaluator named in `config.eval.evaluators`
that runs its stream and yields `(name, value)` report fields (big_vision's `config.evals`).

An evaluator lives in `stconsist_jax/evaluation/evaluators/<name>.py` as a class
`Evaluator`; adding one is that module and its name in the config.
"""

from __future__ import annotations

import abc
import dataclasses
import importlib
from typing import Any, ClassVar
from collections.abc import Callable, Iterator, Mapping, Sequence

import ml_collections

from stconsist_jax.config import schema

# What an evaluator yields: report fields, and counts (`num_*`) that go to report['counts'].
Fields = Iterator[tuple[str, Any]]


@dataclasses.dataclass
class Context:
  """What every evaluator may use, and what earlier evaluators left for later ones.

  `run_stream(batches, keys, **kw)` predicts a whole stream on the mesh and returns the
  gathered outputs with the named batch fields (`runner.run_stream`); `fields` holds the
  fields yielded so far; `shared` whatever one evaluator hands to another (the clip sheet).
  """

  config: ml_collections.ConfigDict
  streams: Any  # data.pipeline.eval_inputs.StreamData
  run_stream: Callable[..., tuple[dict[str, Any], dict[str, Any] | None]]
  fields: dict[str, Any] = dataclasses.field(default_factory=dict)
  shared: dict[str, Any] = dataclasses.field(default_factory=dict)


class Evaluator(abc.ABC):
  """One output type's evaluation: its stream, its metrics, its summary keys."""

  name: ClassVar[str]
  # Fields of the one-line summary; the best checkpoint is chosen among them.
  summary_keys: ClassVar[tuple[str, ...]] = ()
  # Skipped (its `not_measured` fields reported) for a classifier without boxes.
  needs_boxes: ClassVar[bool] = True

  def check(self, context: Context) -> None:  # noqa: B027 (optional hook)
    """Fails before any compute when this evaluator cannot run on `context`'s data."""

  def not_measured(self) -> Mapping[str, Any]:
    """The fields reported when the evaluator is skipped (NaN metrics)."""
    return {key: float('nan') for key in self.summary_keys}

  @abc.abstractmethod
  def run(self, context: Context) -> Fields:
    """Runs this evaluator's stream and yields its report fields."""


def evaluator_class(name: str) -> type[Evaluator]:
  """The `Evaluator` of module `evaluators/<name>.py`; ConfigError for an unknown name."""
  if not name.isidentifier():
    raise schema.ConfigError(f'config key eval.evaluators: {name!r} is not an evaluator name')
  try:
    module = importlib.import_module(f'stconsist_jax.evaluation.evaluators.{name}')
  except ModuleNotFoundError:
    raise schema.ConfigError(
      f'config key eval.evaluators: no evaluator {name!r} '
      f'(stconsist_jax/evaluation/evaluators/{name}.py)'
    ) from None
  return module.Evaluator


def from_config(config: ml_collections.ConfigDict) -> list[Evaluator]:
  """The evaluators `config.eval.evaluators` names, in order."""
  return [evaluator_class(name)() for name in config.eval.evaluators]


def summary_keys(evaluators: Sequence[Evaluator]) -> tuple[str, ...]:
  """The summary fields of `evaluators`, in order."""
  return tuple(key for e in evaluators for key in e.summary_keys)


def check_best_metric(config: ml_collections.ConfigDict) -> None:
  """`eval.best_metric` must be a summary field of the configured evaluators."""
  keys = summary_keys(from_config(config))
  if config.eval.best_metric not in keys:
    raise schema.ConfigError(
      f'config key eval.best_metric must be one of {list(keys)} (the summary of '
      f'eval.evaluators={list(config.eval.evaluators)}), got {config.eval.best_metric!r}'
    )
