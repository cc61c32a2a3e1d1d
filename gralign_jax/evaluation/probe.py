"""The compositional probe: does the true caption outscore the same caption made false?

For every caption of a split, perturbed captions that are false for its image
(data/false_captions.py: perturb_scenes.py on the synthetic set, which knows its
scenes; perturb_text.py on real captions) are scored against that image with the run's model, and

  accuracy = 100 x fraction of (image, true caption, perturbed caption) with
             score(image, true) > score(image, perturbed)   (strictly: a tie, or a NaN,
                                                              counts as wrong; chance 50)

per kind (with n), for the inference score (0.4 S_ori + 0.4 S_key + 0.2 S_unc) and for
each part alone. On the synthetic set it also reports the text adapter's gates
averaged per word class (colour, shape, size, relation, other) over the true captions:
what the gated score S_key and S_unc can weigh at all.

  result = run(evaluator, params, config, tokenizer, split)   # the report (a dict)
  print(format_table(result))

Scores are those of scores/similarity.py: pair_scores, the definition the Scorer's
blockwise kernels are tested against, taken pair by pair (the Scorer computes whole
image x caption matrices and fuses the parts, and the probe needs each part of a few
pairs per image).
"""
import time

import jax
import ml_collections
import numpy as np

from gralign_jax import logs
from gralign_jax.data import false_captions
from gralign_jax.data import perturb_scenes
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.data import synthetic
from gralign_jax.scores import similarity

WORD_CLASSES = ("colour", "shape", "size", "relation", "other")
PART_NAMES = {"total": "score", "ori": "S_ori", "key": "S_key", "unc": "S_unc",
              "global": "S_global"}
_BLOCK = 256  # pairs scored per call


# ------------------------------------------------------------------ scores


def pair_scores(images: dict, texts: dict, image_index: np.ndarray,
                model_config: ml_collections.ConfigDict,
                block: int = _BLOCK) -> dict[str, np.ndarray]:
  """Score of text p with image image_index[p], for every p -> {part: (P,)} float32:
  the parts similarity.pair_scores gives ("ori", "key", "unc" where on, or "global")
  and "total", the inference score (similarity.total_score).

  images: encoder outputs with leading axis N; texts: with leading axis P.
  """
  cfg = ml_collections.FrozenConfigDict(model_config)
  keys_i = [k for k in similarity.SCORE_KEYS if k in images]
  keys_t = [k for k in similarity.SCORE_KEYS if k in texts]

  def matched(img, txt):
    s = similarity.matched_scores(img, txt, cfg)
    return dict(s, total=similarity.total_score(s, cfg))

  score_block = jax.jit(matched)
  n = len(image_index)
  parts = []
  for start in range(0, n, block):
    rows = np.arange(start, start + block)
    rows = np.where(rows < n, rows, 0)  # the last block padded with pair 0
    img = {k: images[k][image_index[rows]] for k in keys_i}
    txt = {k: texts[k][rows] for k in keys_t}
    out = jax.device_get(score_block(img, txt))
    parts.append({k: np.asarray(v[:min(block, n - start)], np.float32)
                  for k, v in out.items()})
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def accuracy(true: np.ndarray, perturbed: np.ndarray) -> float:
  """100 x fraction with true > perturbed, strictly (ties and NaN count as wrong)."""
  true, perturbed = np.asarray(true), np.asarray(perturbed)
  if true.size == 0:
    return float("nan")
  return float(100.0 * np.mean(true > perturbed))


def tally(true: dict, perturbed: dict, groups, order=()) -> dict:
  """{part: (P,)} scores of the true and the perturbed caption of each pair, and a
  group name per pair -> {group: {"n", "accuracy" (total score), "parts": {part: acc}}}:
  the groups named in `order` first, in that order, then the others as first seen;
  the parts in PART_NAMES' order."""
  groups = np.asarray(groups)
  seen = dict.fromkeys(groups.tolist())
  parts = [p for p in PART_NAMES if p in true and p != "total"]
  out = {}
  for g in [g for g in order if g in seen] + [g for g in seen if g not in order]:
    sel = groups == g
    out[g] = {"n": int(sel.sum()),
              "accuracy": round(accuracy(true["total"][sel], perturbed["total"][sel]), 2),
              "parts": {k: round(accuracy(true[k][sel], perturbed[k][sel]), 2)
                        for k in parts}}
  return out


# ------------------------------------------------------------------ gates


def word_class(word: str) -> str:
  """A synthetic caption's word -> its class (WORD_CLASSES)."""
  word = word.lower()
  if word in synthetic.COLOURS:
    return "colour"
  if word in synthetic.SHAPES:
    return "shape"
  if word in perturb_scenes.SIZE_OF_WORD:
    return "size"
  if word in perturb_scenes.RELATION_OF_WORD:
    return "relation"
  return "other"


def piece_classes(pieces: list[str], special: set) -> list[str | None]:
  """Word pieces (WordPiece: "##" continues a word) -> the class of the word each
  belongs to; None for special tokens ([CLS], [SEP], [PAD])."""
  words, out = [], []  # words[w]: the text of word w; out[i]: the word of piece i
  for p in pieces:
    if p in special:
      out.append(None)
    elif p.startswith("##") and words and out and out[-1] is not None:
      words[-1] += p[2:]
      out.append(len(words) - 1)
    else:
      words.append(p)
      out.append(len(words) - 1)
  return [None if w is None else word_class(words[w]) for w in out]


def gates_by_class(gates: np.ndarray, ids: np.ndarray, mask: np.ndarray,
                   tokenizer) -> dict:
  """Text gates (M, L) of captions ids / mask (M, L) -> {class: {"gate": mean over
  the pieces of that class, "n": pieces}} for the classes present."""
  special = set(getattr(tokenizer, "all_special_tokens", []))
  sums, counts = {}, {}
  for m in range(len(ids)):
    valid = np.flatnonzero(mask[m])
    pieces = tokenizer.convert_ids_to_tokens([int(i) for i in ids[m][valid]])
    for l, cls in zip(valid, piece_classes(pieces, special)):
      if cls is not None:
        sums[cls] = sums.get(cls, 0.0) + float(gates[m, l])
        counts[cls] = counts.get(cls, 0) + 1
  return {c: {"gate": round(sums[c] / counts[c], 4), "n": counts[c]}
          for c in WORD_CLASSES if c in counts}


# ------------------------------------------------------------------ the probe


def run(evaluator, params, config: ml_collections.ConfigDict, tokenizer,
        split: readers.Split, seed: int = 0, log: logs.Log = logs.info) -> dict:
  """The probe of a model (evaluator: evaluation/evaluator.py's, with its params) on
  one split -> the report: "kinds" {kind: {"n", "accuracy", "parts"}}, "all" (every
  pair), "details" {kind: {detail: {"n", "accuracy", "parts"}}}, "gates" (synthetic
  set, text adapter on), and where it came from. Accuracies in percent."""
  t0 = time.time()
  pert, info = false_captions.build(config, split, seed=seed, log=log)
  cpi = split.captions_per_image
  max_len = int(config.data.max_len)
  log(f"Probe on split {split.name!r} ({info['set']}): {split.num_images} images, "
      f"{len(split.captions)} captions, {len(pert)} perturbed ({', '.join(info['kinds'])})")
  true_caps = pipeline.encode_captions(list(split.captions), tokenizer, max_len)
  images = evaluator.encode_images(params, split)
  texts = evaluator.encode_texts(params, true_caps)
  true = pair_scores(images, texts, np.arange(len(split.captions)) // cpi, config.model)
  result = dict(split=split.name, data=info["set"], images=split.num_images,
                captions=len(split.captions), perturbed=len(pert), seed=seed,
                notes=info["notes"], kinds={}, all=None, details={})
  if len(pert):
    pert_caps = pipeline.encode_captions(pert.text, tokenizer, max_len)
    perturbed = pair_scores(images, evaluator.encode_texts(params, pert_caps),
                            pert.caption // cpi, config.model)
    true_at = {k: v[pert.caption] for k, v in true.items()}
    result["kinds"] = tally(true_at, perturbed, pert.kind, info["kinds"])
    result["all"] = tally(true_at, perturbed, ["all"] * len(pert))["all"]
    kinds = np.asarray(pert.kind)
    for k in result["kinds"]:
      sel = kinds == k
      sub = lambda d: {p: v[sel] for p, v in d.items()}  # pylint: disable=cell-var-from-loop
      details = np.asarray(pert.detail)[sel]
      if any(details):
        result["details"][k] = tally(sub(true_at), sub(perturbed), details)
  missing = [k for k in info["kinds"] if k not in result["kinds"]]
  if missing:
    result["notes"].append(f"no caption could be made false as {', '.join(missing)}")
  if info["set"] == "synthetic" and config.model.score == "grm" and config.model.text_adapter:
    result["gates"] = gates_by_class(texts["gates"], true_caps.ids, true_caps.mask,
                                     tokenizer)
  result["seconds"] = round(time.time() - t0, 1)
  return result


def format_table(result: dict) -> str:
  """The report as text: accuracy per kind with n, per score part, and the gates."""
  parts = list((result.get("all") or {}).get("parts", {}))
  head = ["kind", "n", "score"] + [PART_NAMES.get(p, p) for p in parts]
  rows = []
  for name, r in list(result["kinds"].items()) + (
      [("all", result["all"])] if result.get("all") else []):
    rows.append([name, str(r["n"]), f"{r['accuracy']:.1f}"]
                + [f"{r['parts'][p]:.1f}" for p in parts])
  widths = [max(len(x) for x in col) for col in zip(head, *rows)]
  fmt = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)
                                for i, (c, w) in enumerate(zip(cells, widths)))
  lines = [f"Probe, split {result['split']!r} ({result['data']}): {result['images']} "
           f"images, {result['captions']} captions, {result['perturbed']} perturbed. "
           "Accuracy: % of pairs where the true caption scores strictly higher than the "
           "perturbed one (ties count as wrong; chance 50).",
           fmt(head)] + [fmt(r) for r in rows]
  if result.get("gates"):
    lines.append("Text gates per word class (mean over word pieces of the true captions): "
                 + ", ".join(f"{c} {g['gate']:.2f} (n={g['n']})"
                             for c, g in result["gates"].items()))
  lines += [f"Note: {n}" for n in result.get("notes", [])]
  return "\n".join(lines)
