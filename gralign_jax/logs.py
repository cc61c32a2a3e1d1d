"""The one logger: what the library tells its user, and the training progress display.

  info(*args)       a line on stdout, from process 0 only (every host runs the same
                    program; one copy of each line is enough), through tqdm.write on a
                    terminal so that it does not break the progress bar
  warning(message)  a line from any process (a bad image, a kernel that does not
                    compile, are facts about that host), through the stdlib logger
                    "gralign_jax": absl's handler under the experiments' mains,
                    Python's own stderr handler elsewhere, pytest's caplog in tests
  Progress          a tqdm bar on a terminal, periodic lines otherwise
  shown(text)       a caption or file name, safe to print: control characters
                    escaped (no screen clearing, no forged result lines)

Library functions that talk take `log: Log = info`: a caller may pass another sink (a
list's append in a test, a notebook's display).
"""
import logging
import sys
import time
import unicodedata
from typing import Callable

Log = Callable[[str], None]
_LOGGER = logging.getLogger("gralign_jax")


def info(*args) -> None:
  """Process 0 prints; on a terminal through tqdm, so lines do not land on the bar."""
  import jax  # pylint: disable=g-import-not-at-top  (configs import this module)
  if jax.process_index() != 0:
    return
  if sys.stdout.isatty():
    from tqdm import tqdm  # pylint: disable=g-import-not-at-top
    tqdm.write(" ".join(map(str, args)))
  else:
    print(*args, flush=True)


def shown(text: str) -> str:
  """`text` from the user's files (a caption, a file name) as it may be printed.

  Control and format characters (escape sequences that clear the screen or set the
  terminal's title, newlines that would start a forged result line, bidi overrides
  that reorder it) are written as Python escapes (`\\x1b`, `\\n`, `\\u202e`), and a
  file name byte that is not UTF-8 (os.fsdecode's surrogate escape) as `\\xNN`, the
  byte itself. Everything else, accents and scripts included, stays as it is.
  """
  if text.isprintable():  # the common case, fast
    return text
  out = []
  for ch in text:
    code = ord(ch)
    if 0xDC80 <= code <= 0xDCFF:  # surrogateescape: the undecodable byte code - 0xDC00
      out.append(f"\\x{code - 0xDC00:02x}")
    elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
      out.append(ch)
    else:
      out.append(ch.encode("unicode_escape").decode("ascii"))
  return "".join(out)


def warning(message: str) -> None:
  """Said by whichever process meets it (grain workers included: no JAX call here)."""
  _LOGGER.warning(message)


def throughput_text(aux: dict) -> str:
  """throughput.Meter's fields of `aux`, as a log line's tail ("" when none)."""
  def num(x):
    return f"{x:,.0f}" if x >= 100 else f"{x:.3g}"
  parts = []
  if "step_time" in aux:
    parts += [f"{num(aux['step_time'])} s/step", f"{num(aux['examples_per_s'])} ex/s"]
  if "tflops" in aux:
    parts.append(f"{num(aux['tflops'])} TFLOP/s")
  if "mfu" in aux:
    parts.append(f"MFU {aux['mfu']:.1%}")
  return "".join(f"  {p}" for p in parts)


class Progress:
  """Training progress from `start` to `total` steps: a tqdm bar on a terminal (process
  0), else a line per update. `budget_seconds` > 0 (train.max_train_seconds) caps the
  ETA at the training time left."""

  def __init__(self, start: int, total: int, budget_seconds: float = -1.0,
               spent_seconds: float = 0.0):
    self.start, self.total = start, total
    self.budget_left = budget_seconds - spent_seconds if budget_seconds > 0 else None
    self.t0 = time.time()
    self.bar = None
    import jax  # pylint: disable=g-import-not-at-top
    if sys.stderr.isatty() and jax.process_index() == 0:
      from tqdm import tqdm  # pylint: disable=g-import-not-at-top
      self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True)

  def tick(self, step: int) -> None:
    if self.bar is not None:
      self.bar.update(step - self.bar.n)

  def update(self, step: int, aux: dict) -> None:
    if self.bar is not None:
      self.tick(step)
      self.bar.set_postfix(loss=f"{aux['loss']:.3f}", spread=f"{aux['score_spread']:.3f}",
                           **({"mfu": f"{aux['mfu']:.1%}"} if "mfu" in aux else {}))
      return
    elapsed = max(time.time() - self.t0, 1e-9)
    rate = (step - self.start) / elapsed
    eta = (self.total - step) / max(rate, 1e-9)
    if self.budget_left is not None:  # evaluations count here, not in the budget
      eta = min(eta, max(self.budget_left - elapsed, 0.0))
    false = (f"  beats false {aux['false_win']:.0%}" if "false_win" in aux else "")
    info(f"[train @ {step}/{self.total}] loss {aux['loss']:.4f}  score spread "
         f"{aux['score_spread']:.3f}{false}  {rate:.2f} steps/s  ETA {eta / 60:.1f} min"
         f"{throughput_text(aux)}")

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
