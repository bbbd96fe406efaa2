"""A mean teacher for the consistency terms: an exponential moving average of the weights.

With `loss.teacher_ema` = d > 0 the flipped clip's predictions, the consistency targets,
come from the teacher, updated after each step as teacher <- d * teacher + (1 - d) *
student (parameters and BatchNorm statistics alike); d = 0 keeps the study's setting.
"""

from __future__ import annotations

from typing import Any

import jax


def ema_update(teacher: Any, student: Any, decay: float | jax.Array) -> Any:
  """d * teacher + (1 - d) * student, leaf by leaf (the trees must match)."""
  return jax.tree.map(lambda t, s: decay * t + (1.0 - decay) * s, teacher, student)
