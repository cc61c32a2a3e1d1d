"""`train.profile_steps="A:B"`: a jax.profiler trace of train steps A to B (inclusive),
written under WORKDIR/profile for TensorBoard's profile plugin (`tensorboard
--logdir=WORKDIR/profile`; the trace is `plugins/profile/<time>/*.xplane.pb`). Each
step is a StepTraceAnnotation, so the plugin's step view splits the trace by step.
Process 0 traces; the others train on untraced.
"""
import jax

from gralign_jax import configs
from gralign_jax import paths


def parse(spec: str) -> tuple[int, int] | None:
  """"A:B" -> (A, B), 1 <= A <= B; "" -> None. Raises ConfigError otherwise."""
  if not spec:
    return None
  first, sep, last = str(spec).partition(":")
  try:
    steps = (int(first), int(last)) if sep else None
  except ValueError:
    steps = None
  if steps is None or not 1 <= steps[0] <= steps[1]:
    raise configs.ConfigError(
        f"config.train.profile_steps={spec!r}: expected FIRST:LAST, the train steps to "
        "trace (1 <= FIRST <= LAST, e.g. '10:12'), or '' for no trace.")
  return steps


class StepTrace:
  """before(step) / after(step, state) around each train step; close() at the end."""

  def __init__(self, spec: str, workdir: str, log):
    self.steps = parse(spec)
    self.folder = paths.join(workdir, "profile")
    self.log, self._annotation, self._tracing = log, None, False
    if self.steps and paths.is_remote(workdir):
      raise configs.ConfigError(
          f"config.train.profile_steps={spec!r} with the workdir {workdir}: the trace "
          "is written to a local folder; profile a run whose --workdir is local.")
    if jax.process_index() != 0:
      self.steps = None

  def before(self, step: int) -> None:
    if not self.steps or not self.steps[0] <= step <= self.steps[1]:
      return
    if not self._tracing:
      paths.makedirs(self.folder)
      jax.profiler.start_trace(self.folder)
      self._tracing = True
      self.log(f"Profiling train steps {self.steps[0]}-{self.steps[1]} -> {self.folder}")
    self._annotation = jax.profiler.StepTraceAnnotation("train", step_num=step)
    self._annotation.__enter__()

  def after(self, step: int, state) -> None:
    if self._annotation is None:
      return
    jax.block_until_ready(state)  # the step's device work inside its annotation
    self._annotation.__exit__(None, None, None)
    self._annotation = None
    if step == self.steps[1]:
      self.close()

  def close(self) -> None:
    if self._tracing:
      jax.profiler.stop_trace()
      self._tracing = False
      self.log(f"Profile written: tensorboard --logdir={self.folder}")
