"""Orbax checkpoints of a run: the latest N (to resume) and the best on dev (to test).

Layout under `<workdir>/checkpoints/`:
  latest/<step>/{state, data, meta}   train state, input iterator state, run bookkeeping
  best/<step>/{state, data, meta}     the state that scored best on the dev split

Orbax writes each step into a temporary folder and renames it when complete, so a
crash or `kill -9` mid-save leaves the previous checkpoint intact; a half-written
folder is never picked up as the latest. A step that is complete but damaged
afterwards (a truncated array file, an emptied metadata file) is passed over on
restore: the newest step that restores is used, and the damaged ones are moved to
`checkpoints/unreadable/` (never deleted), each named in one line.
"""
import time
from typing import Any, Callable, NamedTuple

import jax
import orbax.checkpoint as ocp

from gralign_jax import logs
from gralign_jax import paths
from gralign_jax import watchdog


class Restored(NamedTuple):
  step: int
  state: Any
  data: Any          # the input iterator's state (JSON)
  meta: dict         # best dev rSum so far, its step, ...


def _manager(path: str, keep: int, create: bool) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=create,
                                                 read_only=not create))


def abstract(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state`: where to restore onto (the current mesh)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class CheckpointError(RuntimeError):
  """No checkpoint of a run can be restored, or one could not be written."""


def _reason(e: BaseException) -> str:
  """An exception in one line: its type and the first line of its message."""
  lines = str(e).strip().splitlines()
  first = lines[0].split(" See full TensorStore details")[0] if lines else ""
  return f"{type(e).__name__}: {first[:200]}".rstrip(": ")


def _save_failed(manager, e: BaseException) -> CheckpointError:
  return CheckpointError(
      f"Saving a checkpoint under {manager.directory} failed ({_reason(e)}); the "
      "checkpoints saved before it are intact, and a rerun resumes from the newest.")


class Checkpointer:
  """Saves and restores the train state with the input pipeline's position."""

  def __init__(self, directory: str, keep: int = 2, read_only: bool = False):
    """read_only: restore only (retrieval); nothing under `directory` is written.

    Raises:
      CheckpointError: $GRALIGN_SAVE_TIMEOUT is not whole seconds.
    """
    self.directory = paths.resolve(directory)
    # Waiting on a save (the one before the next, or all at the end) has a deadline: a
    # bucket that stops answering would keep orbax's writes retrying for good.
    try:
      self.save_timeout = watchdog.seconds_from_env("GRALIGN_SAVE_TIMEOUT", 600)
    except ValueError as e:
      raise CheckpointError(str(e)) from e
    self.read_only = read_only
    self._latest = _manager(paths.join(self.directory, "latest"), keep, not read_only)
    self._best = _manager(paths.join(self.directory, "best"), 1, not read_only)
    self._structure_ok = False  # a step restored onto the caller's state structure

  def has_checkpoints(self) -> bool:
    return bool(self._latest.all_steps() or self._best.all_steps())

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def save(self, step: int, state: Any, data_state: Any, meta: dict,
           best: bool = False) -> None:
    """Asynchronous: returns once the arrays are copied off the devices (after the
    previous save has finished, within save_timeout)."""
    manager = self._best if best else self._latest
    with self._deadline():
      # One save in flight at a time: two managers saving the same step at once can
      # cross their barriers between hosts (seen with two JAX processes).
      (self._latest if best else self._best).wait_until_finished()
      try:  # orbax raises here a failure of the previous, still pending, save
        manager.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state),
            meta=ocp.args.JsonSave(meta)), force=True)
      except Exception as e:  # pylint: disable=broad-exception-caught
        raise _save_failed(manager, e) from e

  def _deadline(self) -> watchdog.Deadline:
    return watchdog.Deadline(
        self.save_timeout, f"waiting for the checkpoint writes under {self.directory}",
        f"the checkpoint writes under {self.directory} did not finish within "
        f"{self.save_timeout} s: the storage stopped answering (a bucket gone, a lost "
        "mount?). The checkpoints completed before are intact, and a rerun resumes from "
        "the newest. (A slower store may need a longer $GRALIGN_SAVE_TIMEOUT.)",
        logs.info, every=60)

  def _restore(self, manager, step, like):
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(like)),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return Restored(step, out["state"], out["data"], dict(out["meta"]))

  def _newest_restorable(self, manager, kind: str, restore: Callable[[int], Any],
                         log: Callable[[str], None]):
    """restore(step) for the newest step that restores; None when there is no step.

    Steps newer than the one restored are damaged (the same structure restored from an
    older step, here or from latest/): each is moved aside and named. When no step
    restores and no other did, nothing is moved (the cause may be this code or config,
    not the files) and the error lists each step.
    """
    failed = []
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = restore(step)
      except Exception as e:  # pylint: disable=broad-exception-caught
        failed.append((step, _reason(e)))
        continue
      self._structure_ok = True
      self._pass_over(manager, kind, failed, f"using step {step}", log)
      return out
    if failed and self._structure_ok:
      self._pass_over(manager, kind, failed, "none left there", log)
      return None
    if failed:
      raise CheckpointError(
          f"No checkpoint under {paths.join(self.directory, kind)} can be restored: "
          + "; ".join(f"step {s}: {why}" for s, why in failed)
          + ". Nothing was moved or deleted; start a new --workdir, or fix the files.")
    return None

  def _pass_over(self, manager, kind, failed, then: str, log) -> None:
    for bad, why in failed:
      if self.read_only:
        log(f"Checkpoint {kind}/{bad} cannot be restored ({why}); {then}.")
        continue
      moved = self._set_aside(manager, kind, bad)
      log(f"Checkpoint {kind}/{bad} cannot be restored ({why}); moved to {moved}, "
          f"{then}.")
    if failed and not self.read_only:
      manager.reload()

  def _set_aside(self, manager, kind: str, step: int) -> str:
    """Moves a damaged step folder to checkpoints/unreadable/ (never deletes it)."""
    target_dir = paths.join(self.directory, "unreadable")
    paths.makedirs(target_dir)
    target = paths.join(target_dir, f"{kind}-{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    paths.move(paths.join(str(manager.directory), str(step)), target)
    return target

  def restore_latest(self, like: Any, log: Callable[[str], None] = print
                     ) -> Restored | None:
    """The newest restorable latest checkpoint, onto `like`'s shardings; None if none."""
    return self._newest_restorable(self._latest, "latest",
                                   lambda s: self._restore(self._latest, s, like), log)

  def restore_best(self, like: Any, log: Callable[[str], None] = print
                   ) -> Restored | None:
    return self._newest_restorable(self._best, "best",
                                   lambda s: self._restore(self._best, s, like), log)

  def restore_params(self, like_params: Any, which: str = "best",
                     log: Callable[[str], None] = print) -> Restored | None:
    """The trained parameters alone, onto `like_params`' shardings: read from the
    newest restorable checkpoint of `which` ("best" or "latest"; best falls back to
    latest when it has none). No optimiser state is read or needed. -> Restored with
    state {"params": ...} and data None; None if there is no checkpoint."""
    target = {"params": abstract(like_params)}

    def restore(manager, step):
      out = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True),
          meta=ocp.args.JsonRestore()))
      return Restored(step, out["state"], None, dict(out["meta"]))

    kinds = [("best", self._best)] if which == "best" else []
    for kind, manager in kinds + [("latest", self._latest)]:
      found = self._newest_restorable(manager, kind,
                                      lambda s, m=manager: restore(m, s), log)
      if found is not None:
        return found
    return None

  def best_meta(self, log: Callable[[str], None] = print) -> dict | None:
    """The best checkpoint's bookkeeping alone (no arrays read)."""
    def meta(step):
      out = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
      return dict(out["meta"])
    return self._newest_restorable(self._best, "best", meta, log)

  def wait(self) -> None:
    """Blocks until pending saves are on disk (within save_timeout); raises
    CheckpointError if one failed."""
    if self.read_only:
      return
    with self._deadline():
      for manager in (self._latest, self._best):
        try:
          manager.wait_until_finished()
        except Exception as e:  # pylint: disable=broad-exception-caught
          raise _save_failed(manager, e) from e

  def close(self) -> None:
    """Waits for pending saves and closes; safe to call on any exit path, twice."""
    try:
      self.wait()
    finally:
      for manager in (self._latest, self._best):
        try:
          manager.close()
        except Exception:  # pylint: disable=broad-exception-caught
          pass  # the failure was raised by wait() above
