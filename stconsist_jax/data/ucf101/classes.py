"""The class names of UCF-101 (101, `classInd.txt` order) and UCF101-24 (24, label order),
read from the text files installed beside this module (one name per line).
"""

from __future__ import annotations

import importlib.resources


def _read_names(file_name: str) -> tuple[str, ...]:
  text = importlib.resources.files(__package__).joinpath(file_name).read_text(encoding='utf-8')
  return tuple(line.strip() for line in text.splitlines() if line.strip())


# The 101 classes of UCF-101 in `classInd.txt` order (1-based there, 0-based here).
UCF101_CLASSES: tuple[str, ...] = _read_names('ucf101_classes.txt')

# The 24 annotated classes of UCF101-24, in their label order (0..23).
UCF24_CLASSES: tuple[str, ...] = _read_names('ucf101_24_classes.txt')
