"""Multi-process JAX: whether and how `jax.distributed` is initialised.

`--distributed` (every entry point; else $GRALIGN_DISTRIBUTED; default auto):
  auto  initialise only where a cluster is detected: a Cloud TPU VM (a pod slice's
        workers find each other through its metadata), a SLURM job of several tasks,
        or a coordinator address given (flag or $JAX_COORDINATOR_ADDRESS);
  on    always; with no cluster detected and no coordinator address it stops, naming
        --coordinator_address, --num_processes and --process_id;
  off   never: one process, whatever the environment says.
The three flags are jax.distributed.initialize's own arguments; each falls back to
$JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES and $JAX_PROCESS_ID. Called once, before
anything touches a JAX backend.
"""
import os

MODES = ("auto", "on", "off")


class DistributedError(RuntimeError):
  """jax.distributed cannot be set up as asked: the message names what is missing."""


def _on_cloud_tpu_vm() -> bool:
  # The TPU chips of a Cloud TPU VM; jax asks the VM's metadata server for the rest.
  return (os.path.exists("/dev/accel0") or os.path.isdir("/dev/vfio")) and (
      os.environ.get("TPU_SKIP_MDS_QUERY") is None)


def _slurm_tasks() -> int:
  """Tasks of the SLURM job step this process belongs to (0 outside SLURM)."""
  if "SLURM_JOB_ID" not in os.environ or "SLURM_PROCID" not in os.environ:
    return 0
  return int(os.environ.get("SLURM_NTASKS") or os.environ.get("SLURM_NPROCS") or 1)


def detect(coordinator_address: str | None) -> str:
  """The cluster this process runs in: "tpu", "slurm", "coordinator" or ""."""
  if coordinator_address:
    return "coordinator"
  if _slurm_tasks() > 1:
    return "slurm"
  if _on_cloud_tpu_vm():
    return "tpu"
  return ""


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError as e:
    raise DistributedError(f"${name}={value!r}: expected an integer.") from e


def initialize(mode: str | None = None, coordinator_address: str | None = None,
               num_processes: int | None = None, process_id: int | None = None,
               log=print) -> bool:
  """Initialises jax.distributed per `mode` (see the module docstring). -> whether it
  did. Flags that are None fall back to their environment variables. `log` is plain
  print, not logs.info: asking JAX for the process index here would start its
  backends before jax.distributed.initialize may.

  Raises:
    DistributedError: an unknown mode, or `on` with no cluster and no coordinator.
  """
  mode = (mode or os.environ.get("GRALIGN_DISTRIBUTED") or "auto").lower()
  if mode not in MODES:
    raise DistributedError(f"--distributed={mode!r}: expected one of {', '.join(MODES)} "
                           "(or $GRALIGN_DISTRIBUTED).")
  if mode == "off":
    return False
  coordinator_address = coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS")
  num_processes = num_processes if num_processes is not None else _env_int(
      "JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _env_int("JAX_PROCESS_ID")
  cluster = detect(coordinator_address)
  if not cluster:
    if mode == "auto":
      return False
    raise DistributedError(
        "--distributed=on, but no cluster was detected (no Cloud TPU VM, no SLURM job of "
        "several tasks): give --coordinator_address=HOST:PORT, --num_processes=N and "
        "--process_id=I (or $JAX_COORDINATOR_ADDRESS, $JAX_NUM_PROCESSES, "
        "$JAX_PROCESS_ID).")
  if cluster == "coordinator" and (num_processes is None or process_id is None):
    raise DistributedError(
        f"--coordinator_address={coordinator_address!r} needs --num_processes and "
        "--process_id too (or $JAX_NUM_PROCESSES and $JAX_PROCESS_ID), unless a SLURM "
        "or Cloud TPU cluster provides them.")
  import jax  # pylint: disable=g-import-not-at-top
  jax.distributed.initialize(coordinator_address=coordinator_address,
                             num_processes=num_processes, process_id=process_id)
  if jax.process_index() == 0:
    log(f"jax.distributed: {jax.process_count()} processes ({cluster}), "
        f"{jax.device_count()} devices")
  return True
