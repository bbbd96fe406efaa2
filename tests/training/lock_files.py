"""A lock file written as another run would leave it (tests of the workdir lock)."""

import json
import os
import socket
import time

from stconsist_jax.training import workdir_lock


def write_lock(workdir, **fields):
  """Writes `.run.lock` of `workdir` for a holder on this host (`fields` override it)."""
  holder = dict(
    host=socket.gethostname(),
    pid=os.getpid(),
    started=time.time(),
    renewed=time.time(),
    lease_seconds=120.0,
    token='other',
  )
  holder.update(fields)
  path = workdir / workdir_lock.LOCK_FILENAME
  path.write_text(json.dumps(holder))
  return path
