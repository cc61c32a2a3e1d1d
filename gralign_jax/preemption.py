"""Preemption: SIGTERM finishes the current step, saves it, and exits "resume me".

A spot or preemptible Cloud TPU gets SIGTERM some 30 s before it goes; SLURM sends it
before the time limit (`--signal`); a user's `kill` sends it too. The trainer asks
`stop_at(step)` after every step: once it is True, it saves that step's checkpoint
(waiting for the save), and raises Preempted, which every entry point turns into the
exit code EXIT_CODE. Running the same command again resumes from that checkpoint, to
the same parameters an uninterrupted run ends with.

One process: a SIGTERM handler sets a flag (the previous handler comes back at close).
Several processes (jax.distributed): JAX's own preemption sync manager catches SIGTERM
in whichever process gets it and agrees on one step for all of them
(multihost_utils.reached_preemption_sync_point), so every process saves the same step.
"""
import signal
import threading

import jax

# sysexits.h's EX_TEMPFAIL, "a temporary failure; the user is invited to retry": the
# run was stopped from outside and saved, and the same command resumes it.
EXIT_CODE = 75


class Preempted(Exception):
  """Training stopped on a preemption notice after saving `step`."""

  def __init__(self, step: int, workdir: str):
    self.step = step
    super().__init__(
        f"Preempted (SIGTERM) at step {step}: its checkpoint is saved in {workdir}; the "
        f"same command resumes from it (exit code {EXIT_CODE}).")


def _sync_manager():
  try:
    from jax._src import distributed as jax_distributed  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  return getattr(jax_distributed.global_state, "preemption_sync_manager", None)


class Notice:
  """Whether the job has been told to stop, between start() and close()."""

  def __init__(self):
    self._flag = threading.Event()
    self._previous = None
    self._shared = jax.process_count() > 1 and _sync_manager() is not None

  def start(self) -> "Notice":
    if not self._shared and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda *_: self._flag.set())
    return self

  def close(self) -> None:
    """SIGTERM acts as before again (idempotent)."""
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
      self._previous = None

  def stop_at(self, step: int) -> bool:
    """Whether to save `step` and stop: called after every step, by every process."""
    if self._shared:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      return multihost_utils.reached_preemption_sync_point(step)
    return self._flag.is_set()
