"""Converted 3D-ResNets-PyTorch weights: the torch-free half of the converter, and loading.

Maps PyTorch state_dict keys to the Flax tree, checks fit, saves/loads orbax checkpoints
(a local directory or a bucket URL such as gs://bucket/weights, through etils.epath).

`tools/convert_torch_weights.py` reads the `.pth` file with torch and hands plain numpy
arrays to the functions here; nothing in this module imports torch. A converted checkpoint
is a directory:

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
import re
from typing import Any, Mapping

from absl import logging
from etils import epath
import flax
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from stconsist_jax import fileio
from stconsist_jax.models import detector
from stconsist_jax.models import resnet3d

FORMAT = "stconsist_jax.pretrained/1"
METADATA_FILE = "metadata.json"
VARIABLES_DIR = "variables"
GENERATION_NORMALIZATION = {"2017": "activitynet_0_255", "2020": "kinetics",
                            "unknown": "kinetics"}
_BN_TORCH_TO_FLAX = {"weight": ("params", "scale"), "bias": ("params", "bias"),
                     "running_mean": ("batch_stats", "mean"),
                     "running_var": ("batch_stats", "var")}
_BN_FLAX_TO_TORCH = {v: k for k, v in _BN_TORCH_TO_FLAX.items()}


class ConversionError(ValueError):
  """A checkpoint that cannot be converted; the message is one readable paragraph."""


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What a state_dict says about its network."""

  depth: int
  block: str
  shortcut_type: str
  widen_factor: float
  conv1_t_size: int
  num_classes: int | None  # None when the state_dict has no `fc`.

  def backbone_kwargs(self, conv1_t_stride: int = 1,
                      no_max_pool: bool = False) -> dict[str, Any]:
    return dict(depth=self.depth, shortcut_type=self.shortcut_type,
                widen_factor=self.widen_factor, conv1_t_size=self.conv1_t_size,
                conv1_t_stride=conv1_t_stride, no_max_pool=no_max_pool)


# ----------------------------------------------------------------------------- keys


def clean_state_dict(state: Mapping[str, Any]) -> tuple[dict[str, Any], bool, bool]:
  """Strips `module.` prefixes (even repeated) and drops `num_batches_tracked`.

  Returns (clean dict, had a `module.` prefix, had `num_batches_tracked`).
  """
  clean, had_prefix, had_nbt = {}, False, False
  for key, value in state.items():
    while key.startswith("module."):
      key = key[len("module."):]
      had_prefix = True
    if key.endswith("num_batches_tracked"):
      had_nbt = True
      continue
    clean[key] = value
  return clean, had_prefix, had_nbt


_LAYER_KEY = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")


def torch_key_to_flax(key: str) -> tuple[str, tuple[str, ...]]:
  """'layer2.0.downsample.1.running_mean' -> ('batch_stats', ('backbone', 'layer2_0',
  'downsample_bn', 'mean')). Raises KeyError for a key outside the family."""
  if key in ("fc.weight", "fc.bias"):
    return "params", ("classifier", "kernel" if key.endswith("weight") else "bias")
  prefix: tuple[str, ...] = ("backbone",)
  rest = key
  match = _LAYER_KEY.match(key)
  if match:
    prefix += (f"layer{match.group(1)}_{match.group(2)}",)
    rest = match.group(3)
    rest = rest.replace("downsample.0.", "downsample_conv.").replace(
        "downsample.1.", "downsample_bn.")
  module, _, leaf = rest.rpartition(".")
  if re.fullmatch(r"(downsample_)?conv\d?", module) and leaf == "weight":
    return "params", prefix + (module, "kernel")
  if re.fullmatch(r"(downsample_)?bn\d?", module) and leaf in _BN_TORCH_TO_FLAX:
    collection, name = _BN_TORCH_TO_FLAX[leaf]
    return collection, prefix + (module, name)
  raise KeyError(key)


def flax_path_to_torch(collection: str, path: tuple[str, ...]) -> str:
  """Inverse of `torch_key_to_flax`."""
  if path[0] == "classifier":
    return "fc.weight" if path[1] == "kernel" else "fc.bias"
  parts = list(path[1:])
  leaf = parts.pop()
  parts = [re.sub(r"^layer(\d)_(\d+)$", r"layer\1.\2", p) for p in parts]
  parts = [{"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(p, p)
           for p in parts]
  torch_leaf = "weight" if leaf == "kernel" else _BN_FLAX_TO_TORCH[(collection, leaf)]
  return ".".join(parts + [torch_leaf])


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """Conv (T, H, W, I, O) -> (O, I, T, H, W); Dense (in, out) -> (out, in); else same."""
  if len(flax_shape) == 5:
    t, h, w, i, o = flax_shape
    return (o, i, t, h, w)
  if len(flax_shape) == 2:
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def to_flax_array(array: np.ndarray) -> np.ndarray:
  if array.ndim == 5:
    return np.ascontiguousarray(np.transpose(array, (2, 3, 4, 1, 0)))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return np.asarray(array)


def to_torch_array(array: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax_array` (for exporting, and for tests)."""
  if array.ndim == 5:
    return np.ascontiguousarray(np.transpose(array, (4, 3, 0, 1, 2)))
  if array.ndim == 2:
    return np.ascontiguousarray(array.T)
  return np.asarray(array)


# ------------------------------------------------------------------ architecture


def _found(shapes: Mapping[str, tuple[int, ...]]) -> str:
  blocks = block_counts(shapes)
  return f"blocks per stage found: {blocks}" if any(blocks) else "no layerN.i.* keys found"


def block_counts(shapes: Mapping[str, Any]) -> list[int]:
  counts = [0, 0, 0, 0]
  for key in shapes:
    match = _LAYER_KEY.match(key)
    if match:
      stage, index = int(match.group(1)) - 1, int(match.group(2))
      counts[stage] = max(counts[stage], index + 1)
  return counts


def detect_architecture(shapes: Mapping[str, tuple[int, ...]]) -> Architecture:
  """Reads depth, block type, shortcut, widen factor, conv1_t_size and classes off shapes."""
  if "conv1.weight" not in shapes:
    sample = ", ".join(sorted(shapes)[:5]) or "none"
    raise ConversionError(
        "This is not a 3D-ResNets-PyTorch state_dict: there is no 'conv1.weight' tensor "
        f"(first keys: {sample}).")
  conv1 = tuple(shapes["conv1.weight"])
  if len(conv1) != 5:
    raise ConversionError(f"'conv1.weight' has shape {conv1}, expected a Conv3d weight "
                          "(out, in, t, 7, 7): this is not a 3D ResNet.")
  block = "bottleneck" if "layer1.0.conv3.weight" in shapes else "basic"
  counts = tuple(block_counts(shapes))
  depth = next((d for d, (b, layers) in resnet3d.DEPTHS.items()
                if b == block and layers == counts), None)
  if depth is None:
    known = ", ".join(f"{d}: {b} {list(l)}" for d, (b, l) in resnet3d.DEPTHS.items())
    raise ConversionError(
        f"The state_dict has {block} blocks with {list(counts)} blocks per stage, which is "
        f"no depth of the 3D-ResNets-PyTorch family ({known}); the file is incomplete or "
        "from another model.")
  shortcut = "B" if any(".downsample." in k for k in shapes) else "A"
  widen = conv1[0] / 64
  fc = shapes.get("fc.weight")
  return Architecture(depth=depth, block=block, shortcut_type=shortcut, widen_factor=widen,
                      conv1_t_size=int(conv1[2]),
                      num_classes=int(fc[0]) if fc is not None else None)


def generation_of(had_prefix: bool, had_nbt: bool, shortcut_type: str) -> str:
  """'2017' (module. prefix, no num_batches_tracked, shortcut A), '2020' or 'unknown'."""
  if had_prefix and not had_nbt and shortcut_type == "A":
    return "2017"
  if had_nbt:
    return "2020"
  return "unknown"


def expected_shapes(backbone_kwargs: Mapping[str, Any],
                    num_classes: int | None) -> dict[str, tuple[int, ...]]:
  """torch key -> torch shape of every tensor the Flax model needs."""
  model = detector.VideoClassifier(num_classes=num_classes or 1,
                                   backbone_kwargs=dict(backbone_kwargs))
  clip = jax.ShapeDtypeStruct((1, 8, 32, 32, 3), jnp.uint8)
  abstract = jax.eval_shape(lambda c: model.init(jax.random.key(0), c, train=False), clip)
  out = {}
  for collection, tree in flax.core.unfreeze(abstract).items():
    for path, leaf in flax.traverse_util.flatten_dict(tree).items():
      if num_classes is None and path[0] == "classifier":
        continue
      out[flax_path_to_torch(collection, path)] = torch_shape(tuple(leaf.shape))
  return out


def check_fit(shapes: Mapping[str, tuple[int, ...]],
              expected: Mapping[str, tuple[int, ...]], what: str) -> None:
  """Raises ConversionError listing missing, unexpected and mis-shaped keys."""
  missing = sorted(set(expected) - set(shapes))
  unexpected = sorted(set(shapes) - set(expected))
  misshaped = sorted(k for k in set(shapes) & set(expected)
                     if tuple(shapes[k]) != tuple(expected[k]))
  if not (missing or unexpected or misshaped):
    return

  def listing(keys, fmt=str, limit=8):
    shown = ", ".join(fmt(k) for k in keys[:limit])
    return shown + (f" and {len(keys) - limit} more" if len(keys) > limit else "")

  def modules(keys):  # 'layer1.2.bn1.weight', 'layer1.2.bn1.bias' -> 'layer1.2.bn1.*'
    return sorted({k.rpartition(".")[0] + ".*" if "." in k else k for k in keys})

  parts = []
  if missing:
    parts.append(f"{len(missing)} missing ({listing(modules(missing))})")
  if unexpected:
    parts.append(f"{len(unexpected)} unexpected ({listing(modules(unexpected))})")
  if misshaped:
    parts.append(f"{len(misshaped)} mis-shaped (" + listing(
        misshaped, lambda k: f"{k}: file {tuple(shapes[k])} vs model {tuple(expected[k])}")
                 + ")")
  raise ConversionError(
      f"The checkpoint does not fit {what}: " + "; ".join(parts) +
      ". Nothing was written; check --depth/--shortcut or the file.")


def state_dict_to_variables(state: Mapping[str, np.ndarray],
                            drop_classifier: bool) -> dict[str, Any]:
  """Clean, already checked torch arrays -> {'params': ..., 'batch_stats': ...} (numpy)."""
  variables: dict[str, dict[tuple[str, ...], np.ndarray]] = {"params": {}, "batch_stats": {}}
  for key, value in state.items():
    collection, path = torch_key_to_flax(key)
    if drop_classifier and path[0] == "classifier":
      continue
    variables[collection][path] = to_flax_array(np.asarray(value, np.float32))
  return {c: flax.traverse_util.unflatten_dict(v) for c, v in variables.items()}


# --------------------------------------------------------------------- save/load


def _directory(path: str | os.PathLike) -> epath.Path:
  """`path` as an epath.Path; a local one made absolute (orbax needs that)."""
  if fileio.is_remote(path):
    return fileio.as_path(path)
  return fileio.as_path(os.path.abspath(os.fspath(path)))


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
    raise ConversionError(f"The output directory {output_dir} already holds a converted "
                          "checkpoint; remove it or choose another --output.")
  if directory.exists() and not _is_leftover(directory):
    raise ConversionError(f"The output directory {output_dir} already exists and is not a "
                          "converted checkpoint; remove it or choose another --output.")


def save_converted(output_dir: str | os.PathLike, variables: Mapping[str, Any],
                   metadata: Mapping[str, Any]) -> None:
  """Writes DIR (local or a bucket URL): variables/ first, metadata.json last.

  metadata.json marks the directory finished, so a crash in between leaves a directory
  that readers refuse and that the next conversion to the same place replaces (with a
  warning). A finished output, or a directory holding anything else, is refused. An
  error while writing removes what was written.
  """
  check_output_dir(output_dir)
  directory = _directory(output_dir)
  if directory.exists() and any(directory.iterdir()):
    logging.warning("Replacing the unfinished conversion in %s (no %s: an earlier "
                    "conversion stopped before the end)", output_dir, METADATA_FILE)
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
  fileio.atomic_write(directory / METADATA_FILE,
                      json.dumps(dict(metadata, format=FORMAT), indent=2, sort_keys=True))


def read_metadata(directory: str | os.PathLike) -> dict[str, Any]:
  """metadata.json of a converted checkpoint, with clear errors for anything else."""
  path = fileio.as_path(directory)
  if not path.exists():
    raise FileNotFoundError(f"Pretrained checkpoint directory {directory} does not exist; "
                            "create it with tools/convert_torch_weights.py.")
  has_variables = (path / VARIABLES_DIR).exists()
  if not is_finished(path):
    if has_variables:
      raise ValueError(f"{directory} is an unfinished conversion (no {METADATA_FILE}: the "
                       "converter stopped before the end); run "
                       "tools/convert_torch_weights.py again to replace it.")
    raise ValueError(f"{directory} is not a converted checkpoint: it has no "
                     f"{METADATA_FILE}. Create it with tools/convert_torch_weights.py.")
  try:
    metadata = json.loads((path / METADATA_FILE).read_text())
  except (OSError, ValueError) as e:
    raise ValueError(f"{directory} is not a converted checkpoint: cannot read "
                     f"{METADATA_FILE} ({e}). Create it with tools/convert_torch_weights.py."
                     ) from None
  if not isinstance(metadata, dict) or metadata.get("format") != FORMAT or not has_variables:
    found = metadata.get("format") if isinstance(metadata, dict) else None
    raise ValueError(f"{directory} is not a converted checkpoint of format {FORMAT} "
                     f"(metadata format {found!r}, 'variables/' present: {has_variables}).")
  return metadata


def load_pretrained(directory: str | os.PathLike,
                    dtype: Any = jnp.float32) -> tuple[detector.VideoClassifier, dict[str, Any]]:
  """DIR (local or a bucket URL) -> (VideoClassifier, variables).

  `model.apply(variables, uint8_clip, train=False)` gives the PyTorch logits of the same
  clip normalized as the weights expect (the model applies that preset itself). For a
  checkpoint converted with --drop-classifier, `variables['params']` has no
  'classifier': use it through `merge_pretrained`.
  """
  metadata = read_metadata(directory)
  num_classes = metadata.get("num_classes") or 1
  model = detector.VideoClassifier(num_classes=int(num_classes),
                                   backbone_kwargs=dict(metadata["architecture"]),
                                   normalization=metadata["normalization"], dtype=dtype)
  restored = ocp.StandardCheckpointer().restore(_directory(directory) / VARIABLES_DIR)
  variables = jax.tree_util.tree_map(jnp.asarray, restored)
  return model, {"params": variables["params"], "batch_stats": variables["batch_stats"]}


# ------------------------------------------------------------------------- merge


@dataclasses.dataclass
class MergeReport:
  """What `merge_pretrained` copied."""

  backbone_tensors: int = 0
  classifier_copied: bool = False
  notes: list[str] = dataclasses.field(default_factory=list)

  def __str__(self) -> str:
    return "; ".join([f"copied {self.backbone_tensors} backbone tensors"] + self.notes)


def _flat(tree: Any) -> dict[tuple[str, ...], Any]:
  return flax.traverse_util.flatten_dict(flax.core.unfreeze(tree))


def merge_pretrained(target_variables: Mapping[str, Any],
                     pretrained_variables: Mapping[str, Any]) -> tuple[dict[str, Any],
                                                                      MergeReport]:
  """Copies pretrained backbone params and batch_stats (and a fitting classifier) into
  a Detector's variables.

  The backbone must match exactly; otherwise ValueError names the first mismatched key
  with both shapes. The classifier is copied only when its shapes match; otherwise the
  fresh one stays and the report says so. Copied leaves take the target's dtype.
  """
  report = MergeReport()
  merged = {c: _flat(t) for c, t in target_variables.items()}
  for collection in ("params", "batch_stats"):
    target = {k: v for k, v in merged.get(collection, {}).items() if k[0] == "backbone"}
    source = {k: v for k, v in _flat(pretrained_variables.get(collection, {})).items()
              if k[0] == "backbone"}
    for key in sorted(set(target) | set(source)):
      name = f"{collection}/{'/'.join(key)}"
      if key not in source:
        raise ValueError(f"Pretrained backbone does not match the model: {name} is missing "
                         f"from the pretrained weights (model shape {target[key].shape}).")
      if key not in target:
        raise ValueError(f"Pretrained backbone does not match the model: {name} "
                         f"(pretrained shape {source[key].shape}) has no place in the model.")
      if tuple(target[key].shape) != tuple(source[key].shape):
        raise ValueError(f"Pretrained backbone does not match the model at {name}: "
                         f"pretrained shape {tuple(source[key].shape)} vs model shape "
                         f"{tuple(target[key].shape)}.")
      merged[collection][key] = jnp.asarray(source[key], dtype=target[key].dtype)
      report.backbone_tensors += 1

  params = merged.get("params", {})
  target_cls = {k: v for k, v in params.items() if k[0] == "classifier"}
  source_cls = {k: v for k, v in _flat(pretrained_variables.get("params", {})).items()
                if k[0] == "classifier"}
  if not source_cls:
    report.notes.append("the pretrained weights have no classifier; kept the fresh one")
  elif set(source_cls) == set(target_cls) and all(
      tuple(source_cls[k].shape) == tuple(target_cls[k].shape) for k in source_cls):
    for k, v in source_cls.items():
      params[k] = jnp.asarray(v, dtype=target_cls[k].dtype)
    report.classifier_copied = True
    report.notes.append("copied the classifier")
  else:
    shapes = lambda d: {"/".join(k): tuple(v.shape) for k, v in sorted(d.items())}
    report.notes.append(f"classifier shapes differ (pretrained {shapes(source_cls)} vs "
                        f"model {shapes(target_cls)}); kept the fresh classifier")
  return {c: flax.traverse_util.unflatten_dict(t) for c, t in merged.items()}, report
