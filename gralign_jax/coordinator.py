"""The coordination service of a multi-process job, hosted in a process of its own.

jax.distributed starts the coordination service inside process 0. When process 0 dies,
the service dies with it, and every other process ends at once in JAX's fatal error (a
native abort with a C++ stack, "another task died"), which Python cannot replace. Hosted
in a small child process of process 0 instead (`python -m gralign_jax.coordinator`),
the service outlives process 0, so process 0's death is like any other process's: the
others' PeerWatch (distributed.py) hears its silence and ends each with one `Error:`
line.

The host reads one word from process 0 on its stdin:
  shutdown  jax's own shutdown (the job ended normally): stop the service, exit;
  gone      process 0 leaves after the others (an error ended the job): exit as soon
            as it has (at EOF);
  (EOF)     process 0 died unannounced: keep serving for the heartbeat timeout, long
            enough for the others to hear of it and leave, then exit.
It ignores SIGINT (a Ctrl-C reaches every process of the terminal's group at once; the
service must outlive the others' last words) but not SIGTERM.

`hosting_apart()` is used around jax.distributed.initialize: it hands jax a stand-in
for the service jax would start in process 0. Where this jax is not laid out as known
(jax._src.distributed._jax.get_distributed_runtime_service), it changes nothing and
process 0 hosts the service, as jax does.
"""
import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time

_READY = "ready"
host: "HostedService | None" = None  # this process's, when it is process 0


class HostError(RuntimeError):
  """The coordination service could not be started: the message says why."""


class HostedService:
  """What jax keeps as its `service` in process 0: the host process's handle."""

  def __init__(self, proc: subprocess.Popen):
    self.proc = proc

  def _tell(self, word: str) -> None:
    try:
      self.proc.stdin.write(word + "\n")
      self.proc.stdin.flush()
    except (OSError, ValueError):
      pass  # it has ended already

  def shutdown(self) -> None:
    """jax.distributed's shutdown (after every client's shutdown barrier)."""
    self._tell("shutdown")
    try:
      self.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
      self.proc.kill()
      self.proc.wait()

  def gone(self) -> None:
    """Process 0 is about to leave after the others: the host exits when it has (were
    the service to end first, process 0's own client would abort it natively)."""
    self._tell("gone")


def _start(bind_address: str, num_processes: int, **options) -> HostedService:
  """Starts the host process and waits until its service listens.

  Raises:
    HostError: the host could not start the service (its reason: a port in use, say),
      or did not say within 120 s.
  """
  global host
  proc = subprocess.Popen(
      [sys.executable, "-m", "gralign_jax.coordinator",
       json.dumps(dict(options, bind_address=bind_address, num_processes=num_processes))],
      stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  # Its stderr is dropped: a line of the service's own after process 0's last one would
  # not be the last line any more; its reason for not starting comes on stdout.
  said = []
  reader = threading.Thread(target=lambda: said.append(proc.stdout.readline()), daemon=True)
  reader.start()
  reader.join(120)
  line = said[0].strip() if said else ""
  if line != _READY:
    proc.kill()
    code = proc.wait()
    if line:  # the service's own reason: most often the port
      port = bind_address.rsplit(":", 1)[-1]
      why = (f"{line}); expected port {port} free on this host: is another job using "
             "it? Give a free port in --coordinator_address (or $JAX_COORDINATOR_ADDRESS).")
    else:
      why = (f"its host process, {sys.executable} -m gralign_jax.coordinator, ended "
             f"(exit {code}) or hung without a word)")
    raise HostError(f"process 0 could not start the coordination service on "
                    f"{bind_address} ({why}")
  host = HostedService(proc)
  return host


class _JaxLib:
  """jaxlib's module as jax._src.distributed sees it, but for the service's start."""

  def __init__(self, jaxlib):
    self._jaxlib = jaxlib

  def __getattr__(self, name):
    return getattr(self._jaxlib, name)

  @staticmethod
  def get_distributed_runtime_service(bind_address, num_processes, **options):
    return _start(bind_address, num_processes, **options)


@contextlib.contextmanager
def hosting_apart():
  """Within it, jax.distributed.initialize in process 0 starts the service in a host
  process (module docstring)."""
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
    jaxlib = jax_distributed._jax  # pylint: disable=protected-access
    jaxlib.get_distributed_runtime_service  # pylint: disable=pointless-statement
  except (ImportError, AttributeError):
    yield
    return
  jax_distributed._jax = _JaxLib(jaxlib)  # pylint: disable=protected-access
  try:
    yield
  finally:
    jax_distributed._jax = jaxlib  # pylint: disable=protected-access


def _in_use(bind_address: str) -> bool:
  """Whether something listens on the port of `bind_address` ("[::]:PORT", "HOST:PORT").
  Asked before jaxlib binds it: its own failed bind crashes the process now and then
  (SIGSEGV in jaxlib 0.10) instead of raising."""
  address, port = bind_address.rsplit(":", 1)
  address = address.strip("[]")
  family = socket.AF_INET6 if ":" in address else socket.AF_INET
  try:
    with socket.socket(family, socket.SOCK_STREAM) as probe:
      probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT
      probe.bind((address, int(port)))
  except OSError as e:
    return e.errno == errno.EADDRINUSE
  return False


def _serve(options: dict) -> None:
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  linger = float(options.get("heartbeat_timeout") or 100)
  if _in_use(options["bind_address"]):
    print(f"port {options['bind_address'].rsplit(':', 1)[1]} is in use (something "
          "listens on it)", flush=True)
    return
  try:
    from jax._src.lib import _jax  # pylint: disable=g-import-not-at-top
    service = _jax.get_distributed_runtime_service(
        options.pop("bind_address"), options.pop("num_processes"), **options)
  except Exception as e:  # pylint: disable=broad-except  (said to process 0, which raises)
    print((str(e).strip().splitlines() or [type(e).__name__])[0], flush=True)
    return
  print(_READY, flush=True)
  word = sys.stdin.readline().strip()
  if word == "shutdown":
    service.shutdown()
  elif word == "gone":
    sys.stdin.read()  # until process 0 has exited
  else:  # EOF: process 0 died; the others hear of it from its silence
    time.sleep(linger)
  os._exit(0)  # pylint: disable=protected-access  (no teardown of a service in use)


if __name__ == "__main__":
  _serve(json.loads(sys.argv[1]))
