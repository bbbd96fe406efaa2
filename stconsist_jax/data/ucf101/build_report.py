"""The report a TFDS build writes beside its dataset (`build_report.json`): the videos it
wrote and skipped and why (counted by kind), its speed, the annotation problems (the
readers' bad records), what it changed, its source.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

from absl import logging

REPORT_FILE = 'build_report.json'

# Why a video was not written, as counted in the report's `videos_skipped_by_kind`.
SKIP_KINDS = {
  'video_missing': 'its video file or frames folder is not there',
  'video_unreadable': 'OpenCV cannot decode it, or its frames folder is not one video',
  'video_truncated': 'it decodes to under 90% of its expected frames',
  'frame_size_mismatch': 'its frames are not the size it was annotated on',
  'video_without_tubes': 'it has no tubes (a dataset of box classes only: nothing to learn)',
  'other': 'another reason (its line says)',
}


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

  def skip(self, split: str, path: str, reason: str, kind: str = 'other') -> None:
    """Records one video not written, `kind` one of SKIP_KINDS (its count in the report)."""
    if kind not in SKIP_KINDS:
      raise ValueError(f'unknown kind of skipped video {kind!r}')
    logging.warning('skipping %s (%s): %s', path, split, reason)
    self.skipped[split].append({'video': path, 'reason': reason, 'kind': kind})

  def skip_counts(self) -> dict[str, int]:
    counts = collections.Counter(s['kind'] for v in self.skipped.values() for s in v)
    return dict(sorted(counts.items()))

  def to_dict(self) -> dict[str, Any]:
    return {
      'videos_written': dict(self.videos),
      'videos_skipped': {k: len(v) for k, v in self.skipped.items()},
      'videos_skipped_by_kind': self.skip_counts(),
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
