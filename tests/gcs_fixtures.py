"""Pytest fixtures for gs:// tests: `gcs_server`, a local GCS emulator per pytest process
that every client finds through os.environ, and `gcs_bucket`, a fresh bucket per test.
"""

import os
import uuid
from collections.abc import Iterator

import pytest

import gcs_emulator


@pytest.fixture(scope='session')
def gcs_server() -> Iterator[gcs_emulator.GcsEmulator]:
  """One emulator per pytest process, found by every GCS client through os.environ.

  Sets the variables of `GcsEmulator.env()` (subprocesses inherit them) and restores
  the previous values at the end. Fails, never skips, when the emulator cannot start:
  a run without it must not pass silently. TensorFlow reads some of the variables when
  it first touches gs://, so no test may use gs:// in a process before this fixture.
  While it is active, every https request of the process goes to the proxy, which
  refuses hosts other than *.googleapis.com.
  """
  with gcs_emulator.GcsEmulator() as emulator:
    env = emulator.env()
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
      yield emulator
    finally:
      for name, value in saved.items():
        if value is None:
          os.environ.pop(name, None)
        else:
          os.environ[name] = value


@pytest.fixture
def gcs_bucket(gcs_server: gcs_emulator.GcsEmulator) -> str:
  """A new empty bucket on the emulator, as the string "gs://<bucket>"."""
  name = f'test-{uuid.uuid4().hex[:16]}'
  gcs_server.create_bucket(name)
  return f'gs://{name}'
