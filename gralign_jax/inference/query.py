"""Asking a run captions of a gallery: top-k images per caption, top-k captions per
image, and for each caption's best image what aligned.

  result = retrieve(run, gallery_split("my_photos/"), ["a red circle left of a blue
                    square"], k=5)                  # the JSON-ready record
  write_result(result)                              # <workdir>/retrieval.json
  found = run_query(run, split, captions, k=5)      # the record and what was computed
                                                    # for it (page.py draws from it)

For each caption's best image, `alignment` lists every word piece with its saliency
gate a_t and the visual token it matches best (models/token_grid.py names it: CLS, its
patch row and column, or region), the cosine that decides S_ori (method.md section 4).

Nothing is dropped silently. A caption longer than the run's data.max_len is cut and
listed in `truncated_captions`; k larger than the gallery is clamped; files left out
of the gallery are listed in `skipped_images`. Each is also said in one line through
`log`. retrieval.json goes to gallery.fallback_dir(workdir) when the workdir is not
writable.
"""
import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np

from gralign_jax import logs
from gralign_jax import paths
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.inference import run as run_lib
from gralign_jax.inference.gallery import (EncodedGallery, RetrievalError,
                                           encode_gallery, fallback_dir)
from gralign_jax.models import token_grid
from gralign_jax.scores import similarity

_SHOWN = 20            # skipped files listed in the log (all of them go to the JSON)


@dataclasses.dataclass
class QueryResult:
  """What run_query found and computed. record: the JSON-ready result (retrieve's);
  gallery: the images' encodings, files and skipped files; texts: the captions'
  encoder outputs (leading axis M); ids (M, L): their word-piece ids; truncated: which
  captions were cut at data.max_len."""
  record: dict
  gallery: EncodedGallery
  texts: dict
  ids: np.ndarray
  truncated: frozenset


def alignment(run: run_lib.Run, image: dict, text: dict, ids: np.ndarray) -> list[dict]:
  """Per word piece of one caption: its gate, best visual token and that token
  similarity c_lj = leaky_relu(cos) (similarity.token_cosine, what S_ori max-pools).

  image / text: one item's encoder outputs (tokens (L, d), mask (L,), gates (L,)).
  """
  cos = np.asarray(similarity.token_cosine(
      jnp.asarray(text["tokens"])[None], jnp.asarray(image["tokens"])[None],
      run.config.model.leaky_slope)[0, 0])                      # (L_t, L_v)
  cos = np.where(np.asarray(image["mask"])[None], cos, -np.inf)
  names = token_grid.token_names(
      token_grid.visual_layout(run.config.model.vision, cos.shape[1]), cos.shape[1])
  words = run.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
  out = []
  for l in np.flatnonzero(np.asarray(text["mask"])):
    j = int(np.argmax(cos[l]))
    out.append({"token": words[l], "gate": round(float(text["gates"][l]), 4),
                "visual_token": names[j], "cos": round(float(cos[l, j]), 4)})
  return out


def _first_chars(caption: str, n: int = 40) -> str:
  """The caption's first n characters, on one line (how a long caption is named)."""
  caption = " ".join(caption.split())
  return caption if len(caption) <= n else caption[:n].rstrip() + "..."


def run_query(run: run_lib.Run, split: "readers.Split | EncodedGallery",
              captions: list[str], k: int = 5, log: logs.Log = logs.info
              ) -> QueryResult:
  """Top-k images per caption (with the best pair's word alignment) and top-k captions
  per image, with the encodings that gave them. Scores are the model's total score
  (0.4 S_ori + 0.4 S_key + 0.2 S_unc).
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
  record = {"workdir": run.workdir, "step": run.step, "k": int(k),
            "k_used": {"images_per_caption": k_img, "captions_per_image": k_txt},
            "images": list(split.image_paths),
            "skipped_images": [{"path": p, "reason": why} for p, why in split.skipped],
            "truncated_captions": truncated, "gallery_cache": found.cache,
            "notes": notes, "captions_to_images": by_caption,
            "images_to_captions": by_image}
  return QueryResult(record, found, texts, encoded.ids,
                     frozenset(t["index"] for t in truncated))


def retrieve(run: run_lib.Run, split: "readers.Split | EncodedGallery",
             captions: list[str], k: int = 5, log: logs.Log = logs.info) -> dict:
  """run_query's JSON-ready record (what write_result writes)."""
  return run_query(run, split, captions, k, log).record


def _encode(run: run_lib.Run, captions: list[str], log: logs.Log
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
        truncated.append({"index": m, "start": _first_chars(captions[m]),
                          "tokens": len(ids),
                          "max_len": max_len})
        log(f"Caption {m} (\"{logs.shown(_first_chars(captions[m]))}\") is {len(ids)} "
            "tokens "
            f"long; the run reads at most {max_len} (data.max_len), so the rest is cut.")
  return encoded, truncated


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
      raise RetrievalError(f"Cannot write the result to {path!r} "
                           f"({paths.os_reason(e)}); give "
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
      raise RetrievalError(
          f"Cannot write retrieval.json to {path!r} ({paths.os_reason(e)}) nor to "
          f"{other!r} ({paths.os_reason(e2)}); give --out=FILE.") from e2
    log(f"{result['workdir']} is not writable ({paths.os_reason(e)}); retrieval.json "
        f"goes to {other} instead.")
    return other


def _write_json(result: dict, path: str) -> None:
  """Whole or not at all (paths.write_text)."""
  paths.write_text(path, json.dumps(result, indent=2))
