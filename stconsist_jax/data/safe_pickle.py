"""Annotation pickles from third-party links, loaded safely: an unpickler that imports nothing
and knows only bounded stand-ins of numpy's array helpers, under caps on size and nesting.
"""

from __future__ import annotations

import _compat_pickle
import io
import os
import pickle
from typing import Any

import numpy as np

from stconsist_jax.core import errors
from stconsist_jax.data import records as records_lib

PathLike = str | os.PathLike


class AnnotationFileError(records_lib.DataFileError):
  """An annotation pickle that cannot be read or holds something other than annotations."""


class UnsafePickleError(AnnotationFileError):
  """An annotation pickle that references code annotation files never contain."""


# Size caps of what a pickle may hold. Real files are far below them: UCF101-24's
# pyannot.pkl is 3,541,073 bytes and nests 5 deep (docs/data.md). Arrays need no cap of
# their own: each must be exactly as large as the bytes the file holds for it.
MAX_PICKLE_BYTES = 64 * 2**20
MAX_NESTING = 16

_PICKLE_PROBLEM = 'holds something annotation files never do'


def _refuse(what: str) -> None:
  raise pickle.UnpicklingError(f'{_PICKLE_PROBLEM}: {what}')


class _CheckedArray(np.ndarray):
  """An ndarray being unpickled: its state is checked before numpy builds it.

  numpy trusts a pickled array's shape (an object array with a short list crashes
  the interpreter); here the data must be plain values of exactly the stated size.
  `_plain_values` turns these back into plain ndarrays.
  """

  def __setstate__(self, state: Any) -> None:
    if not isinstance(state, tuple) or len(state) not in (4, 5):
      _refuse('an array state that numpy never writes')
    shape, dtype, _, data = state[-4:]
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
      _refuse('an array of Python objects')
    if not isinstance(data, (bytes, str)):  # str: a Python 2 pickle read as latin1
      _refuse('an array without its data')
    if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
      _refuse(f'an array of shape {shape!r}')
    if int(np.prod(shape, dtype=object)) * dtype.itemsize != len(data):
      _refuse(f'an array of shape {shape} and {len(data)} bytes of data')
    super().__setstate__(state)


def _reconstruct(subtype: Any, shape: Any, typecode: Any) -> _CheckedArray:
  """numpy's `_reconstruct` for the empty array a pickle starts each array from."""
  del typecode
  if subtype is not _CheckedArray or shape != (0,):
    _refuse(f'an array started as {getattr(subtype, "__name__", subtype)}{shape!r}')
  return np.ndarray.__new__(_CheckedArray, (0,), np.uint8)


def _dtype(spec: Any, align: bool = False, copy: bool = False) -> np.dtype:
  if not isinstance(spec, str):
    _refuse(f'a dtype of {type(spec).__name__}')
  return np.dtype(spec, align, copy)


def _scalar(dtype: Any, data: Any) -> Any:
  if not isinstance(dtype, np.dtype) or dtype.hasobject or not isinstance(data, (bytes, str)):
    _refuse('a numpy scalar of Python objects')
  if len(data) != dtype.itemsize:
    _refuse(f'a {dtype} scalar of {len(data)} bytes')
  return np.frombuffer(data.encode('latin1') if isinstance(data, str) else data, dtype)[0]


def _frombuffer(data: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
  """numpy's `_frombuffer` (protocol 5): a view of bytes already in the file."""
  if not isinstance(dtype, np.dtype) or dtype.hasobject:
    _refuse('an array of Python objects')
  if not isinstance(data, (bytes, bytearray)):
    _refuse('an array without its data')
  return np.frombuffer(data, dtype).reshape(shape, order=order)


def _encode(text: Any, encoding: str) -> bytes:
  """`_codecs.encode` as Python 3 pickles bytes for protocol 2: latin1 only."""
  if not isinstance(text, str) or encoding not in ('latin1', 'latin-1'):
    _refuse(f'bytes encoded as {encoding!r}')
  return text.encode('latin1')


# Every global the real formats (UCF101-24's pyannot.pkl, ACT's *-GT.pkl) reference:
# numpy arrays, dtypes and scalars, as pickled by numpy 1.x and 2.x, any protocol; bytes
# as Python 3 pickles them for protocol 2. Each is replaced by a bounded equivalent;
# nothing is imported.
_SAFE_GLOBALS = {
  **{
    (numpy_core, name): value
    for numpy_core in ('numpy.core.multiarray', 'numpy._core.multiarray')
    for name, value in (('_reconstruct', _reconstruct), ('scalar', _scalar))
  },
  **{(core, '_frombuffer'): _frombuffer for core in ('numpy.core.numeric', 'numpy._core.numeric')},
  ('numpy', 'ndarray'): _CheckedArray,
  ('numpy', 'dtype'): _dtype,
  ('_codecs', 'encode'): _encode,
}

_DEFAULT_EXPECTED = 'expected an annotation pickle as downloaded'


class _RestrictedUnpickler(pickle.Unpickler):
  """An unpickler that knows only `_SAFE_GLOBALS`: loading never runs foreign code."""

  def __init__(self, file, source: PathLike):
    super().__init__(file, encoding='latin1')  # Python 2 pickles.
    self._source = source

  def find_class(self, module: str, name: str) -> Any:
    # Python 2 names (`__builtin__.set`) -> Python 3 ones, as pickle maps them.
    if (module, name) in _compat_pickle.NAME_MAPPING:
      module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    if (module, name) not in _SAFE_GLOBALS:
      raise UnsafePickleError(
        f'refusing to load {self._source}: it references {module}.{name}, which '
        'annotation files never contain'
      )
    return _SAFE_GLOBALS[(module, name)]


def _plain_values(value: Any, depth: int, done: dict[int, Any]) -> Any:
  """`value` with plain ndarrays for `_CheckedArray`s; refuses nesting past MAX_NESTING.

  Shared objects are converted once (`done`, by id); a cycle is nesting without end.
  """
  if depth > MAX_NESTING:
    _refuse(f'containers nested over {MAX_NESTING} deep')
  if isinstance(value, _CheckedArray):
    return value.view(np.ndarray)
  if not isinstance(value, (dict, list, tuple, set, frozenset)):
    return value
  if id(value) not in done:
    if isinstance(value, dict):
      items = {k: _plain_values(v, depth + 1, done) for k, v in value.items()}
    else:
      items = type(value)(_plain_values(v, depth + 1, done) for v in value)
    done[id(value)] = items
  return done[id(value)]


def _read_capped(path: PathLike, expected: str) -> bytes:
  try:
    f = open(path, 'rb')
  except FileNotFoundError:
    raise FileNotFoundError(f'annotation file {path} not found: {expected}') from None
  with f:
    # Its size, not the cap, bounds the read: read(n) reserves n bytes at once.
    size = os.fstat(f.fileno()).st_size
    data = f.read(min(size, MAX_PICKLE_BYTES) + 1)
  if len(data) > MAX_PICKLE_BYTES:
    raise AnnotationFileError(
      f'{path} is over {MAX_PICKLE_BYTES // 2**20} MiB, far more than any annotation '
      f'file; {expected}'
    )
  return data


def load_pickle(path: PathLike, expected: str = _DEFAULT_EXPECTED) -> Any:
  """Loads an annotation pickle, admitting only numpy arrays and builtin values.

  At most MAX_PICKLE_BYTES and MAX_NESTING deep; numpy arrays, dtypes and scalars are
  built by bounded stand-ins (`_SAFE_GLOBALS`), each no larger than its bytes in the file.
  `expected` (which files the caller reads) ends the messages of a missing, oversized or
  unreadable file.

  Raises:
    FileNotFoundError: no file at `path`.
    UnsafePickleError: the pickle references any other global (e.g. `os.system`).
    AnnotationFileError: the file is not a complete pickle, is too large, too deeply
      nested, or holds arrays of objects or of another size than their data.
  """
  data = _read_capped(path, expected)
  try:
    return _plain_values(_RestrictedUnpickler(io.BytesIO(data), path).load(), 0, {})
  except AnnotationFileError:
    raise
  except Exception as e:  # pylint: disable=broad-except
    # Junk or truncated files fail in many ways (EOFError, UnpicklingError,
    # ValueError, ...); none of them names the file.
    raise AnnotationFileError(
      f'{path} is not a readable annotation pickle ({type(e).__name__}: {errors.one_line(e)}); {expected}'
    ) from None
