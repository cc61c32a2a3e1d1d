"""Where to write a set: nothing lost, nothing half-written.

The set is written into a hidden sibling folder, <parent>/.<name>.partial, stamped with
the writing process (processes.owner_record: host, pid, start time), and renamed to
root only once complete: an interrupted run leaves no half-written root, and the next
run on that host removes the leftover once its process is gone (processes.surely_gone,
the check the run directory's lock uses). Only a root that is absent, empty or an
earlier set whose files are all in its own "files" list is written to; that earlier set
is moved aside (<parent>/.<name>.old) and only its listed files are deleted. Any other
file in root makes `generate` refuse, naming it: it never deletes what it did not write.
"""
import json
import os
import posixpath
import re
import shutil

from gralign_jax import processes
from gralign_jax.data.synthetic.layout import write_set
from gralign_jax.data.synthetic.scenes import dump_json
from gralign_jax.data.synthetic.vocabulary import MARKER, OWNER_STAMP

def is_complete(root: str) -> bool:
  """True when `generate` finished writing `root` (its marker file exists)."""
  return os.path.isfile(os.path.join(root, MARKER))


_ACTIVE = set()  # partial folders this process is writing right now


def _manifest(folder):
  """The set of files an earlier `generate` wrote into folder, or None if unknown."""
  try:
    with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return set(files) if isinstance(files, list) else None


def _raise(error):
  raise error


def _foreign(folder, listed):
  """Sorted files of folder that `listed` does not hold, plus (ending in "/") links to
  folders and empty folders that no listed file lies in. The marker is always ours."""
  allowed = set()  # every folder above a listed file
  for p in listed:
    d = posixpath.dirname(p)
    while d and d not in allowed:
      allowed.add(d)
      d = posixpath.dirname(d)
  out = []
  for d, dirs, names in os.walk(folder, onerror=_raise):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    rel = "" if rel == "." else rel + "/"
    # os.walk does not enter links to folders; we never write one.
    out += [rel + n + "/" for n in dirs if os.path.islink(os.path.join(d, n))]
    if rel and rel[:-1] not in allowed and not dirs and not names:
      out.append(rel)
    out += [rel + n for n in names if rel + n not in listed and rel + n != MARKER]
  return sorted(out)


# Names the generator gives its files: listed after the others in an error message,
# which are more likely the user's.
_LAYOUT = re.compile(r"(images/\d{6}\.jpg|dataset_synthetic\.json|id_mapping\.json|"
                     r"scenes\.json|precomp/(train|dev|test)_(ids|caps)\.txt|"
                     r"tokenizer/[^/]+)(\.tmp)?")


def _describe(paths, n=5):
  """A few of `paths`, those not named like the generator's files first."""
  odd = [p for p in paths if not _LAYOUT.fullmatch(p)]
  like = len(paths) - len(odd)
  text = ", ".join(odd[:n]) + (f" and {len(odd) - n} more" if len(odd) > n else "")
  if like:
    text += f"{'; also ' if odd else ''}{like} file(s) named like the synthetic set's"
  return text


def _remove_own(folder) -> bool:
  """Deletes what folder's manifest lists (marker last) and the folders left empty.

  Anything else stays, with the folders that hold it. True when folder is gone.
  """
  listed = _manifest(folder) or set()
  for d, dirs, names in os.walk(folder, topdown=False):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    rel = "" if rel == "." else rel + "/"
    for n in names:
      if rel + n in listed:
        os.remove(os.path.join(d, n))
    for n in dirs:
      try:
        os.rmdir(os.path.join(d, n))
      except OSError:
        pass  # not empty (something not ours) or a link: it stays
  # The marker goes last, so that an interrupted removal can be resumed from its list.
  if os.path.isfile(os.path.join(folder, MARKER)):
    os.remove(os.path.join(folder, MARKER))
  try:
    os.rmdir(folder)
  except OSError:
    pass
  return not os.path.lexists(folder)


def _check_target(root, shown) -> str:
  """"absent", "empty" or "ours" (an earlier set whose files are all in its manifest).

  Raises when generating into root could delete something generate did not write.
  """
  if not os.path.exists(root):
    return "absent"
  if not os.path.isdir(root):
    raise NotADirectoryError(
        f"Cannot generate the synthetic set into {shown!r}: it is a file; expected a "
        "folder that is new, empty or holds an earlier synthetic set.")
  try:
    if not os.listdir(root):
      return "empty"
    listed = _manifest(root)
    foreign = _foreign(root, listed or set())
  except PermissionError as e:
    raise PermissionError(
        f"Cannot generate the synthetic set into {shown!r}: {e.filename} cannot be read "
        "(permission denied). Pick a folder you can read and write.") from e
  if foreign:
    why = (f"has no list of generated files ({MARKER} is missing or from an older "
           "version)" if listed is None else "holds files the generator did not write")
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {shown!r}: the folder is not empty "
        f"and {why}: {_describe(foreign)}. The generator deletes only files it wrote "
        "itself. Pick an empty or new folder or, to train on the folder as it is, set "
        "--config.data.synthetic.generate=false.")
  return "ours"


def _owner_alive(owner, partial) -> bool:
  """False only when the stamp surely names a process that is gone (this process
  counts as gone for a folder it is not writing now: an earlier failed call's)."""
  if isinstance(owner, dict) and owner.get("pid") == os.getpid():
    return partial in _ACTIVE
  return not processes.surely_gone(owner)


def _clear_leftover(path, shown):
  """Removes a partial or set-aside folder of an earlier run if it is surely ours."""
  if not os.path.lexists(path):
    return
  if not os.path.isdir(path):
    raise FileExistsError(f"Cannot generate the synthetic set into {shown!r}: {path} is "
                          "in the way (a file where generate keeps its work); delete it.")
  try:
    with open(os.path.join(path, OWNER_STAMP), encoding="utf-8") as f:
      owner = json.load(f)
  except FileNotFoundError:
    owner = None
  except (OSError, ValueError):
    owner = "unreadable"
  if owner is not None:
    who = (f"(pid {owner.get('pid')} on host {owner.get('host')})"
           if isinstance(owner, dict) else f"(its {OWNER_STAMP} cannot be read)")
    if not isinstance(owner, dict) or _owner_alive(owner, path):
      raise FileExistsError(
          f"Refusing to generate the synthetic set into {shown!r}: another process "
          f"{who} is generating into {path}. Wait for it to finish or, if no such "
          "process runs, delete that folder.")
    shutil.rmtree(path)  # a dead process of this host wrote it, and only it
    return
  # No stamp: empty (its owner stopped right after creating it), or a finished set that
  # was not yet renamed, or a set moved aside: ours when its manifest lists everything.
  foreign = _foreign(path, _manifest(path) or set())
  if foreign or not _remove_own(path):
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {shown!r}: {path}, left by an "
        f"earlier run, holds files the generator did not write: {_describe(foreign)}. "
        "Move them elsewhere or delete that folder.")


def generate(root: str, *, num_train: int = 8000, num_dev: int = 500,
             num_test: int = 1000, image_size: int = 64, seed: int = 0,
             vocab_size: int = 1000) -> None:
  """Writes the synthetic scenes set to `root` (layout in the module docstring).

  Raises:
    ValueError: a split size or image_size is too small.
    NotADirectoryError: root is a file.
    PermissionError: root cannot be read.
    FileExistsError: root holds files generate did not write, or another process is
      generating the set there.
  """
  if min(num_train, num_dev, num_test) < 1:
    raise ValueError(f"Every split needs at least one image, got train={num_train}, "
                     f"dev={num_dev}, test={num_test}.")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16 to draw shapes, got {image_size}.")
  # Through links, so that the sibling folders lie on the target's file system.
  real = os.path.realpath(root)
  parent, name = os.path.split(real)
  partial = os.path.join(parent, f".{name}.partial")
  old = os.path.join(parent, f".{name}.old")
  _check_target(real, root)  # fail before the work, not after it
  _clear_leftover(partial, root)
  _clear_leftover(old, root)
  os.makedirs(parent, exist_ok=True)
  try:
    os.mkdir(partial)
  except FileExistsError:
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {root!r}: another process has just "
        f"started generating into {partial}.") from None
  _ACTIVE.add(partial)
  try:
    with open(os.path.join(partial, OWNER_STAMP), "wb") as f:
      f.write(dump_json(processes.owner_record()))
    write_set(partial, num_train=num_train, num_dev=num_dev, num_test=num_test,
               image_size=image_size, seed=seed, vocab_size=vocab_size)
    state = _check_target(real, root)  # again: something may have arrived meanwhile
    os.remove(os.path.join(partial, OWNER_STAMP))
    if state == "empty":
      os.rmdir(real)
    elif state == "ours":
      os.rename(real, old)  # the earlier set, whole, out of the way in one step
    try:
      os.rename(partial, real)
    except BaseException:
      if state == "ours":
        os.rename(old, real)
      raise
  except BaseException:
    # Interrupted or failed: no half-written root, and no leftover to trip the next run.
    shutil.rmtree(partial, ignore_errors=True)
    raise
  finally:
    _ACTIVE.discard(partial)
  if state == "ours":
    _remove_own(old)
