"""The device mesh and how arrays are placed on it.

One 1-D mesh over every device of every host, axis name 'data': batches are split
along their leading axis, parameters and optimiser state are replicated (what `pmap`
did, written the way JAX now asks for).
"""
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A ('data',) mesh over `devices` (default: all devices of all hosts)."""
  devices = list(jax.devices() if devices is None else devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading axis split over 'data', the rest whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_divisible(global_batch: int, mesh: Mesh, what: str = "train.batch_size"):
  from gralign_jax import configs  # pylint: disable=g-import-not-at-top
  n = mesh.devices.size
  if global_batch % n:
    raise configs.ConfigError(
        f"{what}={global_batch} must be a multiple of the number of devices ({n}) so "
        "that every device gets the same share of the batch.")


def global_batch(local: Any, mesh: Mesh) -> Any:
  """Host-local numpy batch (this host's rows) -> global jax arrays split over 'data'."""
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), local)


def sum_over_hosts(count: int) -> int:
  """An integer counted on each host -> the total over all hosts (on every host)."""
  if jax.process_count() == 1:
    return count
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return int(np.sum(multihost_utils.process_allgather(np.int64(count))))


def barrier(name: str) -> None:
  """Every host waits here until all have arrived (nothing to do on one host)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices(name)
