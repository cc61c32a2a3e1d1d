"""Deadlines for waits that native code could make endless.

Some waits cannot be interrupted from Python: jax.distributed connecting (its own
deadline is a C++ abort), orbax waiting for a checkpoint's writes to a bucket that no
longer answers (tensorstore retries on). A Deadline watches such a wait from a thread:
it says what is being waited for every `every` seconds, and at `timeout` prints one
`Error:` line and ends the process (os._exit: the main thread is inside native code,
and the checkpoints saved before the wait are intact).

  with watchdog.Deadline(300, "waiting for the coordinator", "the coordinator ...", log):
    jax.distributed.initialize(...)
"""
import os
import sys
import threading
import time
from typing import Callable


def seconds_from_env(name: str, default: int) -> int:
  """$name as whole seconds (1 or more), else `default`.

  Raises:
    ValueError: the variable is set to something else, said with its name.
  """
  value = os.environ.get(name, "").strip()
  if not value:
    return default
  try:
    seconds = int(value)
  except ValueError:
    seconds = 0
  if seconds < 1:
    raise ValueError(f"${name}={value!r}: expected whole seconds, 1 or more.")
  return seconds


class Deadline:
  """A context manager: `log(f"... still {waiting} (S s of T)")` every `every` s while
  the block runs; "Error: {error}" on stderr and exit status 1 once it has run
  `timeout` s."""

  def __init__(self, timeout: float, waiting: str, error: str,
               log: Callable[[str], None], every: float = 30):
    self.timeout, self.waiting, self.error, self.log, self.every = (
        timeout, waiting, error, log, every)
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True, name="deadline")

  def _watch(self) -> None:
    start = time.monotonic()
    while True:
      left = self.timeout - (time.monotonic() - start)
      if self._done.wait(max(0.0, min(self.every, left))):
        return
      waited = time.monotonic() - start
      if waited >= self.timeout:
        sys.stdout.flush()
        print(f"Error: {self.error}", file=sys.stderr, flush=True)
        os._exit(1)  # pylint: disable=protected-access  (the main thread is in C++)
      self.log(f"still {self.waiting} ({waited:.0f} s of {self.timeout:.0f})")

  def __enter__(self) -> "Deadline":
    self._thread.start()
    return self

  def __exit__(self, *exc) -> None:
    self._done.set()
