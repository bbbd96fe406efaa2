"""The train step: state, optimizer and schedule, stages, and the sharded jitted step.

One jit code path for 1..N devices and hosts: batch sharded on the mesh's 'data' axis,
state replicated and donated. The clip and its flipped copy share one forward pass; with
a mean teacher (`loss.teacher_ema`) the flipped clip goes through the teacher instead,
which follows the student by an EMA after each step. Clips whose video lost its labels
(`has_label` false) count in the consistency terms only. A model with the dense tubelet
head (`tubelet_logits` in its outputs) trains with the terms of `tubelet_losses` in place
of the one-box `loc` and `con_loc`.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
from typing import Any
from collections.abc import Callable, Mapping, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stconsist_jax import models
from stconsist_jax.core import boxes
from stconsist_jax.config import schema
from stconsist_jax.training import distributed
from stconsist_jax.training import losses
from stconsist_jax.training import initial_weights
from stconsist_jax.training import teacher as teacher_lib
from stconsist_jax.training import tubelet_losses
from stconsist_jax.models import detector

# The parameters in two parts, each with its own optimizer state: the box head (all that
# trains while the backbone is frozen) and the rest (the backbone and the classifier).
BOX_HEAD = detector.BOX_HEAD_SCOPE
REST = 'rest'

Batch = Mapping[str, Any]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  `opt_state` is {REST: ..., BOX_HEAD: ...}: one optimizer state per part of the
  parameters, so freezing the backbone leaves its state untouched and the structure is
  the same in every stage. `teacher` is the mean teacher's {'params', 'batch_stats'}
  with `loss.teacher_ema` > 0, else None.
  """

  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  teacher: Any = None


@dataclasses.dataclass(frozen=True)
class Stage:
  """A contiguous run of steps [start, end) with one freezing mode and loss weights."""

  start: int
  end: int
  freeze_backbone: bool
  loss_weights: tuple[tuple[str, float], ...]


# ----------------------------------------------------------------------------- params


def split_params(params: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
  """{'backbone', 'classifier', 'box_head'} -> {REST: {backbone, classifier}, BOX_HEAD: ...}."""
  return {
    REST: {k: v for k, v in params.items() if k != detector.BOX_HEAD_SCOPE},
    BOX_HEAD: {k: v for k, v in params.items() if k == detector.BOX_HEAD_SCOPE},
  }


def join_params(parts: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
  """The inverse of `split_params`."""
  return {**parts[REST], **parts[BOX_HEAD]}


# -------------------------------------------------------------------------- optimizer


def make_optimizer(opt: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The update direction without the learning rate (the step multiplies by -lr(t))."""
  if opt.name == 'sgd':
    # PyTorch SGD: weight decay is added to the gradient before the momentum buffer.
    parts = []
    if opt.weight_decay:
      parts.append(optax.add_decayed_weights(opt.weight_decay))
    if opt.momentum:
      parts.append(optax.trace(decay=opt.momentum, nesterov=opt.nesterov))
    return optax.chain(*parts) if parts else optax.identity()
  if opt.name == 'adamw':
    parts = [optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps)]
    if opt.weight_decay:
      parts.append(optax.add_decayed_weights(opt.weight_decay))
    return optax.chain(*parts)
  raise ValueError(f'config key optimizer.name: unknown optimizer {opt.name!r}')


def make_lr_schedule(opt: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up, then constant, step decay (absolute steps) or cosine to 0."""
  warmup = int(opt.warmup_steps)
  if opt.schedule == 'constant':
    main = optax.constant_schedule(opt.lr)
  elif opt.schedule == 'step':
    main = optax.piecewise_constant_schedule(
      opt.lr, {int(b) - warmup: opt.decay_factor for b in opt.decay_steps}
    )
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(opt.lr, max(num_steps - warmup, 1))
  else:
    raise ValueError(f'config key optimizer.schedule: unknown schedule {opt.schedule!r}')
  if warmup == 0:
    return main
  return optax.join_schedules([optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])


# ------------------------------------------------------------------------------ stages


def resolve_stages(config: ml_collections.ConfigDict) -> list[Stage]:
  """config.train.stages (or one stage training everything) -> Stages covering all steps."""
  terms = schema.head_loss_terms(config.model.box_head, schema.tubelet_presence(config))
  base = {t: float(config.loss[f'{t}_weight']) for t in terms}
  specs = list(config.train.stages) or [{'num_steps': -1}]
  stages, start = [], 0
  for spec in specs:
    n = spec['num_steps']
    end = config.train.num_steps if n == -1 else min(start + n, config.train.num_steps)
    weights = dict(base)
    weights.update({k: float(v) for k, v in dict(spec.get('loss_weights', {}) or {}).items()})
    stages.append(
      Stage(start, end, bool(spec.get('freeze_backbone', False)), tuple(sorted(weights.items())))
    )
    start = end
  if start < config.train.num_steps:  # Steps after the listed stages: the last stage's mode.
    last = stages[-1]
    stages.append(Stage(start, config.train.num_steps, last.freeze_backbone, last.loss_weights))
  return [s for s in stages if s.end > s.start]


def stage_at(stages: Sequence[Stage], step: int) -> int:
  for i, s in enumerate(stages):
    if s.start <= step < s.end:
      return i
  return len(stages) - 1


# ------------------------------------------------------------------------------- state


# The jitted initializers and train steps of this process, by what they compute: a run of
# a configuration seen before in the same process (a resume, a study's next run, a test)
# reuses the traced program instead of tracing and lowering it again. Oldest dropped first.
JIT_CACHE_SIZE = 8
_jitted: collections.OrderedDict[tuple[Any, ...], Callable] = collections.OrderedDict()


def _cached_jit(key: tuple[Any, ...], build: Callable[[], Callable]) -> Callable:
  """The jitted function stored under `key`, built by `build()` when missing."""
  fn = _jitted.get(key)
  if fn is None:
    fn = _jitted[key] = build()
    while len(_jitted) > JIT_CACHE_SIZE:
      _jitted.popitem(last=False)
  _jitted.move_to_end(key)
  return fn


def training_view(model: Any) -> Any:
  """`model` as the train step runs it: without the tubelet head's flip test, an inference
  option (a mean teacher's targets stay its own outputs on the flipped clip, as CSD's)."""
  if getattr(model, 'tubelet_flip_test', False):
    return model.clone(tubelet_flip_test=False)
  return model


def init_variables(model: Any, config: ml_collections.ConfigDict, rng: jax.Array) -> dict[str, Any]:
  """Host (numpy) variables of a freshly initialized model (its `training_view`: the flip
  test adds no variables, only a second pass to trace)."""
  model = training_view(model)
  d = config.data
  dummy = jnp.zeros((2, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8)
  init = _cached_jit(
    ('init', repr(model)), lambda: jax.jit(functools.partial(model.init, train=False))
  )
  variables = init(rng, dummy)
  return jax.tree.map(np.asarray, jax.device_get(dict(variables)))


def create_train_state(
  config: ml_collections.ConfigDict, model: Any, mesh: Any, init_from: str | None = None
) -> TrainState:
  """A replicated TrainState: fresh init, or merged with `init_from` variables."""
  # Initializers draw from an 'rbg' key: XLA compiles RngBitGenerator far faster than
  # threefry on CPU, and init runs on one local device, so every process gets the same.
  # A missing init_from is reported before the (slow, for big models) initialization.
  pretrained = initial_weights.load_init_variables(init_from) if init_from else None
  variables = init_variables(model, config, jax.random.key(config.seed, impl='rbg'))
  if init_from:
    variables, report = models.merge_pretrained(variables, pretrained)
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
    logging.info('Initialized from %s: %s', init_from, report)
  tx = make_optimizer(config.optimizer)
  params = variables['params']
  batch_stats = variables.get('batch_stats', {})
  opt_state = {name: tx.init(part) for name, part in split_params(params).items()}
  teacher = None
  if teacher_ema(config.loss) > 0:  # The teacher starts as a copy of the student.
    teacher = jax.tree.map(np.array, {'params': params, 'batch_stats': batch_stats})
  state = TrainState(
    step=np.zeros((), np.int32),
    params=params,
    batch_stats=batch_stats,
    opt_state=jax.device_get(opt_state),
    teacher=teacher,
  )
  return distributed.replicate(state, mesh)


# -------------------------------------------------------------------------------- step


def teacher_ema(loss_config: ml_collections.ConfigDict) -> float:
  """The mean teacher's EMA decay (0: no teacher; configs saved before it had none)."""
  return float(loss_config.get('teacher_ema', 0.0))


def forward_pair(
  model: Any,
  variables: Mapping[str, Any],
  clip: jax.Array,
  clip_flip: jax.Array | None,
  *,
  train: bool,
  freeze_backbone: bool,
) -> tuple[dict[str, jax.Array], dict[str, jax.Array], Any]:
  """One forward pass over clips and flipped clips interleaved on the batch axis.

  Interleaving (row 2i = clip i, row 2i+1 = its flip) keeps each pair on the device that
  holds clip i, so the concatenation needs no cross-device traffic. Without `clip_flip`
  the flip (width reversed) is made here, on the device.
  """
  b = clip.shape[0]
  if clip_flip is None:
    clip_flip = clip[:, :, :, ::-1]
  x = jnp.stack([clip, clip_flip], axis=1).reshape((2 * b,) + clip.shape[1:])
  if train:
    out, updates = model.apply(
      variables, x, train=True, freeze_backbone=freeze_backbone, mutable=['batch_stats']
    )
    new_batch_stats = updates['batch_stats']
  else:
    out, new_batch_stats = model.apply(variables, x, train=False), None
  pairs = {k: v.reshape((b, 2) + v.shape[1:]) for k, v in out.items()}
  return (
    {k: v[:, 0] for k, v in pairs.items()},
    {k: v[:, 1] for k, v in pairs.items()},
    new_batch_stats,
  )


def focal_gamma(loss_config: ml_collections.ConfigDict) -> float:
  """The dense head's focal loss gamma (configs saved before it existed: 2)."""
  return float(loss_config.get('focal_gamma', 2.0))


def loss_terms(
  out: Mapping[str, jax.Array],
  out_flip: Mapping[str, jax.Array],
  batch: Batch,
  con_cls: str,
  gamma: float = 2.0,
) -> dict[str, jax.Array]:
  """The loss terms, each a scalar: cls, loc, con_cls, con_loc, or for the tubelet head
  cls, con_cls and the five (six with presence) of `tubelet_losses.tubelet_loss_terms`
  (focal `gamma`).

  `cls` is the mean over the clips with their labels (`has_label`; all when the batch
  has no such key), `loc` the mean over the clips with a box (`has_box`); a clip without
  either adds exactly nothing to them, value or gradient. The consistency terms are
  means over every clip of the global batch. The tubelet head has no `loc`/`con_loc`:
  its `boxes` output is read off the dense map, which the dense box terms train.
  """
  logits = out['logits'].astype(jnp.float32)
  has_label = batch.get('has_label')
  labels = batch['label'] if has_label is None else jnp.where(has_label, batch['label'], 0)
  terms = {
    'cls': losses.softmax_cross_entropy(logits, labels, has_label),
    'con_cls': jnp.mean(
      losses.classification_consistency(
        logits, out_flip['logits'].astype(jnp.float32), kind=con_cls
      )
    ),
  }
  if tubelet_losses.TUBELET_LOGITS in out:
    terms.update(tubelet_losses.tubelet_loss_terms(out, out_flip, batch, gamma))
    return terms
  pred_boxes = out['boxes'].astype(jnp.float32)
  terms['loc'] = losses.box_mse(pred_boxes, batch['box'], batch['has_box'])
  terms['con_loc'] = jnp.mean(
    losses.box_consistency(pred_boxes, out_flip['boxes'].astype(jnp.float32))
  )
  return terms


def loss_shares(
  terms: Mapping[str, jax.Array], weights: Mapping[str, Any], loss: jax.Array
) -> dict[str, jax.Array]:
  """{'share_<t>': weight * term / loss} for each consistency term t (0 when loss is 0)."""
  denominator = jnp.maximum(loss, 1e-12)
  return {
    f'share_{t}': jnp.asarray(weights[t], jnp.float32) * terms[t] / denominator
    for t in schema.CONSISTENCY_TERMS
    if t in terms
  }


def train_step(
  state: TrainState,
  batch: Batch,
  *,
  model: Any,
  tx: optax.GradientTransformation,
  lr_fn: optax.Schedule,
  stage: Stage,
  loss_config: ml_collections.ConfigDict,
  num_steps: int,
  grad_clip_norm: float,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; pure, jit it with `make_train_step`.

  With a teacher (`state.teacher` set, decay `loss_config.teacher_ema`) the student sees
  only the clip, the consistency targets are the teacher's outputs on the flipped clip
  (inference mode, no gradient), and the teacher then moves to the EMA of the updated
  student's parameters and BatchNorm statistics.
  """
  weights = dict(stage.loss_weights)
  # The ramp restarts with each stage: protocol 2's second stage is protocol 1, whose
  # consistency weight ramps up from 0 (with one stage this is the global step).
  con_weight = losses.consistency_ramp(
    state.step - stage.start,
    loss_config.rampup_steps,
    num_steps - stage.start,
    loss_config.rampdown_steps,
  )
  term_weights = {
    t: con_weight * w if t in schema.CONSISTENCY_TERMS else w for t, w in weights.items()
  }
  parts = split_params(state.params)
  frozen = stage.freeze_backbone
  # With the backbone frozen only the box head is differentiated: the backbone and
  # classifier are constants of the loss, so XLA emits no backward pass through them.
  trained = (BOX_HEAD,) if frozen else (REST, BOX_HEAD)

  teacher = state.teacher
  target = None
  if teacher is not None:
    clip_flip = batch.get('clip_flip')
    if clip_flip is None:
      clip_flip = batch['clip'][:, :, :, ::-1]
    target = jax.lax.stop_gradient(model.apply(teacher, clip_flip, train=False))

  def loss_fn(trainable):
    variables = {'params': join_params({**parts, **trainable}), 'batch_stats': state.batch_stats}
    if target is None:
      out, out_flip, new_stats = forward_pair(
        model, variables, batch['clip'], batch.get('clip_flip'), train=True, freeze_backbone=frozen
      )
    else:
      out, updates = model.apply(
        variables, batch['clip'], train=True, freeze_backbone=frozen, mutable=['batch_stats']
      )
      out_flip, new_stats = target, updates['batch_stats']
    terms = loss_terms(out, out_flip, batch, loss_config.con_cls, focal_gamma(loss_config))
    return losses.total_loss(terms, term_weights), (terms, out, new_stats)

  (loss, (terms, out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
    {name: parts[name] for name in trained}
  )
  grad_norm = optax.global_norm(grads)
  if grad_clip_norm > 0:
    scale = jnp.minimum(1.0, grad_clip_norm / jnp.maximum(grad_norm, 1e-12))
    grads = jax.tree.map(lambda g: g * scale, grads)
  lr = lr_fn(state.step)
  new_parts, opt_state = dict(parts), dict(state.opt_state)
  for name in trained:
    updates, opt_state[name] = tx.update(grads[name], state.opt_state[name], parts[name])
    new_parts[name] = optax.apply_updates(parts[name], jax.tree.map(lambda u: -lr * u, updates))
  # Frozen BatchNorm: its statistics stay untouched.
  batch_stats = state.batch_stats if frozen else new_stats

  has_box = batch['has_box']
  num_boxes = jnp.sum(has_box.astype(jnp.float32))
  has_label = batch.get('has_label')
  if has_label is None:
    has_label = jnp.ones(batch['label'].shape, bool)
  num_labeled = jnp.sum(has_label.astype(jnp.float32))
  correct = (jnp.argmax(out['logits'], -1) == batch['label']) & has_label
  iou = boxes.iou_xywh(out['boxes'].astype(jnp.float32), batch['box'], xp=jnp)
  metrics = {
    'loss': loss,
    **terms,
    # Each consistency term's weighted share of the total loss.
    **loss_shares(terms, term_weights, loss),
    'con_weight': con_weight,
    'lr': jnp.asarray(lr, jnp.float32),
    'grad_norm': grad_norm,
    # Over the clips with their labels (0 when the batch has none).
    'accuracy': jnp.sum(correct.astype(jnp.float32)) / jnp.maximum(num_labeled, 1.0),
    'iou': jnp.sum(jnp.where(has_box, iou, 0.0)) / jnp.maximum(num_boxes, 1.0),
    'labeled': num_boxes,
    'labeled_videos': num_labeled / has_label.shape[0],  # Share of clips with labels.
  }
  new_params = join_params(new_parts)
  if teacher is not None:
    student = {'params': new_params, 'batch_stats': batch_stats}
    teacher = teacher_lib.ema_update(teacher, student, teacher_ema(loss_config))
  new_state = state.replace(
    step=state.step + 1,
    params=new_params,
    batch_stats=batch_stats,
    opt_state=opt_state,
    teacher=teacher,
  )
  return new_state, metrics


def make_train_step(
  config: ml_collections.ConfigDict, model: Any, mesh: Any, stage: Stage
) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` for one stage, jitted: batch on 'data', state replicated and donated; the
  model's `training_view`.

  The same (model, optimizer, loss, steps, stage, mesh) in one process gets the same jitted
  function back (`_cached_jit`).
  """
  model = training_view(model)

  def build() -> Callable:
    fn = functools.partial(
      train_step,
      model=model,
      tx=make_optimizer(config.optimizer),
      lr_fn=make_lr_schedule(config.optimizer, config.train.num_steps),
      stage=stage,
      loss_config=config.loss,
      num_steps=config.train.num_steps,
      grad_clip_norm=float(config.optimizer.grad_clip_norm),
    )
    repl = distributed.replicated(mesh)
    return jax.jit(
      fn,
      in_shardings=(repl, distributed.batch_sharding(mesh)),
      out_shardings=(repl, repl),
      donate_argnums=(0,),
    )

  key = (
    'train_step',
    repr(model),
    config.optimizer.to_json(sort_keys=True),
    config.loss.to_json(sort_keys=True),
    int(config.train.num_steps),
    stage,
    mesh,
  )
  return _cached_jit(key, build)
