"""Encoded-gallery cache: encode a split once, keep its token sets on disk, and score
or retrieve against them later without the encoders.

A cache is a folder:

  manifest.json          {"format": 1, "meta": {...}, "sides": {"images": {"ids":
                          ..., "arrays": {name: {"file", "shape", "dtype"}}}, ...}}
  images.<name>.npy      one file per array (tokens, mask, gates, regions, global, ...)
  images.ids.npy         the item ids, in row order
  texts.<name>.npy ...

It is written to a temporary sibling folder and renamed into place, so a crash leaves
either the old cache or the new one, never half of one. `meta` says what produced the
cache (a checkpoint step, a config digest, the split); load(expect_meta=...) refuses a
cache whose meta differs, naming the field, so stale token sets are never scored
against a newer model. bfloat16 arrays are stored as their uint16 bits (.npy has no
bfloat16) and come back bit for bit.

Where a cache may live in more than one place (a run's own folder, else the user's
cache_root() when the run sits on read-only storage), load_first reads the first
valid one and save_first_writable writes the first place that takes it, saying why the
others did not.
"""
import io
import json
import os
import shutil
import tempfile
from typing import Any, Mapping, Sequence

import jax.numpy as jnp
import numpy as np

from gralign_jax import paths

FORMAT = 1
MANIFEST = "manifest.json"
_BITS = {"bfloat16": (jnp.bfloat16, np.uint16)}


def _store(x: np.ndarray) -> tuple[np.ndarray, str]:
  name = str(x.dtype)
  if name in _BITS:
    return x.view(_BITS[name][1]), name
  if x.dtype == object:
    raise TypeError("object arrays are not cached (they would need pickle); store ids "
                    "as numbers or strings")
  return x, name


def _restore(x: np.ndarray, dtype: str) -> np.ndarray:
  return x.view(_BITS[dtype][0]) if dtype in _BITS else x


def _items(arrays: Mapping[str, Any], ids: Any, side: str) -> int:
  n = len(ids)
  for name, x in arrays.items():
    if np.ndim(x) == 0 or np.shape(x)[0] != n:
      raise ValueError(f"{side}[{name!r}] has shape {np.shape(x)}; expected a leading "
                       f"dimension of {n} (one row per id).")
  return n


def save(folder: str, sides: Mapping[str, tuple[Mapping[str, Any], Any]],
         meta: Mapping[str, Any] | None = None) -> None:
  """Writes {side: (arrays {name: (n, ...)}, ids (n,))} atomically to folder.

  Typically sides = {"images": (image_enc, image_ids), "texts": (text_enc,
  caption_ids)}; meta must be JSON-serialisable. An existing cache is replaced.
  In a bucket (no folder rename) the manifest goes first and comes back last, so a
  half-written cache is never read as one.
  """
  folder = paths.resolve(folder)
  if paths.is_remote(folder):
    paths.remove(paths.join(folder, MANIFEST))
    _write(folder, sides, meta)
    return
  parent = os.path.dirname(folder)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.tmp-", dir=parent)
  try:
    _write(tmp, sides, meta)
    old = None
    if os.path.exists(folder):  # rename cannot replace a non-empty folder: swap
      old = tempfile.mkdtemp(prefix=f".{os.path.basename(folder)}.old-", dir=parent)
      os.rename(folder, os.path.join(old, "cache"))
    os.rename(tmp, folder)
    if old is not None:
      shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def _write(folder: str, sides, meta) -> None:
  """The array files, then the manifest that makes them a cache."""
  def put(file: str, x: np.ndarray) -> None:
    out = io.BytesIO()
    np.save(out, x, allow_pickle=False)
    paths.write_bytes(paths.join(folder, file), out.getvalue())

  manifest = {"format": FORMAT, "meta": dict(meta or {}), "sides": {}}
  for side, (arrays, ids) in sides.items():
    if not side.isidentifier():
      raise ValueError(f"side name {side!r} must be an identifier")
    n = _items(arrays, ids, side)
    entry = {"num": n, "ids": f"{side}.ids.npy", "arrays": {}}
    put(entry["ids"], _store(np.asarray(ids))[0])
    for name, x in arrays.items():
      data, dtype = _store(np.asarray(x))
      file = f"{side}.{name}.npy"
      put(file, data)
      entry["arrays"][name] = {"file": file, "shape": list(np.shape(x)), "dtype": dtype}
    manifest["sides"][side] = entry
  paths.write_text(paths.join(folder, MANIFEST),
                   json.dumps(manifest, indent=1, sort_keys=True))


def _read_array(file: str, mmap: bool) -> np.ndarray:
  if paths.is_remote(file):
    return np.load(io.BytesIO(paths.read_bytes(file)), allow_pickle=False)
  return np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False)


def load(folder: str, expect_meta: Mapping[str, Any] | None = None,
         mmap: bool = False) -> tuple[dict[str, tuple[dict[str, np.ndarray], np.ndarray]],
                                      dict[str, Any]]:
  """-> ({side: (arrays, ids)}, meta). Raises if the cache is missing, incomplete,
  of another format, or (expect_meta) produced by something else.

  mmap=True maps the token files instead of reading them (galleries larger than RAM;
  not for bfloat16, whose bits are viewed after reading).
  """
  path = paths.join(folder, MANIFEST)
  if not paths.exists(path):
    raise FileNotFoundError(f"No gallery cache at {folder!r}: {MANIFEST} is missing.")
  manifest = json.loads(paths.read_text(path))
  if manifest.get("format") != FORMAT:
    raise ValueError(f"Gallery cache {folder!r} has format {manifest.get('format')!r}; "
                     f"this code reads format {FORMAT}. Re-encode the gallery.")
  meta = manifest["meta"]
  for key, want in (expect_meta or {}).items():
    got = meta.get(key, "<absent>")
    if json.loads(json.dumps(want)) != got:
      raise ValueError(f"Stale gallery cache {folder!r}: meta[{key!r}] is {got!r}, "
                       f"expected {want!r}. Re-encode (save over it) or point elsewhere.")
  out = {}
  for side, entry in manifest["sides"].items():
    ids = _read_array(paths.join(folder, entry["ids"]), mmap=False)
    arrays = {}
    for name, spec in entry["arrays"].items():
      file = paths.join(folder, spec["file"])
      if not paths.exists(file):
        raise FileNotFoundError(f"Gallery cache {folder!r} lacks {spec['file']} "
                                f"({side}[{name!r}]).")
      x = _read_array(file, mmap)
      x = _restore(x, spec["dtype"])
      if list(x.shape) != spec["shape"] or str(x.dtype) != spec["dtype"]:
        raise ValueError(f"Gallery cache {folder!r}: {spec['file']} holds {x.dtype} "
                         f"{list(x.shape)}, the manifest says {spec['dtype']} "
                         f"{spec['shape']}. The cache was modified; re-encode.")
      arrays[name] = x
    if len(ids) != entry["num"]:
      raise ValueError(f"Gallery cache {folder!r}: {entry['ids']} has {len(ids)} ids, "
                       f"the manifest says {entry['num']}.")
    out[side] = (arrays, ids)
  return out, meta


def cache_root() -> str:
  """The user's cache folder: $GRALIGN_CACHE, else $XDG_CACHE_HOME/gralign_jax, else
  ~/.cache/gralign_jax (as data/tfds_source.py)."""
  default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "gralign_jax")
  return os.environ.get("GRALIGN_CACHE", default)


def load_first(folders: Sequence[str], expect_meta: Mapping[str, Any] | None = None
               ) -> tuple[str, dict, dict[str, Any]] | None:
  """(folder, sides, meta) of the first of folders holding a cache with expect_meta;
  None if none does. Stale or damaged caches are passed over (they get re-encoded)."""
  for folder in folders:
    if not paths.isfile(paths.join(folder, MANIFEST)):
      continue
    try:
      sides, meta = load(folder, expect_meta=expect_meta)
    except (ValueError, OSError, KeyError):
      continue
    return folder, sides, meta
  return None


def save_first_writable(folders: Sequence[str],
                        sides: Mapping[str, tuple[Mapping[str, Any], Any]],
                        meta: Mapping[str, Any] | None = None
                        ) -> tuple[str | None, list[tuple[str, OSError]]]:
  """save() to the first of folders that can be written (read-only storage, no
  permission, a full disk: the next is tried). -> (the folder written or None, the
  (folder, error) of each one that failed before it)."""
  failed = []
  for folder in folders:
    try:
      save(folder, sides, meta)
    except OSError as e:
      failed.append((folder, e))
      continue
    return folder, failed
  return None, failed
