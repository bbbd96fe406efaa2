"""Evaluation reports: report.json from what the evaluators yielded, report.md, and the
committed WORKDIR/eval/<step>/ directory that holds them with the pictures.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any
from collections.abc import Mapping, Sequence

from etils import epath
import jax
import ml_collections
import numpy as np

from stconsist_jax.core import fileio
from stconsist_jax.evaluation import description
from stconsist_jax.evaluation import pictures
from stconsist_jax.metrics import video_ap

EVAL_DIR = 'eval'
REPORT_JSON = 'report.json'
REPORT_MD = 'report.md'
SHEET_PNG = 'clips.png'
CURVES_PNG = 'curves.png'


def _nan_to_none(value: Any) -> Any:
  if isinstance(value, dict):
    return {k: _nan_to_none(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_nan_to_none(v) for v in value]
  if isinstance(value, (float, np.floating)):
    return None if math.isnan(value) else float(value)
  if isinstance(value, np.integer):
    return int(value)
  return value


def build_report(
  config: ml_collections.ConfigDict,
  restored: Any,
  fields: Mapping[str, Any],
  run_name: str,
) -> dict[str, Any]:
  """report.json's dict: the run, what the evaluators yielded (`num_*` fields under
  'counts'), the timing, the protocol and the topology (NaN -> None)."""
  source = restored.source_config or config
  metrics = {k: v for k, v in fields.items() if not k.startswith('num_') and k != 'timing'}
  report = {
    'run': run_name,
    'checkpoint_step': restored.step,
    'model': (
      description.model_name(config.model)
      if not restored.classification_only
      else 'classifier only'
    ),
    'architecture': description.describe_model(config.model),
    'freeze_backbone': description.freezes_backbone(source),
    'config_hash': description.config_hash(source),
    'eval_config_hash': description.config_hash(config),
    **metrics,
    'counts': {k: v for k, v in fields.items() if k.startswith('num_')},
    'timing': {k: round(v, 3) for k, v in fields.get('timing', {}).items()},
    'protocol': description.protocol_of(config, len(fields.get('per_class_ap') or {}) or 24),
    'devices': int(jax.device_count()),
    'processes': int(jax.process_count()),
  }
  return _nan_to_none(report)


def _fmt(value: Any, percent: bool = False) -> str:
  if value is None:
    return '-'
  return f'{100 * value:.1f}%' if percent else f'{value:.3f}'


def report_markdown(report: Mapping[str, Any], images: Sequence[str] = ()) -> str:
  """report.md: the study's table, the frame-mAP rules, counts, protocol, per class."""
  lines = [
    f'# Evaluation of {report["run"]} at step {report["checkpoint_step"]}',
    '',
    f'{report["architecture"]}; freeze_backbone: {report["freeze_backbone"]}; config '
    f'{report["config_hash"]}.',
    '',
    '| model | freeze_backbone | accuracy (video) | clip top-1 | clip top-5 | mean IoU '
    '| frame-mAP@0.5 | video-mAP@0.2 | @0.5 | @0.75 | @0.5:0.95 |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    f'| {report["model"]} | {report["freeze_backbone"]} | '
    f'{_fmt(report.get("video_accuracy"), True)} | {_fmt(report.get("clip_accuracy"), True)} '
    f'| {_fmt(report.get("clip_top5"), True)} | {_fmt(report.get("mean_iou"))} | '
    f'{_fmt(report.get("frame_map"), True)} | '
    + ' | '.join(_fmt(report.get(k), True) for k in video_ap.VIDEO_MAP_KEYS)
    + ' |',
    '',
  ]
  by_rule = report.get('frame_map_by_protocol') or {}
  if by_rule:
    lines += [
      f'frame-mAP@0.5 by rule ({report.get("frame_map_frames")} frames): '
      + ', '.join(f'{k} {_fmt(v, True)}' for k, v in by_rule.items())
      + f'; the table shows {report.get("frame_map_protocol")}.',
      '',
    ]
  lines += ['## Counts', '']
  lines += [f'- {k}: {v}' for k, v in report['counts'].items()]
  lines += ['', '## Protocol', '']
  lines += [f'- **{k}**: {v}' for k, v in report['protocol'].items()]
  if report.get('per_class_ap'):
    lines += [
      '',
      '## Per annotated class',
      '',
      '| class | frame AP | clip accuracy |',
      '| --- | --- | --- |',
    ]
    for name, ap in report['per_class_ap'].items():
      lines.append(
        f'| {name} | {_fmt(ap, True)} | '
        f'{_fmt((report.get("per_class_accuracy") or {}).get(name), True)} |'
      )
  if images:
    lines += ['', '## Pictures', '']
    lines += [f'![{name}]({name})' for name in images]
  return '\n'.join(lines) + '\n'


def write_eval_dir(
  out_dir: str | os.PathLike, report: Mapping[str, Any], images: Mapping[str, np.ndarray]
) -> epath.Path:
  """Writes report.json, report.md and PNGs into `out_dir`, its commit file last.

  Readers take only committed report directories (`fileio.is_committed`), so a crash
  mid-write, locally or on a bucket, never leaves a report that looks finished.
  """
  files = {name: pictures.png_bytes(image) for name, image in images.items()}
  files[REPORT_MD] = report_markdown(report, sorted(images))
  files[REPORT_JSON] = json.dumps(report, indent=2) + '\n'
  return fileio.write_committed_dir(out_dir, files)


def check_writable(directory: str | os.PathLike) -> None:
  """Fails before any compute when reports could not be written to `directory`."""
  probe = fileio.as_path(directory) / f'.write-check-{os.getpid()}'
  try:
    fileio.atomic_write(probe, b'')
    probe.unlink()
  except OSError as e:
    raise PermissionError(
      f'cannot write evaluation reports to {directory} ({e.strerror or e}); pass '
      f'--eval_dir=DIR to write them elsewhere'
    ) from None
