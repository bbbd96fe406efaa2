"""Converted 3D-ResNets-PyTorch weights: saving and loading them, merging into a Detector.

A converted checkpoint (written by `tools/convert_torch_weights.py`, whose torch-free
key mapping is `stconsist_jax.models.torch_mapping`) is a directory, local or a bucket
URL such as gs://bucket/weights (through etils.epath):

  DIR/metadata.json   format, architecture, normalization, num_classes, generation, ...
  DIR/variables/      orbax checkpoint of {'params': {'backbone', ['classifier']},
                      'batch_stats': {'backbone'}}

metadata.json is written last and marks DIR finished (an object store has no rename):
a DIR without it is an unfinished conversion, refused by readers and replaced by the
next conversion to the same place.
"""

import dataclasses
import json
import os
from typing import Any
from collections.abc import Mapping

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from stconsist_jax.core import errors
from stconsist_jax.core import fileio
from stconsist_jax.models import detector
from stconsist_jax.models import param_trees

FORMAT = 'stconsist_jax.pretrained/1'
METADATA_FILE = 'metadata.json'
VARIABLES_DIR = 'variables'


class ConversionError(errors.UserError, ValueError):
  """A checkpoint that cannot be converted; the message is one readable paragraph."""


# --------------------------------------------------------------------- save/load


def is_finished(directory: str | os.PathLike) -> bool:
  """Whether `directory` holds a finished conversion (metadata.json is written last)."""
  return (fileio.as_path(directory) / METADATA_FILE).exists()


def _is_leftover(directory: epath.Path) -> bool:
  """An unfinished conversion: only variables/ (or orbax's temporary folders of it)."""
  return all(p.name.startswith(VARIABLES_DIR) for p in directory.iterdir())


def check_output_dir(output_dir: str | os.PathLike) -> None:
  """Refuses an output that is finished or holds anything but an unfinished conversion."""
  directory = fileio.as_path(output_dir)
  if is_finished(directory):
    raise ConversionError(
      f'The output directory {output_dir} already holds a converted '
      'checkpoint; remove it or choose another --output.'
    )
  if directory.exists() and not _is_leftover(directory):
    raise ConversionError(
      f'The output directory {output_dir} already exists and is not a '
      'converted checkpoint; remove it or choose another --output.'
    )


def save_converted(
  output_dir: str | os.PathLike, variables: Mapping[str, Any], metadata: Mapping[str, Any]
) -> None:
  """Writes DIR (local or a bucket URL): variables/ first, metadata.json last.

  metadata.json marks the directory finished, so a crash in between leaves a directory
  that readers refuse and that the next conversion to the same place replaces (with a
  warning). A finished output, or a directory holding anything else, is refused. An
  error while writing removes what was written.
  """
  check_output_dir(output_dir)
  directory = fileio.absolute(output_dir)
  if directory.exists() and any(directory.iterdir()):
    logging.warning(
      'Replacing the unfinished conversion in %s (no %s: an earlier '
      'conversion stopped before the end)',
      output_dir,
      METADATA_FILE,
    )
    directory.rmtree()
  try:
    directory.mkdir(parents=True, exist_ok=True)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(directory / VARIABLES_DIR, dict(variables))
    checkpointer.wait_until_finished()
    _write_metadata(directory, metadata)
  except Exception:
    if directory.exists() and not is_finished(directory):
      directory.rmtree()
    raise


def _write_metadata(directory: epath.Path, metadata: Mapping[str, Any]) -> None:
  """The commit marker of a conversion: written whole, after everything else."""
  fileio.atomic_write(
    directory / METADATA_FILE, json.dumps(dict(metadata, format=FORMAT), indent=2, sort_keys=True)
  )


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """metadata.json of a converted checkpoint, with clear errors for anything else."""
  path = fileio.as_path(directory)
  if not path.exists():
    raise FileNotFoundError(
      f'Pretrained checkpoint directory {directory} does not exist; '
      'create it with tools/convert_torch_weights.py.'
    )
  has_variables = (path / VARIABLES_DIR).exists()
  if not is_finished(path):
    if has_variables:
      raise ConversionError(
        f'{directory} is an unfinished conversion (no {METADATA_FILE}: the '
        'converter stopped before the end); run '
        'tools/convert_torch_weights.py again to replace it.'
      )
    raise ConversionError(
      f'{directory} is not a converted checkpoint: it has no '
      f'{METADATA_FILE}. Create it with tools/convert_torch_weights.py.'
    )
  try:
    metadata = json.loads((path / METADATA_FILE).read_text())
  except (OSError, ValueError) as e:
    raise ConversionError(
      f'{directory} is not a converted checkpoint: cannot read '
      f'{METADATA_FILE} ({e}). Create it with tools/convert_torch_weights.py.'
    ) from None
  if not isinstance(metadata, dict) or metadata.get('format') != FORMAT or not has_variables:
    found = metadata.get('format') if isinstance(metadata, dict) else None
    raise ConversionError(
      f'{directory} is not a converted checkpoint of format {FORMAT} '
      f"(metadata format {found!r}, 'variables/' present: {has_variables})."
    )
  return metadata


def load_pretrained(
  directory: str | os.PathLike, dtype: Any = jnp.float32
) -> tuple[detector.VideoClassifier, dict[str, Any]]:
  """DIR (local or a bucket URL) -> (VideoClassifier, variables).

  `model.apply(variables, uint8_clip, train=False)` gives the PyTorch logits of the same
  clip normalized as the weights expect (the model applies that preset itself). For a
  checkpoint converted with --drop-classifier, `variables['params']` has no
  'classifier': use it through `merge_pretrained`.
  """
  metadata = read_metadata(directory)
  num_classes = metadata.get('num_classes') or 1
  model = detector.VideoClassifier(
    num_classes=int(num_classes),
    backbone_kwargs=dict(metadata['architecture']),
    normalization=metadata['normalization'],
    dtype=dtype,
  )
  restored = ocp.StandardCheckpointer().restore(fileio.absolute(directory) / VARIABLES_DIR)
  variables = jax.tree_util.tree_map(jnp.asarray, restored)
  return model, {'params': variables['params'], 'batch_stats': variables['batch_stats']}


# ------------------------------------------------------------------------- merge


@dataclasses.dataclass
class MergeReport:
  """What `merge_pretrained` copied."""

  backbone_tensors: int = 0
  classifier_copied: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    return '; '.join([f'copied {self.backbone_tensors} backbone tensors'] + self.notes)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def _subtree_shapes(variables: Mapping[str, Any], name: str) -> dict[str, tuple[int, ...]]:
  """`{'params/<name>/...': shape}` of the `name` subtree of params, then batch_stats."""
  shapes = {}
  for collection in ('params', 'batch_stats'):
    if name in variables.get(collection, {}):
      shapes.update(param_trees.flat_shapes({collection: {name: variables[collection][name]}}))
  return shapes


def merge_pretrained(
  target_variables: Mapping[str, Any], pretrained_variables: Mapping[str, Any]
) -> tuple[dict[str, Any], MergeReport]:
  """Copies pretrained backbone params and batch_stats (and a fitting classifier) into
  a Detector's variables.

  The backbone must match exactly; otherwise ParameterTreeMismatchError (a ValueError)
  names the missing, unexpected and mis-shaped keys with both shapes. The classifier is
  copied only when its shapes match; otherwise the fresh one stays and the report says
  so. Copied leaves take the target's dtype.
  """
  report = MergeReport()
  target_backbone = _subtree_shapes(target_variables, 'backbone')
  mismatch = param_trees.tree_mismatch(
    target_backbone,
    _subtree_shapes(pretrained_variables, 'backbone'),
    found_name='pretrained',
    expected_name='model',
  )
  if mismatch:
    raise param_trees.ParameterTreeMismatchError(
      f'Pretrained backbone does not match the model: {mismatch}.'
    )
  report.backbone_tensors = len(target_backbone)
  target_cls = _subtree_shapes(target_variables, 'classifier')
  source_cls = _subtree_shapes(pretrained_variables, 'classifier')
  copied = ('backbone',)
  if not source_cls:
    report.notes.append('the pretrained weights have no classifier; kept the fresh one')
  elif not param_trees.tree_mismatch(target_cls, source_cls):
    copied += ('classifier',)
    report.classifier_copied = True
    report.notes.append('copied the classifier')
  else:
    report.notes.append(
      f'classifier shapes differ (pretrained {source_cls} vs model '
      f'{target_cls}); kept the fresh classifier'
    )
  merged = {c: _flat(t) for c, t in target_variables.items()}
  for collection, tree in merged.items():
    for key, value in _flat(pretrained_variables.get(collection, {})).items():
      if key[0] in copied:
        tree[key] = jnp.asarray(value, dtype=tree[key].dtype)
  return {c: flax.traverse_util.unflatten_dict(t) for c, t in merged.items()}, report
