"""Builds the `ucf101_stconsist` TFDS dataset from a UCF-101 folder (or a synthetic one).

  python tools/build_dataset.py --manual_dir DIR --data_dir OUT [--split 1]
      [--frame_size 128] [--num_workers N] [--jpeg_quality 90]

DIR holds UCF-101/, ucfTrainTestlist/ and pyannot.pkl (or UCF101v2-GT.pkl). The
dataset goes to OUT/ucf101_stconsist/<config>/1.0.0 with build_report.json beside it.
"""

from typing import Sequence

from absl import app
from absl import flags

_MANUAL_DIR = flags.DEFINE_string("manual_dir", None, "The downloaded UCF-101 folder.")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "TFDS data dir to write to.")
_SPLIT = flags.DEFINE_enum("split", "1", ["1", "2", "3"], "Official split.")
_FRAME_SIZE = flags.DEFINE_integer("frame_size", 128, "Stored frame size (square).")
_NUM_WORKERS = flags.DEFINE_integer("num_workers", None,
                                    "Decoding processes (default: CPU count, max 16).")
_JPEG_QUALITY = flags.DEFINE_integer("jpeg_quality", 90, "JPEG quality of stored frames.")


def main(argv: Sequence[str]) -> None:
  del argv
  # Imported here so the decoding worker processes, which re-import this script,
  # start without TensorFlow.
  from stconsist_jax.data import tfds_builder  # pylint: disable=g-import-not-at-top
  builder = tfds_builder.build(_MANUAL_DIR.value, _DATA_DIR.value, int(_SPLIT.value),
                               _FRAME_SIZE.value, _NUM_WORKERS.value,
                               _JPEG_QUALITY.value)
  report = tfds_builder.read_report(builder)
  print(f"dataset: {builder.data_dir}")
  print(f"written: {report['videos_written']}  skipped: {report['videos_skipped']}")
  print("videos/s: " + ", ".join(f"{k} {v:.2f}"
                                  for k, v in report["videos_per_second"].items()))


if __name__ == "__main__":
  flags.mark_flags_as_required(["manual_dir", "data_dir"])
  app.run(main)
