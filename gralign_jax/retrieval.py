"""Retrieval with a trained run on your own images and captions, and what aligned.

  run = load_run("runs/demo")                      # config.json + best-on-dev params
  images = gallery_split("my_photos/")             # every JPEG/PNG in the folder
  result = retrieve(run, images, ["a red circle left of a blue square"], k=5)
  write_result(result)                             # <workdir>/retrieval.json

The image gallery is encoded once and kept (gallery.py) under
<workdir>/galleries/<digest>, keyed by the checkpoint step and the files' names, sizes,
modification times and modes, so asking new captions of the same photos only encodes
the captions. For each caption's best image, `alignment` lists every word piece with
its saliency gate a_t and the visual token it matches best (its patch row and column,
or region), the cosine that decides S_ori (method.md section 4).

Nothing is dropped silently. A file of the folder that cannot be read as an image (a
folder named x.jpg, an empty file, no read permission, a corrupt or truncated JPEG) is
skipped and listed in `skipped_images` with its reason; a caption longer than the
run's data.max_len is cut and listed in `truncated_captions`; k larger than the
gallery is clamped. Each is also said in one line through `log`. A run directory that
cannot be written (read-only storage) is only read: the gallery cache and
retrieval.json then go to fallback_dir(workdir), that is
gallery.cache_root()/galleries/<run name>-<hash of its path>, and the log says so.
"""
import dataclasses
import hashlib
import io
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax import checkpoint as ckpt_lib
from gralign_jax import logs
from gralign_jax import optim
from gralign_jax import paths
from gralign_jax import run_dir
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.data import split as split_lib
from gralign_jax.data import text
from gralign_jax.evaluation import evaluator as evaluator_lib
from gralign_jax.evaluation import gallery
from gralign_jax.models import grm
from gralign_jax.scores import similarity
from gralign_jax.visualize import numeric

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_CHUNK_IMAGES = 1024   # encoded at a time: a bad file costs a re-encode of its chunk only
_SHOWN = 20            # skipped files listed in the log (all of them go to the JSON)


class RetrievalError(ValueError):
  """The images, captions or settings of a retrieval cannot be used (said in full)."""


@dataclasses.dataclass
class Run:
  """A trained run, ready to encode: its config, model, params and tokenizer."""
  workdir: str
  config: ml_collections.ConfigDict
  params: dict
  step: int
  evaluator: evaluator_lib.Evaluator
  tokenizer: object


@dataclasses.dataclass(frozen=True)
class GallerySplit(readers.Split):
  """A Split of gallery images with what was left out: skipped holds (path, reason)
  for each file that is not a readable image; folder names where they came from."""
  folder: str = ""
  skipped: tuple[tuple[str, str], ...] = ()


def load_run(workdir: str, which: str = "best", log: logs.Log = logs.info,
             config: ml_collections.ConfigDict | None = None) -> Run:
  """The run in `workdir`: its best-on-dev checkpoint ("best") or its last ("latest").

  config: the run's saved config with changes that leave its parameters meaningful
  (evaluate_split.py checks them); default: config.json as saved.
  Only reads: a run on read-only storage loads as well.

  Raises:
    paths.PathError: a mistyped URL, no gcsfs for gs://, no such bucket.
  """
  workdir = paths.resolve(workdir)
  paths.check_bucket(workdir)
  if config is None:
    path = paths.join(workdir, "config.json")
    if not paths.isfile(path):
      raise FileNotFoundError(f"{path} does not exist: expected the run directory of a "
                              "training run (python -m experiments.demo --workdir=...).")
    config = ml_collections.ConfigDict(
        run_dir.with_keys_it_predates(json.loads(paths.read_text(path))))
  model = grm.build_model(config.model)
  mesh = sharding.make_mesh()
  like = train.abstract_state(model, optim.make_optimizer(config, 1), config, mesh)
  # read_only: orbax creates no folder and moves no damaged step aside.
  checkpointer = ckpt_lib.Checkpointer(paths.join(workdir, "checkpoints"),
                                       read_only=True)
  try:
    restore = {"best": checkpointer.restore_best,
               "latest": checkpointer.restore_latest}[which]
    restored = restore(like, log=log) or checkpointer.restore_latest(like, log=log)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints: the run has "
                            "not saved one yet.")
  evaluator = evaluator_lib.Evaluator(model, config, mesh)
  return Run(workdir, config, restored.state["params"], int(restored.step), evaluator,
             _run_tokenizer(workdir, config))


def _run_tokenizer(workdir: str, config: ml_collections.ConfigDict):
  """The tokenizer the run saved in its workdir; the one its config names for runs
  that predate that (then the data set must still be where the run saw it)."""
  saved = paths.join(workdir, run_dir.TOKENIZER_DIR)
  if paths.isdir(saved):
    with paths.local_folder(saved) as local:
      return text.load_tokenizer(local)
  try:
    return datasets.load_tokenizer(config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{workdir} holds no tokenizer/ (it was trained before runs kept theirs) and the "
        f"one its config names cannot be loaded: {e} Copy that tokenizer folder to "
        f"{saved}.") from e


# ------------------------------------------------------------------ the gallery


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
    return f"cannot be read ({e.strerror or e})"
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
                           f"({e.strerror or e}).") from e
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
  return os.path.join(gallery.cache_root(), "galleries",
                      f"{name}-{hashlib.sha256(path.encode()).hexdigest()[:8]}")


def _why(e: OSError) -> str:
  return e.strerror or str(e)


@dataclasses.dataclass
class EncodedGallery:
  """images: token sets (leading axis N) of split's images, in order; split: the images
  encoded, with every file left out in split.skipped; cache: the cache folder used."""
  images: dict
  split: GallerySplit
  cache: str | None


def encode_gallery(run: Run, split: readers.Split,
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
  hit = gallery.load_first(places, expect_meta=meta)  # stale ones are encoded again
  if hit:
    folder, sides, got = hit
    images, keep = sides["images"]
    bad = [(given.get(p, p), why) for p, why in got.get("skipped", [])]
    return EncodedGallery(images, _keep(split, keep, bad), folder)
  images, keep, bad = _encode_readable(run, split)
  meta["skipped"] = [(os.path.abspath(p), why) for p, why in bad]
  cache, failed = gallery.save_first_writable(
      places, {"images": (images, np.asarray(keep, np.int64))}, meta)
  if failed and cache:
    log(f"Gallery cache: {paths.parent(places[0])} is not writable "
        f"({_why(failed[0][1])}); cached in {cache} instead.")
  elif failed:
    log("Gallery cache: neither " + " nor ".join(
        f"{paths.parent(f)} ({_why(e)})" for f, e in failed) + " is writable; the "
        "gallery is not cached and will be encoded again next time.")
  return EncodedGallery(images, _keep(split, keep, bad), cache)


def _keep(split: GallerySplit, keep, bad) -> GallerySplit:
  """split reduced to the images at positions `keep`, with `bad` added to skipped."""
  keep = [int(i) for i in keep]
  kept = tuple(split.image_paths[i] for i in keep)
  skipped = tuple(sorted(split.skipped + tuple((p, w) for p, w in bad)))
  return dataclasses.replace(split, image_paths=kept, image_ids=tuple(range(len(keep))),
                             skipped=skipped)


def _encode_readable(run: Run, split: readers.Split):
  """-> (token sets of the images that decode, their positions, [(path, reason)] of
  the others). Encoded a chunk at a time; a chunk that fails (or whose bad images the
  pipeline zeroed, data.skip_bad_images) is decoded file by file to find the bad ones,
  so that good folders are decoded once."""
  parts, keep, bad = [], [], []
  n, step = split.num_images, _CHUNK_IMAGES
  for start in range(0, n, step):
    rows = list(range(start, min(n, start + step)))
    try:
      out = _encode_rows(run, split, rows)
    except Exception:  # pylint: disable=broad-exception-caught
      out = None       # raised again below unless a file is to blame
    if out is not None and not getattr(run.evaluator, "bad_images", 0):
      parts.append(out)
      keep += rows
      continue
    found = [(i, why) for i in rows if (why := _decode_problem(split.image_paths[i]))]
    if not found:  # not the files: once more, so that a real error speaks for itself
      out = _encode_rows(run, split, rows)
      if getattr(run.evaluator, "bad_images", 0):
        raise RuntimeError(f"The pipeline zeroed {run.evaluator.bad_images} of gallery "
                           f"images {start}..{rows[-1]} that decode here.")
      parts.append(out)
      keep += rows
      continue
    bad += [(split.image_paths[i], why) for i, why in found]
    good = sorted(set(rows) - {i for i, _ in found})
    if good:
      parts.append(_encode_rows(run, split, good))
      keep += good
  if not keep:
    folder = getattr(split, "folder", "")
    where = f"folder {folder!r}" if folder else "the given image files"
    raise _none_readable(where, sorted(tuple(getattr(split, "skipped", ())) + tuple(bad)))
  return jax.tree.map(lambda *x: np.concatenate(x), *parts), keep, bad


def _encode_rows(run: Run, split: readers.Split, rows: list[int]) -> dict:
  part = dataclasses.replace(split, image_paths=tuple(split.image_paths[i] for i in rows),
                             image_ids=tuple(rows))
  return run.evaluator.encode_images(run.params, part)


# ------------------------------------------------------------------ retrieval


def _visual_token_names(config: ml_collections.ConfigDict, n: int) -> list[str]:
  """Visual token j -> "CLS", "patch (row, col)" or "region j"."""
  layout = numeric.visual_layout(config.model.vision, n)
  if layout.kind == "regions":
    return [f"region {j}" for j in range(n)]
  cols = layout.grid[1]
  patches = [f"patch ({j // cols}, {j % cols})" for j in range(n - layout.first)]
  return ["CLS"] * layout.first + patches


def alignment(run: Run, image: dict, text: dict, ids: np.ndarray) -> list[dict]:
  """Per word piece of one caption: its gate, best visual token and that token
  similarity c_lj = leaky_relu(cos) (similarity.token_cosine, what S_ori max-pools).

  image / text: one item's encoder outputs (tokens (L, d), mask (L,), gates (L,)).
  """
  cos = np.asarray(similarity.token_cosine(
      jnp.asarray(text["tokens"])[None], jnp.asarray(image["tokens"])[None],
      run.config.model.leaky_slope)[0, 0])                      # (L_t, L_v)
  cos = np.where(np.asarray(image["mask"])[None], cos, -np.inf)
  names = _visual_token_names(run.config, cos.shape[1])
  words = run.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
  out = []
  for l in np.flatnonzero(np.asarray(text["mask"])):
    j = int(np.argmax(cos[l]))
    out.append({"token": words[l], "gate": round(float(text["gates"][l]), 4),
                "visual_token": names[j], "cos": round(float(cos[l, j]), 4)})
  return out


def _start(caption: str, n: int = 40) -> str:
  """The caption's first n characters, on one line."""
  caption = " ".join(caption.split())
  return caption if len(caption) <= n else caption[:n].rstrip() + "..."


def retrieve(run: Run, split: "readers.Split | EncodedGallery", captions: list[str],
             k: int = 5, log: logs.Log = logs.info) -> dict:
  """Top-k images per caption (with the best pair's word alignment) and top-k captions
  per image. Scores are the model's total score (0.4 S_ori + 0.4 S_key + 0.2 S_unc).
  `split`: the images, or their encode_gallery() (to keep or export the encodings).

  Image "index" values are positions in result["images"] (the images retrieved from,
  without the skipped ones). What was skipped, cut or clamped is in "skipped_images",
  "truncated_captions" and "notes", and said through `log`, one line each.

  Raises:
    RetrievalError: k < 1, no captions, an empty caption, or no readable image.
  """
  if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
    raise RetrievalError(f"k={k!r}: expected a positive number of results per query "
                         "(1 or more).")
  if not captions:
    raise RetrievalError("No captions to retrieve with: give at least one.")
  notes = []

  def note(line: str) -> None:
    notes.append(line)
    log(line)

  encoded, truncated = _encode(run, captions, note)
  found = split if isinstance(split, EncodedGallery) else encode_gallery(run, split, note)
  images, split = found.images, found.split
  if split.skipped:
    total = split.num_images + len(split.skipped)
    where = split.folder or "the given files"
    note(f"Skipped {len(split.skipped)} of {total} image files in {where} (not readable "
         f"images); retrieving from the other {split.num_images}:")
    for path, why in split.skipped[:_SHOWN]:
      log(f"  {logs.shown(path)} {why}")
    if len(split.skipped) > _SHOWN:
      log(f"  ... and {len(split.skipped) - _SHOWN} more (all listed in skipped_images)")
  texts = run.evaluator.encode_texts(run.params, encoded)
  k_img, k_txt = min(k, split.num_images), min(k, len(captions))
  if k_img < k:  # fewer captions than k needs no note: each image lists them all
    note(f"k={k} is more than the {split.num_images} images retrieved from: each "
         f"caption lists all {k_img}.")
  scorer = run.evaluator.scorer
  prepared = scorer.prepare(images, texts)  # once for both directions
  img_vals, img_idx = scorer.topk_images(*prepared, k_img, prepared=True)
  txt_vals, txt_idx = scorer.topk_texts(*prepared, k_txt, prepared=True)
  pick = lambda d, i: jax.tree.map(lambda x: x[i], d)
  by_caption = []
  for m, caption in enumerate(captions):
    best = int(img_idx[m, 0])
    by_caption.append({
        "caption": caption,
        "top": [{"index": int(i), "image": split.image_paths[int(i)],
                 "score": round(float(s), 4)}
                for s, i in zip(img_vals[m], img_idx[m])],
        "alignment": alignment(run, pick(images, best), pick(texts, m), encoded.ids[m])})
  by_image = [{"image": path,
               "top": [{"index": int(i), "caption": captions[int(i)],
                        "score": round(float(s), 4)}
                       for s, i in zip(txt_vals[n], txt_idx[n])]}
              for n, path in enumerate(split.image_paths)]
  return {"workdir": run.workdir, "step": run.step, "k": int(k),
          "k_used": {"images_per_caption": k_img, "captions_per_image": k_txt},
          "images": list(split.image_paths),
          "skipped_images": [{"path": p, "reason": why} for p, why in split.skipped],
          "truncated_captions": truncated, "gallery_cache": found.cache, "notes": notes,
          "captions_to_images": by_caption, "images_to_captions": by_image}


def _encode(run: Run, captions: list[str], log: logs.Log
            ) -> tuple[pipeline.EncodedCaptions, list[dict]]:
  """Tokenised captions, and one record (logged) per caption cut at data.max_len."""
  for m, c in enumerate(captions):
    if not isinstance(c, str) or not c.strip():
      raise RetrievalError(f"Caption {m} is {c!r}: expected text with at least one "
                           "word; drop it or fill it in.")
  max_len = int(run.config.data.max_len)
  encoded = pipeline.encode_captions(captions, run.tokenizer, max_len)
  truncated = []
  if encoded.num_truncated:
    lengths = run.tokenizer(list(captions), add_special_tokens=True,
                            truncation=False)["input_ids"]
    for m, ids in enumerate(lengths):
      if len(ids) > max_len:
        truncated.append({"index": m, "start": _start(captions[m]), "tokens": len(ids),
                          "max_len": max_len})
        log(f"Caption {m} (\"{logs.shown(_start(captions[m]))}\") is {len(ids)} tokens "
            f"long; the run reads at most {max_len} (data.max_len), so the rest is cut.")
  return encoded, truncated


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
    raise RetrievalError(f"Cannot write the gallery export to {path!r} ({_why(e)}); "
                         "give another --export.") from e
  return path


def write_result(result: dict, path: str | None = None,
                 log: logs.Log = logs.info) -> str:
  """Writes result as JSON to path, by default <workdir>/retrieval.json, falling back
  to fallback_dir(workdir) when the workdir is not writable. -> the file written.

  Raises:
    RetrievalError: an explicit path cannot be written.
  """
  if path is not None:
    try:
      _write_json(result, path)
    except OSError as e:
      raise RetrievalError(f"Cannot write the result to {path!r} ({_why(e)}); give "
                           "another --out.") from e
    return path
  path = paths.join(result["workdir"], "retrieval.json")
  try:
    _write_json(result, path)
    return path
  except OSError as e:
    other = os.path.join(fallback_dir(result["workdir"]), "retrieval.json")
    try:
      _write_json(result, other)
    except OSError as e2:
      raise RetrievalError(f"Cannot write retrieval.json to {path!r} ({_why(e)}) nor "
                           f"to {other!r} ({_why(e2)}); give --out=FILE.") from e2
    log(f"{result['workdir']} is not writable ({_why(e)}); retrieval.json goes to "
        f"{other} instead.")
    return other


def _write_json(result: dict, path: str) -> None:
  """Whole or not at all (paths.write_text)."""
  paths.write_text(path, json.dumps(result, indent=2))
