"""One path layer for a run's files: a local folder or a bucket (`gs://bucket/run`).

Every file the trainer, the evaluator, the gallery cache and retrieval read or write
in a workdir goes through these functions (orbax checkpoints take the same strings).
Paths are strings: a remote one keeps its scheme, a local one is made absolute.
Remote paths go through fsspec (gcsfs for gs://: the filesystem etils.epath gives
orbax and grain), local ones through os, so that a local run keeps a POSIX disk's
guarantees. Listings are read fresh from the bucket each time: another process or host
may have written since (fsspec would otherwise answer from its listing cache).

What a bucket lacks, and what is done instead:
- replacing a file by renaming a temporary one: an object upload is atomic by itself
  (a reader sees the old object or the new one, never half), so a remote write is one
  upload;
- append: an object cannot grow, so `append_text` rewrites it with the new text
  (metrics.jsonl and config_changes.jsonl have one writer, process 0);
- exclusive create (O_EXCL): an upload on condition that no object exists
  (ifGenerationMatch=0), which GCS refuses with 412 when one does;
- folders: a folder is a prefix; it exists once an object lies under it, `makedirs`
  has nothing to do, and `move` is copy-then-delete (not atomic: used only to set a
  damaged checkpoint aside).
"""
import contextlib
import os
import re
import shutil
import stat
import tempfile
from typing import Iterator


class PathError(OSError):
  """A path that cannot be opened as given (an unknown scheme, its library missing)."""


def os_reason(e: OSError) -> str:
  """Why a file operation failed, in words ("Permission denied"), for a message."""
  return e.strerror or str(e)


def is_remote(path: str) -> bool:
  """gs://..., s3://... (any URL scheme): handled by fsspec, not os."""
  return "://" in str(path)


# Schemes that, written with one slash or none (gs:/bucket/run, gs:bucket), are a URL
# mistyped, not a local folder named "gs:".
_SCHEMES = ("gs", "gcs", "s3", "az", "abfs", "hf", "http", "https", "file")
# GCS bucket names: 3 to 63 of a-z 0-9 - _ ., starting and ending with a letter or digit
# (https://cloud.google.com/storage/docs/buckets#naming; dotted names may reach 222).
_BUCKET = re.compile(r"[a-z0-9][a-z0-9._-]{1,220}[a-z0-9]")


def check(path: str) -> None:
  """Refuses a path that cannot mean what it seems to (one PathError line):
  gs:/bucket/run (one slash: it would be a local folder "gs:"), gs:///run (no bucket),
  a bucket name GCS would never accept."""
  path = str(path)
  scheme, sep, rest = path.partition(":")
  if sep and scheme.lower() in _SCHEMES and not rest.startswith("//"):
    raise PathError(f"{path!r} looks like a {scheme}:// URL with its slashes mistyped; "
                    f"expected {scheme}://BUCKET/path (with two slashes), or ./{path} "
                    f"for a local folder named {scheme}:.")
  if not is_remote(path):
    return
  scheme, rest = path.split("://", 1)
  bucket = rest.split("/", 1)[0]
  if not bucket:
    raise PathError(f"{path!r} names no bucket (nothing between {scheme}:// and the next "
                    f"/); expected {scheme}://BUCKET/path.")
  if scheme in ("gs", "gcs") and not (_BUCKET.fullmatch(bucket) and len(bucket) <= 222
                                      and ("." in bucket or len(bucket) <= 63)):
    raise PathError(f"{path!r}: {bucket!r} is not a valid Cloud Storage bucket name; "
                    "expected 3 to 63 characters of lowercase letters, digits, -, _ and "
                    "., starting and ending with a letter or digit.")


def resolve(path: str) -> str:
  """The form kept in config.json and passed around: absolute when local.

  Raises:
    PathError: a mistyped URL (check).
  """
  path = str(path)
  check(path)
  return path.rstrip("/") if is_remote(path) else os.path.abspath(os.path.expanduser(path))


def check_bucket(path: str) -> None:
  """For a remote path: its filesystem library is installed and its bucket exists
  (and these credentials can see it); nothing for a local path.

  Raises:
    PathError: saying which, in one line.
  """
  if not is_remote(path):
    return
  fs, inner = _fs(path)
  bucket = inner.split("/", 1)[0]
  try:
    found = fs.exists(bucket)
  except Exception as e:  # pylint: disable=broad-except  (auth, network: all said)
    raise PathError(f"Cannot reach the bucket of {path}: {type(e).__name__}: "
                    f"{str(e).splitlines()[0] if str(e) else ''}") from e
  if not found:
    raise PathError(f"The bucket of {path} does not exist, or these credentials cannot "
                    f"see it; expected an existing bucket (gcloud storage buckets create "
                    f"gs://{bucket}).")


def join(path: str, *names: str) -> str:
  if is_remote(path):
    return "/".join([str(path).rstrip("/"), *names])
  return os.path.join(path, *names)


def parent(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[0] if is_remote(path) else os.path.dirname(path)


def basename(path: str) -> str:
  return str(path).rstrip("/").rsplit("/", 1)[-1]


@contextlib.contextmanager
def _reaching(path: str, doing: str):
  """Remote calls: what is not an answer about the file itself (a bucket that stopped
  answering, credentials, the network) becomes one PathError line. gcsfs retries such
  a failure 6 times over about 2 minutes first, so a bucket that goes away mid-run ends
  the run within that bound."""
  try:
    yield
  except (FileNotFoundError, FileExistsError, PathError):
    raise
  except Exception as e:  # pylint: disable=broad-except
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    raise PathError(f"Cannot {doing} {path}: the storage did not answer "
                    f"({type(e).__name__}: {first})") from e


def _fs(path: str):
  """(fsspec filesystem, path inside it) for a remote path, its cached listings of
  that path and the folders above it dropped."""
  import fsspec  # pylint: disable=g-import-not-at-top
  try:
    fs, inner = fsspec.core.url_to_fs(str(path))
  except (ImportError, ValueError) as e:
    scheme = str(path).split("://", 1)[0]
    raise PathError(f"Cannot open {path}: no filesystem for {scheme}:// is installed "
                  f"({e}); for gs:// install gcsfs (pip install 'gralign_jax[cloud]').") from e
  fs.invalidate_cache(inner)
  return fs, inner


def not_a_regular_file(path: str) -> str | None:
  """Why `path` is neither a file nor a folder (a named pipe, a device, a socket),
  completing "<path> ..."; None for files, folders and missing paths.

  Raises:
    OSError: stat's own (permission, I/O).
  """
  try:
    mode = os.stat(path).st_mode
  except FileNotFoundError:
    return None
  if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
    return None
  kind = ("a named pipe (FIFO)" if stat.S_ISFIFO(mode) else "a socket"
          if stat.S_ISSOCK(mode) else "a device")
  return f"is {kind}, expected a file"


def _look(path: str, question: str, local) -> bool:
  """fs.<question>(path) on a bucket, local(path) here."""
  if is_remote(path):
    fs, inner = _fs(path)
    with _reaching(path, "look for"):
      return getattr(fs, question)(inner)
  return local(path)


def exists(path: str) -> bool:
  return _look(path, "exists", os.path.exists)


def isdir(path: str) -> bool:
  return _look(path, "isdir", os.path.isdir)


def isfile(path: str) -> bool:
  return _look(path, "isfile", os.path.isfile)


def listdir(path: str) -> list[str]:
  """Names in a folder, sorted."""
  if is_remote(path):
    fs, inner = _fs(path)
    with _reaching(path, "list"):
      return sorted(basename(p) for p in fs.ls(inner, detail=False))
  return sorted(os.listdir(path))


def makedirs(path: str) -> None:
  if not is_remote(path):
    os.makedirs(path, exist_ok=True)


def read_bytes(path: str) -> bytes:
  if is_remote(path):
    fs, inner = _fs(path)
    with _reaching(path, "read"):
      return fs.cat_file(inner)
  with open(path, "rb") as f:
    return f.read()


def read_text(path: str) -> str:
  return read_bytes(path).decode("utf-8", errors="replace")


def write_bytes(path: str, data: bytes) -> None:
  """Writes the whole file so that a reader, or a crash, never meets half of it."""
  if is_remote(path):
    fs, inner = _fs(path)
    with _reaching(path, "write"):
      fs.pipe_file(inner, data)
    return
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str, text: str) -> None:
  write_bytes(path, text.encode("utf-8"))


def append_text(path: str, text: str) -> None:
  if is_remote(path):
    old = read_bytes(path) if exists(path) else b""
    write_bytes(path, old + text.encode("utf-8"))
    return
  with open(path, "a", encoding="utf-8") as f:
    f.write(text)


def create_exclusive(path: str, text: str) -> bool:
  """Creates `path` holding `text`, whole, unless it exists. -> whether this call
  created it."""
  data = text.encode("utf-8")
  if is_remote(path):
    fs, inner = _fs(path)
    try:
      with _reaching(path, "create"):
        fs.pipe_file(inner, data, mode="create")
    except FileExistsError:
      return False
    return True
  # Written beside it, then linked into place: a reader never meets half of it, and
  # os.link fails rather than replace a file that is there. Where the file system has
  # no hard links (some FUSE mounts), O_EXCL creates it instead.
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or ".",
                             prefix=f".{os.path.basename(path)}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
    os.chmod(tmp, 0o644)
    os.link(tmp, path)
    return True
  except FileExistsError:
    return False
  except OSError:
    pass  # no hard links here
  finally:
    os.remove(tmp)
  try:
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  except FileExistsError:
    return False
  with os.fdopen(fd, "wb") as f:
    f.write(data)
  return True


def remove(path: str) -> None:
  """Removes one file; a file already gone is not an error."""
  try:
    if is_remote(path):
      fs, inner = _fs(path)
      with _reaching(path, "remove"):
        fs.rm_file(inner)
    else:
      os.remove(path)
  except FileNotFoundError:
    pass


def move(src: str, dst: str) -> None:
  """Renames a file or folder (remote: copy, then delete the source)."""
  if is_remote(src):
    fs, inner = _fs(src)
    with _reaching(src, "move"):
      fs.copy(inner, _fs(dst)[1], recursive=True)
      fs.rm(inner, recursive=True)
  else:
    os.rename(src, dst)


def upload_folder(local: str, path: str) -> None:
  """Copies the files of a local folder (no subfolders) into `path`."""
  for name in sorted(os.listdir(local)):
    with open(os.path.join(local, name), "rb") as f:
      write_bytes(join(path, name), f.read())


@contextlib.contextmanager
def local_folder(path: str) -> Iterator[str]:
  """A local folder holding the files of `path` (a copy when remote), for libraries
  that read only local files (transformers' from_pretrained)."""
  if not is_remote(path):
    yield path
    return
  tmp = tempfile.mkdtemp(prefix="gralign-")
  try:
    for name in listdir(path):
      with open(os.path.join(tmp, name), "wb") as f:
        f.write(read_bytes(join(path, name)))
    yield tmp
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
