"""Consistency-based semi-supervised training: state, sharded train step, stages, loop.

One jit code path for 1..N devices and hosts: batch sharded on the mesh's 'data' axis,
state replicated and donated. The clip and its flipped copy share one forward pass.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import signal
import threading
import time
from typing import Any, Callable, Iterator, Mapping, Sequence

from absl import logging
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from stconsist_jax import checkpointing
from stconsist_jax import config_lib
from stconsist_jax import distributed
from stconsist_jax import fileio
from stconsist_jax import logging_utils
from stconsist_jax import losses
from stconsist_jax import workdir_lock

HEAD = 'box_head'  # The only part that trains under fix_weights.
LOSS_TERMS = config_lib.LOSS_TERMS

Batch = Mapping[str, Any]
BatchIterFn = Callable[[ml_collections.ConfigDict, int], Iterator[Batch]]
EvaluateFn = Callable[..., Mapping[str, float]]


@flax.struct.dataclass
class TrainState:
  """Everything a step reads and writes.

  `opt_state` is {'body': ..., 'head': ...}: one optimizer state for the backbone and
  classifier, one for the box head, so freezing the body leaves its state untouched
  and the structure is the same in every stage.
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


@dataclasses.dataclass(frozen=True)
class Stage:
  """A contiguous run of steps [start, end) with one freezing mode and loss weights."""
  start: int
  end: int
  fix_weights: bool
  loss_weights: tuple[tuple[str, float], ...]


class NonFiniteLossError(FloatingPointError):
  """A loss term became NaN/Inf; the run stopped without saving that state."""


class Preempted(Exception):
  """SIGTERM arrived; a checkpoint of the current step was saved."""

  def __init__(self, step: int):
    super().__init__(f'stopped by SIGTERM at step {step} after saving a checkpoint; '
                     f'rerun the same command to resume')
    self.step = step


# ----------------------------------------------------------------------------- params


def split_params(params: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
  """{'backbone','classifier','box_head'} -> (body, head) dicts."""
  body = {k: v for k, v in params.items() if k != HEAD}
  head = {k: v for k, v in params.items() if k == HEAD}
  return body, head


def merge_params(body: Mapping[str, Any], head: Mapping[str, Any]) -> dict[str, Any]:
  return {**body, **head}


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
        opt.lr, {int(b) - warmup: opt.decay_factor for b in opt.decay_steps})
  elif opt.schedule == 'cosine':
    main = optax.cosine_decay_schedule(opt.lr, max(num_steps - warmup, 1))
  else:
    raise ValueError(f'config key optimizer.schedule: unknown schedule {opt.schedule!r}')
  if warmup == 0:
    return main
  return optax.join_schedules(
      [optax.linear_schedule(0.0, opt.lr, warmup), main], [warmup])


# ------------------------------------------------------------------------------ stages


def resolve_stages(config: ml_collections.ConfigDict) -> list[Stage]:
  """config.train.stages (or the single-stage default) -> Stages covering all steps."""
  base = {t: float(config.loss[f'{t}_weight']) for t in LOSS_TERMS}
  specs = list(config.train.stages) or [
      {'num_steps': -1, 'fix_weights': config.train.fix_weights, 'loss_weights': {}}]
  stages, start = [], 0
  for spec in specs:
    n = spec['num_steps']
    end = config.train.num_steps if n == -1 else min(start + n, config.train.num_steps)
    weights = dict(base)
    weights.update({k: float(v) for k, v in dict(spec.get('loss_weights', {}) or {}).items()})
    stages.append(Stage(start, end, bool(spec.get('fix_weights', False)),
                        tuple(sorted(weights.items()))))
    start = end
  if start < config.train.num_steps:  # Steps after the listed stages: the last stage's mode.
    last = stages[-1]
    stages.append(Stage(start, config.train.num_steps, last.fix_weights, last.loss_weights))
  return [s for s in stages if s.end > s.start]


def stage_at(stages: Sequence[Stage], step: int) -> int:
  for i, s in enumerate(stages):
    if s.start <= step < s.end:
      return i
  return len(stages) - 1


# ------------------------------------------------------------------------------- state


def init_variables(model: Any, config: ml_collections.ConfigDict, rng: jax.Array
                   ) -> dict[str, Any]:
  """Host (numpy) variables of a freshly initialized model."""
  d = config.data
  dummy = jnp.zeros((2, d.num_frames, d.image_size, d.image_size, 3), jnp.uint8)
  variables = jax.jit(functools.partial(model.init, train=False))(rng, dummy)
  return jax.tree.map(np.asarray, jax.device_get(dict(variables)))


def create_train_state(config: ml_collections.ConfigDict, model: Any, mesh: Any,
                       init_from: str | None = None) -> TrainState:
  """A replicated TrainState: fresh init, or merged with `init_from` variables."""
  # Initializers draw from an 'rbg' key: XLA compiles RngBitGenerator far faster than
  # threefry on CPU, and init runs on one local device, so every process gets the same.
  # A missing init_from is reported before the (slow, for big models) initialization.
  pretrained = checkpointing.load_init_variables(init_from) if init_from else None
  variables = init_variables(model, config, jax.random.key(config.seed, impl='rbg'))
  state_rng = jax.random.PRNGKey(config.seed + 1)
  if init_from:
    from stconsist_jax import models  # pylint: disable=g-import-not-at-top
    variables, report = models.merge_pretrained(variables, pretrained)
    variables = jax.tree.map(np.asarray, jax.device_get(dict(variables)))
    logging.info('Initialized from %s: %s', init_from, report)
  tx = make_optimizer(config.optimizer)
  params = variables['params']
  body, head = split_params(params)
  opt_state = {'body': tx.init(body), 'head': tx.init(head)}
  state = TrainState(step=np.zeros((), np.int32), params=params,
                     batch_stats=variables.get('batch_stats', {}),
                     opt_state=jax.device_get(opt_state),
                     rng=np.asarray(jax.device_get(state_rng)))
  return distributed.replicate(state, mesh)


# -------------------------------------------------------------------------------- step


def box_iou_xywh(a: jax.Array, b: jax.Array) -> jax.Array:
  """IoU of (x_left, y_top, w, h) boxes, elementwise over the leading axis."""
  ax2, ay2 = a[:, 0] + a[:, 2], a[:, 1] + a[:, 3]
  bx2, by2 = b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
  iw = jnp.maximum(jnp.minimum(ax2, bx2) - jnp.maximum(a[:, 0], b[:, 0]), 0.0)
  ih = jnp.maximum(jnp.minimum(ay2, by2) - jnp.maximum(a[:, 1], b[:, 1]), 0.0)
  inter = iw * ih
  union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
  return inter / jnp.maximum(union, 1e-12)


def forward_pair(model: Any, variables: Mapping[str, Any], clip: jax.Array,
                 clip_flip: jax.Array | None, *, train: bool, freeze_backbone: bool
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
    out, updates = model.apply(variables, x, train=True, freeze_backbone=freeze_backbone,
                               mutable=['batch_stats'])
    new_batch_stats = updates['batch_stats']
  else:
    out, new_batch_stats = model.apply(variables, x, train=False), None
  pairs = {k: v.reshape((b, 2) + v.shape[1:]) for k, v in out.items()}
  return ({k: v[:, 0] for k, v in pairs.items()}, {k: v[:, 1] for k, v in pairs.items()},
          new_batch_stats)


def loss_terms(out: Mapping[str, jax.Array], out_flip: Mapping[str, jax.Array],
               batch: Batch, con_cls: str) -> dict[str, jax.Array]:
  """The four loss terms, each a scalar mean over the global batch."""
  logits = out['logits'].astype(jnp.float32)
  boxes = out['boxes'].astype(jnp.float32)
  return {
      'cls': losses.softmax_cross_entropy(logits, batch['label'], None),
      'loc': losses.box_mse(boxes, batch['box'], batch['has_box']),
      'con_cls': jnp.mean(losses.classification_consistency(
          logits, out_flip['logits'].astype(jnp.float32), kind=con_cls)),
      'con_loc': jnp.mean(losses.box_consistency(
          boxes, out_flip['boxes'].astype(jnp.float32))),
  }


def train_step(state: TrainState, batch: Batch, *, model: Any,
               tx: optax.GradientTransformation, lr_fn: optax.Schedule, stage: Stage,
               loss_config: ml_collections.ConfigDict, num_steps: int,
               grad_clip_norm: float) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a global batch; pure, jit it with `make_train_step`."""
  weights = dict(stage.loss_weights)
  # The ramp restarts with each stage: protocol 2's second stage is protocol 1, whose
  # consistency weight ramps up from 0 (with one stage this is the global step).
  w = losses.consistency_ramp(state.step - stage.start, loss_config.rampup_steps,
                              num_steps - stage.start, loss_config.rampdown_steps)
  term_weights = {'cls': weights['cls'], 'loc': weights['loc'],
                  'con_cls': w * weights['con_cls'], 'con_loc': w * weights['con_loc']}
  body, head = split_params(state.params)
  fix = stage.fix_weights

  def loss_fn(trainable):
    params = merge_params(body, trainable) if fix else trainable
    variables = {'params': params, 'batch_stats': state.batch_stats}
    out, out_flip, new_stats = forward_pair(model, variables, batch['clip'],
                                            batch.get('clip_flip'), train=True,
                                            freeze_backbone=fix)
    terms = loss_terms(out, out_flip, batch, loss_config.con_cls)
    return losses.total_loss(terms, term_weights), (terms, out, new_stats)

  # Under fix_weights only the head is differentiated: the backbone and classifier are
  # constants of the loss, so XLA emits no backward pass through them.
  trainable = head if fix else state.params
  (loss, (terms, out, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      trainable)
  grad_norm = optax.global_norm(grads)
  if grad_clip_norm > 0:
    scale = jnp.minimum(1.0, grad_clip_norm / jnp.maximum(grad_norm, 1e-12))
    grads = jax.tree.map(lambda g: g * scale, grads)
  lr = lr_fn(state.step)

  def apply(g, opt_state, p):
    updates, opt_state = tx.update(g, opt_state, p)
    return optax.apply_updates(p, jax.tree.map(lambda u: -lr * u, updates)), opt_state

  if fix:
    new_head, head_opt = apply(grads, state.opt_state['head'], head)
    params = merge_params(body, new_head)
    opt_state = {'body': state.opt_state['body'], 'head': head_opt}
    batch_stats = state.batch_stats  # Frozen BatchNorm: statistics untouched.
  else:
    g_body, g_head = split_params(grads)
    new_body, body_opt = apply(g_body, state.opt_state['body'], body)
    new_head, head_opt = apply(g_head, state.opt_state['head'], head)
    params = merge_params(new_body, new_head)
    opt_state = {'body': body_opt, 'head': head_opt}
    batch_stats = new_stats

  has_box = batch['has_box']
  num_boxes = jnp.sum(has_box.astype(jnp.float32))
  iou = box_iou_xywh(out['boxes'].astype(jnp.float32), batch['box'])
  metrics = {
      'loss': loss, **terms, 'w': w, 'lr': jnp.asarray(lr, jnp.float32),
      'grad_norm': grad_norm,
      'accuracy': jnp.mean((jnp.argmax(out['logits'], -1) == batch['label']
                            ).astype(jnp.float32)),
      'iou': jnp.sum(jnp.where(has_box, iou, 0.0)) / jnp.maximum(num_boxes, 1.0),
      'labeled': num_boxes,
  }
  new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                            opt_state=opt_state, rng=jax.random.split(state.rng)[0])
  return new_state, metrics


def make_train_step(config: ml_collections.ConfigDict, model: Any, mesh: Any, stage: Stage
                    ) -> Callable[[TrainState, Batch], tuple[TrainState, dict[str, jax.Array]]]:
  """`train_step` for one stage, jitted: batch on 'data', state replicated and donated."""
  fn = functools.partial(
      train_step, model=model, tx=make_optimizer(config.optimizer),
      lr_fn=make_lr_schedule(config.optimizer, config.train.num_steps), stage=stage,
      loss_config=config.loss, num_steps=config.train.num_steps,
      grad_clip_norm=float(config.optimizer.grad_clip_norm))
  repl = distributed.replicated(mesh)
  return jax.jit(fn, in_shardings=(repl, distributed.batch_sharding(mesh)),
                 out_shardings=(repl, repl), donate_argnums=(0,))


# -------------------------------------------------------------------------------- loop


def random_batch(config: ml_collections.ConfigDict, step: int) -> dict[str, np.ndarray]:
  """The global random batch of `step` (docs/DESIGN.md section 3 format).

  A pure function of (config.seed, step), for smoke tests and benchmarks without data:
  uniform pixels, random labels, about half the clips with a random box.
  """
  d, n = config.data, config.train.batch_size
  rng = np.random.default_rng([config.seed, step])
  clip = rng.integers(0, 256, (n, d.num_frames, d.image_size, d.image_size, 3), np.uint8)
  xy = rng.uniform(0.0, 0.5, (n, 2))
  wh = rng.uniform(0.1, 0.5, (n, 2))
  has_box = rng.random(n) < 0.5
  box = np.where(has_box[:, None], np.concatenate([xy, wh], 1), 0.0).astype(np.float32)
  box_flip = np.where(has_box[:, None], np.stack(
      [1.0 - box[:, 0] - box[:, 2], box[:, 1], box[:, 2], box[:, 3]], 1), 0.0)
  return {
      'clip': clip,
      'label': rng.integers(0, config.model.num_classes, n).astype(np.int32),
      'box': box, 'box_flip': box_flip.astype(np.float32), 'has_box': has_box,
      'tube_label': np.where(has_box, rng.integers(0, 24, n), -1).astype(np.int32),
  }


def host_rows(batch: Batch, process_index: int, process_count: int) -> dict[str, Any]:
  """This process's contiguous share of a global host batch."""
  n = len(next(iter(batch.values())))
  per = n // process_count
  return {k: v[process_index * per:(process_index + 1) * per] for k, v in batch.items()}


def random_batch_iter_fn(config: ml_collections.ConfigDict, start_step: int
                         ) -> Iterator[Batch]:
  """This process's rows of `random_batch` for start_step, start_step + 1, ..."""
  step = start_step
  while True:
    yield host_rows(random_batch(config, step), jax.process_index(), jax.process_count())
    step += 1


def default_batch_iter_fn(config: ml_collections.ConfigDict, start_step: int
                          ) -> Iterator[Batch]:
  """This host's training batches starting at `start_step`.

  data.name == 'random' uses `random_batch_iter_fn`; anything else the tf.data
  pipeline (imported here so that the step itself never imports TensorFlow).
  """
  if config.data.name == 'random':
    return random_batch_iter_fn(config, start_step)
  from stconsist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.train_iterator(config, start_step=start_step,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())


def _next_batch(batches: Iterator[Batch], config: ml_collections.ConfigDict,
                step: int) -> Batch:
  """The next host batch; an exhausted stream is a clear error, not a StopIteration."""
  try:
    return next(batches)
  except StopIteration:
    raise ValueError(
        f'the training data of process {jax.process_index()} ran out at step {step}: its '
        f'share of {config.data.name!r} holds no usable video for data.classes='
        f'{config.data.classes!r}, data.labeled_per_batch={config.data.labeled_per_batch}'
        f', or none of its files could be read (--verbose shows the reading errors)'
        ) from None


def check_num_classes(config: ml_collections.ConfigDict) -> None:
  """Fails before any compute when model.num_classes differs from the data's labels."""
  if config.data.name == 'random':
    return
  from stconsist_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  names = pipeline.label_names(config.data)
  if len(names) != config.model.num_classes:
    raise config_lib.ConfigError(
        f'config key model.num_classes={config.model.num_classes} differs from the '
        f'{len(names)} labels that data {config.data.name!r} yields with '
        f'data.classes={config.data.classes!r} (first: {names[:3]})')


class _SigtermFlag:
  """Records SIGTERM so a single-process loop can save and stop between steps.

  With several processes JAX's own preemption notifier watches SIGTERM instead.
  """

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if (jax.process_count() == 1
        and threading.current_thread() is threading.main_thread()):
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning('SIGTERM received: saving a checkpoint after the current step')
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _check_finite(records: Sequence[tuple[int, Mapping[str, Any]]], checkpointer: Any,
                  ) -> None:
  for step, metrics in records:
    bad = [k for k in ('loss',) + LOSS_TERMS if not np.isfinite(metrics[k])]
    if bad:
      checkpointer.wait()
      last = checkpointer.latest_step()
      values = ', '.join(f'{k}={float(metrics[k]):.6g}' for k in ('loss',) + LOSS_TERMS)
      raise NonFiniteLossError(
          f'non-finite loss at step {step} (terms: {", ".join(bad)}; {values}); '
          f'stopping. Last good checkpoint: '
          f'{"none" if last is None else f"step {last}"} in {checkpointer.workdir}')


def check_resume_config(config: ml_collections.ConfigDict, workdir: str,
                        allow_config_change: bool) -> None:
  """Refuses to resume a workdir whose saved config differs in what defines the run.

  Run length, logging, evaluation and data location may change on resume (logged). Any
  other difference (architecture, optimizer, losses, data, seed) is refused before
  anything is written, unless `allow_config_change`; then the old config is kept as
  `config.before-<time>.json` beside the new one.
  """
  path = fileio.as_path(workdir) / config_lib.CONFIG_FILENAME
  if not path.exists():
    return
  saved = config_lib.load(workdir)
  diffs = config_lib.config_differences(saved, config)
  if not diffs:
    return
  blocking = [d for d in diffs if not config_lib.is_resumable_change(d[0])]
  harmless = [d for d in diffs if config_lib.is_resumable_change(d[0])]
  if harmless:
    logging.info('Resuming %s with changed %s', workdir,
                 config_lib.describe_differences(harmless))
  if not blocking:
    return
  model_keys = [d for d in blocking if d[0].startswith('model.')]
  if model_keys or not allow_config_change:
    raise config_lib.ConfigError(
        f'workdir {workdir} holds a run with another config '
        f'({config_lib.describe_differences(blocking)}); resuming would mix two '
        f'experiments. Use a new --workdir' + (
            '' if model_keys else ', or pass --allow_config_change to continue this run '
            'with the new settings'))
  logging.warning('Continuing %s with changed %s (--allow_config_change)', workdir,
                  config_lib.describe_differences(blocking))
  if jax.process_index() == 0:
    backup = path.parent / f'config.before-{time.strftime("%Y%m%d-%H%M%S")}.json'
    fileio.atomic_write(backup, path.read_bytes())


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       batch_iter_fn: BatchIterFn | None = None,
                       evaluate_fn: EvaluateFn | None = None,
                       mesh: Any = None, allow_config_change: bool = False) -> TrainState:
  """Trains (resuming from `workdir` if it holds checkpoints); returns the final state.

  Args:
    config: a validated-here ConfigDict (configs/default.py documents the fields).
    workdir: checkpoints, config.json, metrics.jsonl and TensorBoard files; a local
      folder or a bucket URL (gs://...).
    batch_iter_fn: `(config, start_step) -> iterator` of this host's numpy batches
      (docs/DESIGN.md section 3); a pure function of (seed, step). Default: the tf.data
      pipeline.
    evaluate_fn: `(config, variables, step, mesh) -> {metric: float}`, called every
      `train.eval_every` steps and at the end; the evaluated step is saved with its
      metrics, which makes it a candidate for the 'best' checkpoint.
    mesh: device mesh (default: all devices).
    allow_config_change: resume even if the saved config differs beyond run length,
      logging and evaluation (never for another architecture).

  Raises:
    NonFiniteLossError: a loss became NaN/Inf (no checkpoint of it is written).
    Preempted: SIGTERM arrived; the current step was checkpointed.
    WorkdirLockedError: another live run holds the workdir.
  """
  mesh = distributed.make_mesh() if mesh is None else mesh
  config_lib.validate(config, num_devices=mesh.devices.size,
                      num_processes=jax.process_count())
  if batch_iter_fn is None:
    check_num_classes(config)
  ckpt_dir = fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR
  if config.init_from and not checkpointing.committed_steps(ckpt_dir):
    checkpointing.check_init_from(config.init_from)
  # Process 0 holds the workdir for the whole run: a second run on it is refused. All
  # processes learn the outcome, or the others would wait for process 0 forever.
  lock, refused = None, None
  if jax.process_index() == 0:
    lock = workdir_lock.WorkdirLock(workdir)
    try:
      lock.acquire()
    except workdir_lock.WorkdirLockedError as e:
      lock, refused = None, e
  if distributed.any_process(refused is not None):
    raise refused or workdir_lock.WorkdirLockedError(
        f'workdir {workdir} is in use by another run (reported by process 0)')
  try:
    return _train(config, workdir, batch_iter_fn, evaluate_fn, mesh, allow_config_change)
  finally:
    if lock is not None:
      lock.release()


def _train(config: ml_collections.ConfigDict, workdir: str,
           batch_iter_fn: BatchIterFn | None, evaluate_fn: EvaluateFn | None, mesh: Any,
           allow_config_change: bool) -> TrainState:
  """The body of `train_and_evaluate`, run while the workdir lock is held."""
  from stconsist_jax import models  # pylint: disable=g-import-not-at-top
  model = models.build_model(config.model)
  stages = resolve_stages(config)
  num_steps = config.train.num_steps
  is_main = jax.process_index() == 0
  if checkpointing.committed_steps(fileio.as_path(workdir) / checkpointing.CHECKPOINT_DIR):
    check_resume_config(config, workdir, allow_config_change)
  checkpointer = checkpointing.Checkpointer(
      workdir, keep=config.train.keep_checkpoints, best_metric=config.eval.best_metric,
      best_mode=config.eval.best_mode)
  latest = checkpointer.latest_step()
  if is_main:
    config_lib.save(config, workdir)
  state = create_train_state(config, model, mesh,
                             init_from=None if latest is not None else config.init_from)
  if latest is not None:
    state = checkpointer.restore(state)
    logging.info('Resumed from checkpoint step %d in %s', int(jax.device_get(state.step)),
                 workdir)
  start = int(jax.device_get(state.step))
  batch_iter_fn = batch_iter_fn or default_batch_iter_fn
  batches = batch_iter_fn(config, start)
  # Bounded: the prefetcher must not read batches past the last step.
  device_batches = distributed.prefetch_to_mesh(
      itertools.islice(batches, num_steps - start), mesh, config.data.device_prefetch)
  logger = logging_utils.MetricLogger(workdir, total_steps=num_steps, start_step=start,
                                      batch_size=config.train.batch_size, enabled=is_main)
  profiler = logging_utils.StepProfiler(workdir, *config.train.profile_steps,
                                        enabled=is_main)
  step_fns: dict[int, Callable] = {}
  pending: list[tuple[int, Any]] = []
  every = config.train.checkpoint_every

  def flush():
    records = [(s, jax.device_get(m)) for s, m in pending]
    pending.clear()
    _check_finite(records, checkpointer)
    logger.write_steps(records)

  try:
    with _SigtermFlag() as sigterm:
      for step in range(start, num_steps):
        index = stage_at(stages, step)
        if index not in step_fns:
          logging.info('Stage %d: steps [%d, %d), fix_weights=%s, loss weights %s', index,
                       stages[index].start, stages[index].end, stages[index].fix_weights,
                       dict(stages[index].loss_weights))
          step_fns[index] = make_train_step(config, model, mesh, stages[index])
        profiler.before_step(step)
        with logger.timed('input'):
          batch = _next_batch(device_batches, config, step)
        state, metrics = step_fns[index](state, batch)
        profiler.after_step(step, metrics)
        done = step + 1
        pending.append((done, metrics))
        # Read once: a signal arriving later is seen next step. All hosts must agree, or
        # those that stop would wait forever in the save's barriers for the others: on
        # several processes JAX's preemption service decides for all of them.
        stop = (checkpointer.reached_preemption(done) if jax.process_count() > 1
                else sigterm.received)
        save_now = (every and done % every == 0) or done == num_steps or stop
        eval_now = evaluate_fn is not None and (
            (config.train.eval_every and done % config.train.eval_every == 0)
            or done == num_steps)
        if save_now or eval_now or done % config.train.log_every == 0:
          flush()
        if done % config.train.log_every == 0 or done == num_steps:
          logger.write_interval(done)
        eval_metrics = None
        if eval_now:
          variables = {'params': state.params, 'batch_stats': state.batch_stats}
          eval_metrics = evaluate_fn(config, variables, done, mesh)
          logger.write_eval(done, eval_metrics)
        if save_now or eval_now:  # An evaluated step is kept while it is the best.
          logger.flush()
          checkpointer.save(done, state, metrics=eval_metrics)
          if eval_now and checkpointer.best_step() == done:
            logging.info('New best %s=%.4f at step %d', config.eval.best_metric,
                         float(eval_metrics[config.eval.best_metric]), done)
        if stop and done < num_steps:
          checkpointer.wait()
          raise Preempted(done)
      if pending:
        flush()
  finally:
    profiler.stop()
    checkpointer.wait()
    checkpointer.close()
    logger.close()
  return state
