"""What reading an annotation file skipped or changed: one line per bad record (naming the
file, the video and the frame) and counts by kind, for the build report.
"""

from __future__ import annotations

import collections
import dataclasses
from typing import Any

# Bad records: each gets one line, and is skipped (or, for a video, dropped or kept empty).
BAD_RECORD_KINDS = {
  'box_outside_frame': 'a box beyond the frame by more than the tolerance (box skipped)',
  'empty_box': 'a box without area, x2 <= x1 or y2 <= y1 (box skipped)',
  'frame_past_video_end': 'a box on a frame past the video end (box skipped)',
  'frame_before_video_start': 'a box on a frame before the first one (box skipped)',
  'unknown_label': 'a label that is not among the class names (its boxes skipped)',
  'duplicate_actor_box': 'an actor with a second box in one frame (the later one skipped)',
  'video_missing': 'a video listed in a split or annotated but not known (dropped)',
  'video_without_annotations': 'a known video without any tube (kept, with no tubes)',
  'malformed_record': 'a record that cannot be read as the format says (skipped)',
  'unsupported_shape': 'a shape other than a box in a track (skipped)',
}

# Changes that are no error: counted only.
NOTE_KINDS = {
  'boxes_clipped': 'boxes beyond the frame by at most the tolerance, clipped to it',
  'tubes_split_at_gaps': 'extra tubes made where a track skips frames (one tube per run)',
  'boxes_interpolated': 'CVAT boxes on frames between two written boxes, interpolated',
  'boxes_propagated': "CVAT boxes after a track's last box (not outside), to the video end",
  'occluded_boxes': 'CVAT boxes marked occluded (kept)',
}

# A reader keeps every count but only this many lines: a file wrong throughout (pixels read
# as normalized coordinates) would otherwise print a line per box.
MAX_LINES = 200


@dataclasses.dataclass
class ReadReport:
  """Bad records (one line each, up to MAX_LINES) and counts of them and of notes, by kind."""

  lines: list[str] = dataclasses.field(default_factory=list)
  counts: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  notes: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  lines_left_out: int = 0

  def bad(self, kind: str, line: str) -> None:
    """Records one bad record of `kind`, `line` naming its file, video and frame."""
    if kind not in BAD_RECORD_KINDS:
      raise ValueError(f'unknown kind of bad record {kind!r}')
    self.counts[kind] += 1
    if len(self.lines) < MAX_LINES:
      self.lines.append(f'{line} [{kind}]')
    else:
      self.lines_left_out += 1

  def note(self, kind: str, count: int = 1) -> None:
    if kind not in NOTE_KINDS:
      raise ValueError(f'unknown kind of note {kind!r}')
    if count:
      self.notes[kind] += count

  def merge(self, other: ReadReport) -> None:
    self.counts.update(other.counts)
    self.notes.update(other.notes)
    room = MAX_LINES - len(self.lines)
    self.lines.extend(other.lines[:room])
    self.lines_left_out += other.lines_left_out + max(len(other.lines) - room, 0)

  @property
  def ok(self) -> bool:
    return not self.counts

  def summary(self) -> str:
    """The counts on one line: `3 bad records (box_outside_frame 2, ...); notes: ...`."""
    bad = ', '.join(f'{k} {n}' for k, n in sorted(self.counts.items()))
    notes = ', '.join(f'{k} {n}' for k, n in sorted(self.notes.items()))
    total = sum(self.counts.values())
    text = f'{total} bad record{"s" if total != 1 else ""}' + (f' ({bad})' if bad else '')
    return text + (f'; notes: {notes}' if notes else '')

  def to_dict(self) -> dict[str, Any]:
    return {
      'bad_records': dict(sorted(self.counts.items())),
      'notes': dict(sorted(self.notes.items())),
      'lines': list(self.lines),
      'lines_left_out': self.lines_left_out,
    }
