"""The report a TFDS build writes beside its dataset (`build_report.json`): the videos it
wrote and skipped and why, its speed, the annotation problems, what it changed, its source.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from absl import logging

REPORT_FILE = 'build_report.json'


@dataclasses.dataclass
class BuildReport:
  """What a build skipped and why, and how fast it went."""

  skipped: dict[str, list[dict[str, str]]] = dataclasses.field(
    default_factory=lambda: collections.defaultdict(list)
  )
  videos: dict[str, int] = dataclasses.field(default_factory=dict)
  seconds: dict[str, float] = dataclasses.field(default_factory=dict)
  problems: dict[str, Any] = dataclasses.field(default_factory=dict)
  notes: dict[str, int] = dataclasses.field(default_factory=lambda: collections.defaultdict(int))
  absent_annotated_classes: list[str] = dataclasses.field(default_factory=list)
  source: dict[str, Any] = dataclasses.field(default_factory=dict)

  def skip(self, split: str, path: str, reason: str) -> None:
    logging.warning('skipping %s (%s): %s', path, split, reason)
    self.skipped[split].append({'video': path, 'reason': reason})

  def to_dict(self) -> dict[str, Any]:
    return {
      'videos_written': dict(self.videos),
      'videos_skipped': {k: len(v) for k, v in self.skipped.items()},
      'skipped': dict(self.skipped),
      'seconds': dict(self.seconds),
      'videos_per_second': {
        k: self.videos[k] / max(self.seconds[k], 1e-9) for k in self.videos if k in self.seconds
      },
      'annotation_problems': self.problems,
      # Counts of what the build changed or dropped: `truncated_videos_skipped`,
      # `videos_short_of_expected_frames` (kept), `boxes_clipped_to_frame`,
      # `empty_boxes_dropped`, `boxes_beyond_decoded_frames`.
      'notes': dict(self.notes),
      # Annotated classes of the label space without any tube in this folder.
      'annotated_classes_without_tubes': list(self.absent_annotated_classes),
      'source': dict(self.source),
    }
