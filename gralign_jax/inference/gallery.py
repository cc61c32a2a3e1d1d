"""The gallery: a folder of images (or a list of files) -> checked files -> their
encodings by a run, cached and exported once.

  split = gallery_split("my_photos/")          # files that can be images, the rest listed
  found = encode_gallery(run, split)           # cached under <workdir>/galleries
  export_gallery(found, "gallery.npz", run.step)

The encodings are kept (evaluation/gallery.py) under <workdir>/galleries/<digest>, keyed
by the checkpoint step and the files' names, sizes, modification times and modes, so
asking new captions of the same photos only encodes the captions. A run directory that
cannot be written (read-only storage) is only read: the cache then goes to
fallback_dir(workdir), that is evaluation.gallery.cache_root()/galleries/<run name>-<hash
of its path>, and the log says so.

Nothing is dropped silently: a file of the folder that cannot be read as an image (a
folder named x.jpg, an empty file, no read permission, a corrupt or truncated JPEG) is
left out and listed in `skipped` with its reason.
"""
import dataclasses
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from gralign_jax import logs
from gralign_jax import paths
from gralign_jax.data import images as images_lib
from gralign_jax.data import readers
from gralign_jax.data import split as split_lib
from gralign_jax.evaluation import gallery as gallery_cache
from gralign_jax.inference import run as run_lib

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CHUNK_IMAGES = 1024   # encoded at a time: a bad file costs a re-encode of its chunk only


class RetrievalError(ValueError):
  """The images, captions or settings of a retrieval cannot be used (said in full)."""


@dataclasses.dataclass(frozen=True)
class GallerySplit(readers.Split):
  """A Split of gallery images with what was left out: skipped holds (path, reason)
  for each file that is not a readable image; folder names where they came from."""
  folder: str = ""
  skipped: tuple[tuple[str, str], ...] = ()


def _path_problem(path: str) -> str | None:
  """Why `path` cannot be an image file, from its metadata alone (split.path_problem,
  and an empty file); None if it may be."""
  why = split_lib.path_problem(path)
  if why is None and os.path.getsize(path) == 0:
    return "is empty (0 bytes)"
  return why


def _decode_problem(path: str) -> str | None:
  """Why `path` does not decode as an image (with the pipeline's decoder); None if
  it does."""
  try:
    images_lib.decode_image(path)
  except images_lib.ImageDecodeError as e:
    message = str(e)
    if f"{path}: " not in message:  # "Image file <path> does not exist." and the like
      return message.split(f"{path} ", 1)[-1].rstrip(".")
    why = message.split(f"{path}: ", 1)[1]  # "Could not decode image file <path>: why"
    if why.startswith("UnidentifiedImageError"):  # its message repeats the file object
      return "is not an image (PIL cannot identify it)"
    return f"does not decode ({why})"
  except OSError as e:  # open() failed: permission, a folder, ...
    return f"cannot be read ({paths.os_reason(e)})"
  return None


def _listed(skipped, n: int = 5) -> str:
  more = f"; and {len(skipped) - n} more" if len(skipped) > n else ""
  return "; ".join(f"{os.path.basename(p)} {why}" for p, why in skipped[:n]) + more


def _none_readable(where: str, skipped) -> RetrievalError:
  kind = "/".join(IMAGE_SUFFIXES)
  what = (f"the only {kind} file is skipped" if len(skipped) == 1 else
          f"all {len(skipped)} {kind} files are skipped")
  return RetrievalError(f"No readable image in {where}: {what}: {_listed(skipped)}.")


def gallery_split(images) -> GallerySplit:
  """A folder of images (or a list of files) -> a GallerySplit with no captions.

  Entries that cannot be image files (folders, empty or unreadable files) are left out
  and listed in `.skipped`; corrupt images are found when the gallery is encoded.

  Raises:
    FileNotFoundError: the folder does not exist.
    RetrievalError: the folder cannot be listed, or holds no readable image file.
  """
  if isinstance(images, str):
    folder = images
    if not os.path.exists(folder):
      raise FileNotFoundError(f"Image folder {folder!r} does not exist.")
    if not os.path.isdir(folder):
      raise RetrievalError(f"Image folder {folder!r} is a file; expected a folder of "
                           f"{'/'.join(IMAGE_SUFFIXES)} images.")
    try:
      names = sorted(os.listdir(folder))
    except OSError as e:
      raise RetrievalError(f"Image folder {folder!r} cannot be listed "
                           f"({paths.os_reason(e)}).") from e
    files = [os.path.join(folder, f) for f in names if f.lower().endswith(IMAGE_SUFFIXES)]
    if not files:
      raise RetrievalError(f"No {'/'.join(IMAGE_SUFFIXES)} files in {folder!r}; it "
                           f"holds {names[:10]}.")
    where = f"folder {folder!r}"
  else:
    folder, files, where = "", [str(p) for p in images], "the given image files"
    if not files:
      raise RetrievalError("No image files given.")
  skipped = tuple((p, why) for p in files if (why := _path_problem(p)))
  bad = {p for p, _ in skipped}
  kept = tuple(p for p in files if p not in bad)
  if not kept:
    raise _none_readable(where, skipped)
  return GallerySplit("gallery", kept, tuple(range(len(kept))), (), captions_per_image=0,
                      folder=folder, skipped=skipped)


def fallback_dir(workdir: str) -> str:
  """Where a run's galleries and retrieval.json go when its workdir is not writable:
  one folder per run, named by the run's folder and a hash of its full path."""
  path = paths.resolve(workdir)
  name = paths.basename(path) or "run"
  return os.path.join(gallery_cache.cache_root(), "galleries",
                      f"{name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}")




@dataclasses.dataclass
class EncodedGallery:
  """images: token sets (leading axis N) of split's images, in order; split: the images
  encoded, with every file left out in split.skipped; cache: the cache folder used."""
  images: dict
  split: GallerySplit
  cache: str | None


def encode_gallery(run: run_lib.Run, split: readers.Split,
                   log: logs.Log = logs.info) -> EncodedGallery:
  """The gallery's image token sets, from its cache when the same files were encoded
  by the same checkpoint before. Files that do not decode are left out (and listed)."""
  if not isinstance(split, GallerySplit):
    split = GallerySplit(split.name, split.image_paths, split.image_ids, (),
                         captions_per_image=0)
  # Keyed by absolute paths, so that the same files given from another folder hit;
  # paths are shown and returned as the caller gave them.
  stamp, given = [], {os.path.abspath(p): p for p in split.image_paths}
  for p in given:
    try:
      st = os.stat(p)
      stamp.append((p, st.st_size, st.st_mtime_ns, st.st_mode))
    except OSError:
      stamp.append((p, None, None, None))  # found unreadable when decoded
  digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
  meta = {"step": run.step, "images": digest}
  places = [paths.join(run.workdir, "galleries", digest),
            os.path.join(fallback_dir(run.workdir), digest)]
  hit = gallery_cache.load_first(places, expect_meta=meta)  # stale ones are encoded again
  if hit:
    folder, sides, got = hit
    images, keep = sides["images"]
    bad = [(given.get(p, p), why) for p, why in got.get("skipped", [])]
    return EncodedGallery(images, _kept_only(split, keep, bad), folder)
  images, keep, bad = _encode_readable(run, split)
  meta["skipped"] = [(os.path.abspath(p), why) for p, why in bad]
  cache, failed = gallery_cache.save_first_writable(
      places, {"images": (images, np.asarray(keep, np.int64))}, meta)
  if failed and cache:
    log(f"Gallery cache: {paths.parent(places[0])} is not writable "
        f"({paths.os_reason(failed[0][1])}); cached in {cache} instead.")
  elif failed:
    log("Gallery cache: neither " + " nor ".join(
        f"{paths.parent(f)} ({paths.os_reason(e)})" for f, e in failed) + " is writable; "
        "the gallery is not cached and will be encoded again next time.")
  return EncodedGallery(images, _kept_only(split, keep, bad), cache)


def _kept_only(split: GallerySplit, keep, bad) -> GallerySplit:
  """split reduced to the images at positions `keep`, with `bad` added to skipped."""
  keep = [int(i) for i in keep]
  kept = tuple(split.image_paths[i] for i in keep)
  skipped = tuple(sorted(split.skipped + tuple((p, w) for p, w in bad)))
  return dataclasses.replace(split, image_paths=kept, image_ids=tuple(range(len(keep))),
                             skipped=skipped)


def _encode_readable(run: run_lib.Run, split: "GallerySplit"):
  """-> (token sets of the images that decode, their positions, [(path, reason)] of
  the others). Encoded a chunk at a time; a chunk that fails (or whose bad images the
  pipeline zeroed, data.skip_bad_images) is decoded file by file to find the bad ones,
  so that good folders are decoded once."""
  parts, keep, bad = [], [], []
  n, step = split.num_images, _CHUNK_IMAGES
  for start in range(0, n, step):
    rows = list(range(start, min(n, start + step)))
    try:
      out, zeroed = _encode_rows(run, split, rows)
    except Exception:  # pylint: disable=broad-exception-caught
      out, zeroed = None, 0  # raised again below unless a file is to blame
    if out is not None and not zeroed:
      parts.append(out)
      keep += rows
      continue
    found = [(i, why) for i in rows if (why := _decode_problem(split.image_paths[i]))]
    if not found:  # not the files: once more, so that a real error speaks for itself
      out, zeroed = _encode_rows(run, split, rows)
      if zeroed:
        raise RuntimeError(f"The pipeline zeroed {zeroed} of gallery images "
                           f"{start}..{rows[-1]} that decode here.")
      parts.append(out)
      keep += rows
      continue
    bad += [(split.image_paths[i], why) for i, why in found]
    good = sorted(set(rows) - {i for i, _ in found})
    if good:
      parts.append(_encode_rows(run, split, good)[0])
      keep += good
  if not keep:
    where = f"folder {split.folder!r}" if split.folder else "the given image files"
    raise _none_readable(where, sorted(split.skipped + tuple(bad)))
  return jax.tree.map(lambda *x: np.concatenate(x), *parts), keep, bad


def _encode_rows(run: run_lib.Run, split: readers.Split, rows: list[int]
                 ) -> tuple[dict, int]:
  """-> (token sets of the images at `rows`, how many of them the pipeline zeroed)."""
  part = dataclasses.replace(split, image_paths=tuple(split.image_paths[i] for i in rows),
                             image_ids=tuple(rows))
  return run.evaluator.encode_images_and_count_bad(run.params, part)


def export_gallery(found: EncodedGallery, path: str, step: int) -> str:
  """The gallery's encodings, for use outside this project, as one .npz: `paths` (N,)
  the image files in row order, `step` the checkpoint's, and every encoder output as
  `images.<name>` (N, ...) (bfloat16 widened to float32: .npz has no bfloat16).
  -> the file written."""
  arrays = {"paths": np.asarray(found.split.image_paths, dtype=str),
            "step": np.asarray(step, np.int64)}
  for name, x in found.images.items():
    x = np.asarray(x)
    arrays[f"images.{name}"] = x.astype(np.float32) if x.dtype == jnp.bfloat16 else x
  out = io.BytesIO()
  np.savez(out, **arrays)
  try:
    paths.write_bytes(path, out.getvalue())
  except OSError as e:
    raise RetrievalError(f"Cannot write the gallery export to {path!r} "
                         f"({paths.os_reason(e)}); "
                         "give another --export.") from e
  return path
