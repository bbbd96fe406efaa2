"""XML from users' annotation tools, parsed safely: no document type declarations (so no
entities, external or expanding), under a cap on size; problems are one line.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from xml.parsers import expat

from stconsist_jax.data import records as records_lib

PathLike = str | os.PathLike

# Far above any annotation export: CVAT writes about 150 bytes per box, so 256 MiB is
# 1.7 million boxes (a 10-actor track on every frame of a 2-hour, 25 fps video).
MAX_XML_BYTES = 256 * 2**20


class UnsafeXmlError(records_lib.DataFileError):
  """An XML file with a document type declaration: annotation exports never have one."""


class _Refused(Exception):
  pass


def _refuse_doctype(name, *_) -> None:
  raise _Refused(f'a document type declaration (<!DOCTYPE {name}>)')


def _refuse_entity(name, *_) -> None:
  raise _Refused(f'an entity declaration (<!ENTITY {name}>)')


def parse(data: bytes, source: str) -> ET.Element:
  """The root element of an XML document that declares no document type or entity.

  expat reports a DOCTYPE as it starts, before its internal subset (where entities are
  declared) is read: nothing is expanded or fetched.

  Raises:
    UnsafeXmlError: the document declares a document type or an entity.
    DataFileError: it is not well-formed XML (one line naming the file, line and column).
  """
  parser = expat.ParserCreate()
  builder = ET.TreeBuilder()
  parser.buffer_text = True
  parser.StartDoctypeDeclHandler = _refuse_doctype
  parser.EntityDeclHandler = _refuse_entity
  parser.StartElementHandler = builder.start
  parser.EndElementHandler = builder.end
  parser.CharacterDataHandler = builder.data
  try:
    parser.Parse(data, True)
  except _Refused as e:
    raise UnsafeXmlError(
      f'refusing to read {source}: it holds {e}, which annotation exports never do'
    ) from None
  except expat.ExpatError as e:
    raise records_lib.DataFileError(
      f'{source} is not well-formed XML ({expat.ErrorString(e.code)} at line {e.lineno}, '
      f'column {e.offset})'
    ) from None
  return builder.close()


def read(path: PathLike, expected: str) -> ET.Element:
  """Parses an XML file of at most MAX_XML_BYTES (`expected` ends the size error)."""
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    raise FileNotFoundError(f'annotation file {path} not found: {expected}') from None
  with f:
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size, MAX_XML_BYTES) + 1)
  if len(data) > MAX_XML_BYTES:
    raise records_lib.DataFileError(
      f'{path} is over {MAX_XML_BYTES // 2**20} MiB, far more than any annotation export; '
      f'{expected}'
    )
  return parse(data, os.fspath(path))
