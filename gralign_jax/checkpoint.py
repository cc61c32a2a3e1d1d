"""Orbax checkpoints of a run: the latest N (to resume) and the best on dev (to test).

Layout under `<workdir>/checkpoints/`:
  latest/<step>/{state, data, meta}   train state, input iterator state, run bookkeeping
  best/<step>/{state, data, meta}     the state that scored best on the dev split

Orbax writes each step into a temporary folder and renames it when complete, so a
crash or `kill -9` mid-save leaves the previous checkpoint intact; a half-written
folder is never picked up as the latest.
"""
import os
from typing import Any, NamedTuple

import jax
import orbax.checkpoint as ocp


class Restored(NamedTuple):
  step: int
  state: Any
  data: Any          # the input iterator's state (JSON)
  meta: dict         # best dev rSum so far, its step, ...


def _manager(path: str, keep: int) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      path, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))


def abstract(state: Any) -> Any:
  """Shapes, dtypes and shardings of `state`: where to restore onto (the current mesh)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)


class Checkpointer:
  """Saves and restores the train state with the input pipeline's position."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._latest = _manager(os.path.join(self.directory, "latest"), keep)
    self._best = _manager(os.path.join(self.directory, "best"), 1)

  def save(self, step: int, state: Any, data_state: Any, meta: dict,
           best: bool = False) -> None:
    """Asynchronous: returns once the arrays are copied off the devices."""
    manager = self._best if best else self._latest
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def _restore(self, manager, step, like):
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract(like)),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    return Restored(step, out["state"], out["data"], dict(out["meta"]))

  def restore_latest(self, like: Any) -> Restored | None:
    """The latest checkpoint restored onto `like`'s shardings, or None when there is none."""
    step = self._latest.latest_step()
    return None if step is None else self._restore(self._latest, step, like)

  def restore_best(self, like: Any) -> Restored | None:
    step = self._best.latest_step()
    return None if step is None else self._restore(self._best, step, like)

  def best_meta(self) -> dict | None:
    """The best checkpoint's bookkeeping alone (no arrays read)."""
    step = self._best.latest_step()
    if step is None:
      return None
    out = self._best.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return dict(out["meta"])

  def wait(self) -> None:
    self._latest.wait_until_finished()
    self._best.wait_until_finished()

  def close(self) -> None:
    self._latest.close()
    self._best.close()
