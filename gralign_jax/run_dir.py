"""Guards of a run directory: one run at a time, and a record that stays true.

- `WorkdirLock`: `<workdir>/run.lock` names the process that trains there (host, pid,
  start time). A second run in the same workdir is refused with one line naming the
  holder; a lock whose process is gone (same host, pid no longer that process) is
  stale, taken over and said so. Released on every exit path.
- `check_resume`: a workdir with checkpoints is described by its `config.json`. A
  resumed run must use the same config; changed keys are refused in one message
  listing each (saved -> new). `--allow_config_changes` lets the changes that cannot
  alter what the checkpoints hold (evaluation, logging, workers, training length, a
  moved data folder) through; they are appended to `config_changes.jsonl`, and
  `config.json` is never rewritten for a run whose checkpoints it describes.
- `keep_tokenizer`: the run's tokenizer is copied into `<workdir>/tokenizer/` once, so
  the run can be used without its data set (retrieval from another folder or machine);
  a resume whose tokenizer differs in content (a sha256 of its full definition) from
  the saved one is refused, naming both.
- `resolve_paths`: config.json keeps the paths as the run saw them, absolute.
"""
import hashlib
import json
import os
import socket
import tempfile
import time

from gralign_jax import configs
from gralign_jax import paths
from gralign_jax import processes


TOKENIZER_DIR = "tokenizer"


class RunDirError(RuntimeError):
  """The workdir cannot be used as asked: the message says why and what to do."""


# Keys (or prefixes ending in '.') whose change on resume leaves the saved state
# meaningful: how the run is evaluated and logged, how fast data is read, how long it
# goes on (the lr schedule is in epochs, not in total steps), where the data now lives,
# how much of the batch is encoded at once (the same loss; a smaller card), what is
# profiled.
SAFE_ON_RESUME = (
    "eval.", "train.log_every", "train.ckpt_every", "train.keep_checkpoints",
    "train.grad_cache_chunks", "train.profile_steps",
    "train.num_steps", "train.num_epochs", "train.max_train_seconds",
    "data.num_workers", "data.num_threads", "data.prefetch", "data.check_images",
    "data.skip_bad_images", "data.root", "data.tokenizer",
)


# ------------------------------------------------------------------------------------
# The lock
# ------------------------------------------------------------------------------------
class WorkdirLock:
  """`with WorkdirLock(workdir):` - exclusive use of a run directory by this process."""

  NAME = "run.lock"

  def __init__(self, workdir: str):
    self.path = paths.join(workdir, self.NAME)
    self.held = False
    self.message = ""  # what acquire() found, for the log (a stale lock taken over)

  def _create(self) -> bool:
    return paths.create_exclusive(self.path, json.dumps(processes.owner_record()))

  def acquire(self) -> "WorkdirLock":
    for _ in range(3):  # a stale lock removed by a racing run: look again
      if self._create():
        self.held = True
        return self
      try:
        holder = json.loads(paths.read_text(self.path))
        host, pid = str(holder["host"]), int(holder["pid"])
      except FileNotFoundError:
        continue
      except (OSError, ValueError, KeyError, TypeError) as e:
        raise RunDirError(
            f"{self.path} exists but cannot be read as a lock ({type(e).__name__}); if "
            "no run is using this workdir, delete that file and start again.") from e
      if processes.surely_gone(holder):
        self.message = (f"Took over a stale lock of {self.path}: pid {pid} on {host} "
                        f"(since {holder.get('since', '?')}) is gone.")
        paths.remove(self.path)
        continue
      where = "this host" if host == socket.gethostname() else f"host {host}"
      raise RunDirError(
          f"Another run is using workdir {paths.parent(self.path)}: pid {pid} on "
          f"{where}, since {holder.get('since', '?')} ({self.path}). Wait for it to end, "
          "pick another --workdir, or, if that process is gone, delete the lock file.")
    raise RunDirError(f"Could not take the lock {self.path}: it keeps reappearing.")

  def release(self) -> None:
    if not self.held:
      return
    self.held = False
    try:
      holder = json.loads(paths.read_text(self.path))
      mine = (holder.get("pid"), holder.get("host")) == (os.getpid(), socket.gethostname())
    except (OSError, ValueError, AttributeError):
      mine = False
    if mine:
      paths.remove(self.path)

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


# ------------------------------------------------------------------------------------
# The saved config
# ------------------------------------------------------------------------------------
def flatten(tree: dict, prefix: str = "") -> dict:
  """{"a": {"b": 1}} -> {"a.b": 1}."""
  out = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


_ABSENT = "(absent)"


def config_changes(saved: dict, new: dict) -> dict:
  """Dotted key -> (saved value, new value) for every key that differs; a key the saved
  config predates counts with its configs.ADDED_KEYS value."""
  a, b = flatten(saved), flatten(new)
  a.update({k: v for k, v in configs.ADDED_KEYS.items() if k not in a and k in b})
  return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT))
          for k in sorted(set(a) | set(b)) if a.get(k, _ABSENT) != b.get(k, _ABSENT)}


def is_safe(key: str) -> bool:
  return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_ON_RESUME)


def _describe(changes: dict) -> str:
  return "; ".join(f"{k}: {json.dumps(old)} -> {json.dumps(new)}"
                   for k, (old, new) in changes.items())


def check_resume(workdir: str, config_json: str, has_checkpoints: bool,
                 allow_changes: bool, step: int | None = None) -> dict:
  """Compares the run's config with the one saved in `workdir`; writes config.json when
  it describes no checkpoints yet. -> the accepted changes (key -> (saved, new)).

  Raises:
    RunDirError: checkpoints exist and the config differs from the saved one (in a way
      that `allow_changes` does not cover), naming every changed key.
  """
  path = paths.join(workdir, "config.json")
  new = json.loads(config_json)
  if not has_checkpoints or not paths.exists(path):
    paths.write_text(path, config_json)
    return {}
  try:
    saved = json.loads(paths.read_text(path))
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path} describes the checkpoints in this workdir but cannot be "
                      f"read ({type(e).__name__}: {e}); restore it, or start a new "
                      "--workdir.") from e
  changes = config_changes(saved, new)
  if not changes:
    return {}
  unsafe = {k: v for k, v in changes.items() if not is_safe(k)}
  if unsafe or not allow_changes:
    shown = unsafe if allow_changes else changes
    advice = ("start a new --workdir for a different model or training"
              if unsafe else "pass --allow_config_changes to resume with them")
    raise RunDirError(
        f"The config differs from the one this workdir's checkpoints were trained with "
        f"({path}) in {len(shown)} key(s): {_describe(shown)}. Resume with the saved "
        f"config, or {advice}.")
  paths.append_text(paths.join(workdir, "config_changes.jsonl"), json.dumps(
      {"step": step, "time": time.time(),
       "changes": {k: list(v) for k, v in changes.items()}}) + "\n")
  return changes


# ------------------------------------------------------------------------------------
# Paths and the tokenizer: what the run needs besides its checkpoints
# ------------------------------------------------------------------------------------
def resolve_paths(config) -> None:
  """Makes the config's local paths absolute, as this process sees them (in place):
  data.root, and data.tokenizer / model.<part>.weights where they name a folder
  (a Hugging Face model id stays an id)."""
  config.data.root = os.path.abspath(config.data.root)
  if config.data.tokenizer and os.path.isdir(config.data.tokenizer):
    config.data.tokenizer = os.path.abspath(config.data.tokenizer)
  for part in ("vision", "text"):
    weights = config.model[part].get("weights", "")
    if weights and os.path.isdir(weights):
      config.model[part].weights = os.path.abspath(weights)


def tokenizer_digest(tokenizer) -> str:
  """sha256 of everything that decides how a tokenizer cuts text (its full JSON
  definition: normaliser, pre-tokeniser, model and vocabulary, special tokens)."""
  backend = getattr(tokenizer, "backend_tokenizer", None)
  if backend is not None:
    definition = backend.to_str()
  else:  # a slow (Python) tokenizer: its class and vocabulary
    vocab = sorted(tokenizer.get_vocab().items())
    definition = json.dumps([type(tokenizer).__name__, vocab])
  return hashlib.sha256(definition.encode("utf-8")).hexdigest()


def keep_tokenizer(workdir: str, tokenizer, source: str, has_checkpoints: bool) -> str:
  """Saves `tokenizer` (loaded from `source`) as `<workdir>/tokenizer/` once; a run
  with checkpoints must keep the same one. -> the saved folder.

  Raises:
    RunDirError: the run has checkpoints and its saved tokenizer differs from `source`.
  """
  from gralign_jax.data import text  # pylint: disable=g-import-not-at-top
  path = paths.join(workdir, TOKENIZER_DIR)
  if paths.isdir(path) and has_checkpoints:
    with paths.local_folder(path) as local:
      saved = tokenizer_digest(text.load_tokenizer(local))
    new = tokenizer_digest(tokenizer)
    if saved != new:
      raise RunDirError(
          f"The tokenizer the config names ({source}, sha256 {new[:12]}) differs from "
          f"the one this run was trained with ({path}, sha256 {saved[:12]}). Resume "
          f"with that one (--config.data.tokenizer={path}), or start a new --workdir.")
    return path
  if paths.is_remote(path):  # no folder rename in a bucket: each file is one upload
    with tempfile.TemporaryDirectory() as local:
      tokenizer.save_pretrained(local)
      paths.upload_folder(local, path)
    return path
  tmp = f"{path}.tmp{os.getpid()}"
  tokenizer.save_pretrained(tmp)
  if os.path.isdir(path):  # written by an earlier start that saved no checkpoint
    old = f"{path}.old{os.getpid()}"
    os.rename(path, old)
    os.rename(tmp, path)
    for name in os.listdir(old):
      os.remove(os.path.join(old, name))
    os.rmdir(old)
  else:
    os.rename(tmp, path)
  return path
