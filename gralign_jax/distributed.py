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

No silent waits. Connecting, every process says what it waits for, says so again every
30 s, and gives up after $GRALIGN_DISTRIBUTED_TIMEOUT seconds (default 300) with one
`Error:` line naming the coordinator and what to check; JAX itself would end the same
wait minutes later in a C++ abort.

A process lost later (killed, out of memory, its machine gone, an uncaught exception):
the others would wait in their next collective until JAX's heartbeats notice (JAX's
fatal error, a native abort with its stack). A PeerWatch notices first: every process
says it is alive in the coordination service's key-value store every few seconds, and
one whose word stops for half of $GRALIGN_HEARTBEAT_TIMEOUT (default 60: 30 s), or that
ended with an exception or an entry point's `Error:` line (PeerWatch.stopping), ends
every other process with one `Error:` line naming it: within that time plus one beat
(35 s by default), at the next beat when it said why. Process 0 included: jax would host
the coordination service inside it, and its death would end every other process at once
in JAX's fatal error (a native abort, which jaxlib does not let Python replace: a Python
`missed_heartbeat_callback` aborts on std::bad_cast in jaxlib 0.10); the service lives
in a host process of its own instead (coordinator.py), so process 0 is a peer like the
others. local.sh, when it is the launcher, stops the rest and names the process that
ended first.
"""
import atexit
import functools
import inspect
import os
import sys
import threading
import time

from gralign_jax import coordinator
from gralign_jax import watchdog

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
               log=functools.partial(print, flush=True)) -> bool:
  """Initialises jax.distributed per `mode` (see the module docstring). -> whether it
  did. Flags that are None fall back to their environment variables. `log` is plain
  print (flushed), not logs.info: asking JAX for the process index
  here would start its backends before jax.distributed.initialize may.

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
  if num_processes is not None and num_processes < 1:
    raise DistributedError(f"--num_processes={num_processes}: expected 1 or more.")
  if process_id is not None and num_processes is not None and not (
      0 <= process_id < num_processes):
    raise DistributedError(f"--process_id={process_id}: expected 0 to {num_processes - 1} "
                           f"(--num_processes={num_processes}; process 0 hosts the "
                           "coordinator).")
  try:
    timeout = watchdog.seconds_from_env("GRALIGN_DISTRIBUTED_TIMEOUT", 300)
    heartbeat = watchdog.seconds_from_env("GRALIGN_HEARTBEAT_TIMEOUT", 60)
  except ValueError as e:
    raise DistributedError(str(e)) from e
  me = "this process" if process_id is None else f"process {process_id}"
  peers = "the other processes" if num_processes is None else (
      f"all {num_processes} processes")
  where = (f"the coordinator at {coordinator_address}" if coordinator_address else
           f"the coordinator of the {cluster} job")
  waiting = f"waiting for {where} and {peers}"
  log(f"jax.distributed: {me} {waiting} (up to {timeout} s, "
      "$GRALIGN_DISTRIBUTED_TIMEOUT)")
  error = (f"jax.distributed: {me} waited {timeout} s for {where} and {peers} to connect; "
           "expected every process started with the same --coordinator_address (process "
           "0's host and a port it can open) and --num_processes, and its own "
           "--process_id. Did one fail to start? (Wait longer: "
           "$GRALIGN_DISTRIBUTED_TIMEOUT.)")
  import jax  # pylint: disable=g-import-not-at-top
  asked = dict(coordinator_address=coordinator_address, num_processes=num_processes,
               process_id=process_id, initialization_timeout=timeout + 60,
               heartbeat_timeout_seconds=heartbeat)
  accepted = inspect.signature(jax.distributed.initialize).parameters
  if not any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
    asked = {k: v for k, v in asked.items() if k in accepted}  # jax versions differ
  with watchdog.Deadline(timeout, waiting, error,
                         lambda line: log(f"jax.distributed: {line}")), \
      coordinator.hosting_apart():
    try:
      jax.distributed.initialize(**asked)
    except coordinator.HostError as e:
      raise DistributedError(f"jax.distributed: {e}") from e
  if jax.process_index() == 0:
    log(f"jax.distributed: {jax.process_count()} processes ({cluster}), "
        f"{jax.device_count()} devices")
  PeerWatch.start(heartbeat / 2, log)
  return True


def _client():
  """The coordination service's client of this process, if this jax has one."""
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  client = getattr(getattr(jax_distributed, "global_state", None), "client", None)
  needs = ("key_value_set", "key_value_dir_get")
  return client if all(hasattr(client, n) for n in needs) else None


class PeerWatch:
  """Watches the other processes of this job through the coordination service's
  key-value store (see the module docstring). Under PREFIX each process's key holds a
  counter it bumps every `beat` s, then "done" once it ends normally, "failed" once it
  ends with an exception, or "left" once it leaves because another was lost; LOST holds
  the first loss any process saw, which the others take up at their next beat."""
  PREFIX = "gralign_jax/alive/"
  LOST = PREFIX + "lost"
  running: "PeerWatch | None" = None  # this process's, once started

  def __init__(self, client, me: int, timeout: float, beat: float | None = None):
    self.client, self.me, self.timeout = client, me, timeout
    self.beat = beat or max(1.0, min(5.0, timeout / 6))
    self._ending = threading.Event()
    self._saying = threading.Lock()  # no counter may land after "done" or "failed"

  @classmethod
  def start(cls, timeout: float, log) -> "PeerWatch | None":
    import jax  # pylint: disable=g-import-not-at-top
    if jax.process_count() < 2:
      return None
    client = _client()
    if client is None:
      log("jax.distributed: this jax has no key-value client to watch the other "
          "processes with: a lost process ends the others only through JAX's heartbeat")
      return None
    watch = cls.running = cls(client, jax.process_index(), timeout)
    threading.Thread(target=watch._run, daemon=True, name="peer watch").start()
    atexit.register(watch._at_exit)  # runs before jax's own shutdown (registered earlier)
    return watch

  def _key(self, process) -> str:
    return f"{self.PREFIX}{process}"

  def _say(self, key: str, value: str) -> None:
    self.client.key_value_set(key, value, allow_overwrite=True)

  def _at_exit(self) -> None:
    """Says how this process ends. One that ends with an exception tells the others to
    stop and leaves at once: jax's shutdown would wait minutes at a barrier for them."""
    failed = getattr(sys, "last_exc", None) or getattr(sys, "last_value", None)
    self._tell_others("failed" if failed else "done", failed and (
        f"process {self.me} ended with {type(failed).__name__} (its log has the "
        "traceback)"))
    if failed:
      self._leave(1)
    self._say_what_shutdown_waits_for()

  def _say_what_shutdown_waits_for(self) -> None:
    """jax's shutdown waits at a barrier for every process (up to 300 s): say so."""
    try:
      busy = sorted(key[len(self.PREFIX):] for key, value in
                    self.client.key_value_dir_get(self.PREFIX)
                    if value.isdigit() and key != self._key(self.me))
    except Exception:  # pylint: disable=broad-except
      return
    if busy:
      print(f"jax.distributed: process {self.me} is done and waits for process"
            f"{'es' if len(busy) > 1 else ''} {', '.join(busy)} to finish (jax's "
            "shutdown barrier)", flush=True)

  def stopping(self, why: str) -> None:
    """This process stops with an error (`why`, its Error line): the others stop at
    their next beat, saying so, rather than after its silence. Process 0 hosts the
    service, so it returns once they have gone."""
    self._tell_others("failed", f"process {self.me} stopped "
                      f"({why.removeprefix('Error: ')})")
    if self.me == 0:
      try:
        self._others_gone()
      except Exception:  # pylint: disable=broad-except
        pass

  def _tell_others(self, state: str, lost: str | None) -> None:
    """This process's last word (`state`; no counter lands after it) and, when it
    stops the job, `lost` for the others to take up."""
    try:
      with self._saying:
        self._ending.set()
        self._say(self._key(self.me), state)
      if lost:
        self._say(self.LOST, lost)
    except Exception:  # pylint: disable=broad-except  (the service may be gone already)
      pass

  def _leave(self, code: int) -> None:
    try:
      self._say(self._key(self.me), "left")
      if self.me == 0:
        self._others_gone()
        if coordinator.host:
          coordinator.host.gone()
    except Exception:  # pylint: disable=broad-except
      pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access

  def _run(self) -> None:
    count, heard = 0, {}  # a process's key -> (its last value, when that came here)
    while not self._ending.is_set():
      count += 1
      try:
        with self._saying:
          if self._ending.is_set():
            return
          self._say(self._key(self.me), str(count))
        values = dict(self.client.key_value_dir_get(self.PREFIX))
      except Exception as e:  # pylint: disable=broad-except
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        return self._end(f"the coordination service (process 0) stopped answering "
                         f"({first})")
      if self.LOST in values:
        return self._end(values[self.LOST])
      now = time.monotonic()
      for key, value in values.items():
        if value in ("done", "left") or key == self._key(self.me):
          continue
        process = key[len(self.PREFIX):]
        if value == "failed":
          return self._lost(f"process {process} ended with an exception (its log has "
                            "the traceback)")
        if heard.get(key, (None,))[0] != value:
          heard[key] = (value, now)
        elif now - heard[key][1] > self.timeout:
          return self._lost(f"process {process} has not been heard from for "
                            f"{now - heard[key][1]:.0f} s (killed, out of memory, or "
                            "its machine gone?)")
      self._ending.wait(self.beat)

  def _lost(self, why: str) -> None:
    try:
      self._say(self.LOST, why)  # the others take it up at their next beat
    except Exception:  # pylint: disable=broad-except
      pass
    self._end(why)

  def _others_gone(self) -> None:
    """Process 0 leaves last: when its service host goes, the others abort natively. So
    it waits until each has left, ended, or been silent for two beats (at most
    `timeout`)."""
    last, since, start = {}, {}, time.monotonic()
    while time.monotonic() - start < self.timeout:
      now, waiting = time.monotonic(), False
      for key, value in self.client.key_value_dir_get(self.PREFIX):
        if key in (self.LOST, self._key(self.me)) or value in ("left", "done", "failed"):
          continue
        if last.get(key) != value:
          last[key], since[key] = value, now
        waiting |= now - since[key] < 2 * self.beat
      if not waiting:
        return
      time.sleep(0.2)

  def _end(self, why: str) -> None:
    if self._ending.is_set():
      return  # this process ends anyway; jax's shutdown has its own deadline
    sys.stdout.flush()
    print(f"Error: jax.distributed: {why}; process {self.me} stops too. Checkpoints "
          "saved before are intact: the same command resumes from the last one.",
          file=sys.stderr, flush=True)
    self._leave(1)  # os._exit: the main thread is in a collective
