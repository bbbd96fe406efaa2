"""Device mesh, global batches from host data (prefetched to devices), multi-process start-up.

One code path for one device, many devices and many hosts: a 1-D Mesh('data').
"""

from __future__ import annotations

import collections
import os
from typing import Any
from collections.abc import Iterable, Iterator, Mapping, Sequence

from absl import logging
import jax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P
import numpy as np

DATA_AXIS = 'data'


def detect_multiprocess() -> bool:
  """True when the environment describes a job of several processes (Slurm, TPU pod)."""
  env = os.environ
  if int(env.get('SLURM_NTASKS', '1') or 1) > 1 and 'SLURM_PROCID' in env:
    return True
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  if len([h for h in hosts.split(',') if h]) > 1:
    return True
  if int(env.get('JAX_NUM_PROCESSES', '1') or 1) > 1:
    return True
  return False


def initialize(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
  force: bool = False,
) -> None:
  """Calls jax.distributed.initialize() when asked or when several processes are detected.

  Explicit coordinator flags win; otherwise JAX's cluster auto-detection (Slurm, Cloud
  TPU) fills them in. A single-process run does nothing. On CPU the cross-process
  collectives go through gloo.
  """
  explicit = coordinator_address is not None
  if not (explicit or force or detect_multiprocess()):
    return
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if explicit:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes, process_id=process_id
    )
  else:
    jax.distributed.initialize()
  logging.info(
    'jax.distributed: process %d of %d, %d local / %d global devices',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes).

  The axis is `Auto`: jit places arrays by the in/out shardings it is given and
  partitions the rest itself (an `Explicit` axis would make shardings part of types).
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), (AxisType.Auto,), devices=devices)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the 'data' axis."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The rows this process feeds: its share of the mesh's devices."""
  local = sum(d.process_index == jax.process_index() for d in mesh.devices.flat)
  return global_batch_size * local // mesh.devices.size


def shard_batch(batch: Mapping[str, Any], mesh: Mesh) -> dict[str, jax.Array]:
  """Per-host numpy batch -> global jax.Arrays sharded on 'data'.

  Each process passes its own rows (its local share of the global batch); the global
  batch is the concatenation over processes in process order.
  """
  sharding = batch_sharding(mesh)
  return {
    k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()
  }


def prefetch_to_mesh(
  batches: Iterable[Mapping[str, Any]], mesh: Mesh, size: int = 2
) -> Iterator[dict[str, jax.Array]]:
  """Yields `shard_batch` of each host batch, with the next `size` already on the devices.

  A batch's transfer is issued `size` steps before the step that uses it, so it overlaps
  the steps in between (JAX dispatches them asynchronously). size=0 shards each batch
  when it is asked for. Ends when `batches` does, after yielding every batch.
  """
  ready: collections.deque[dict[str, jax.Array]] = collections.deque()
  for batch in batches:
    ready.append(shard_batch(batch, mesh))
    if len(ready) > size:
      yield ready.popleft()
  while ready:
    yield ready.popleft()


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Puts a host pytree (identical on every process) on all devices of the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(
    lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), tree
  )


def any_process(flag: bool) -> bool:
  """True on every process when `flag` is true on any (free with one process)."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

  flags_of_all = multihost_utils.process_allgather(np.asarray(flag, np.int32))
  return bool(np.max(flags_of_all))
