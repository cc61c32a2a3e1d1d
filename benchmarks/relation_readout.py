"""Where the demo loses spatial relations: linear read-outs from a trained run's tokens.

The probe (experiments/probe.py) finds relations at chance. This asks which encoder
drops them, on the synthetic set's test split, whose scene record gives every object's
centre:

- vision: the visual token of the patch under an object's centre. How much of the
  centre (x, y) a linear map recovers from it (R^2), and how often a linear 4-way
  classifier tells the relation the caption states between objects a and b (left,
  right, above, below) from a's token, from a's and b's, against the same classifier
  on the true centres (what a token that kept its position could give);
- text: each relation caption and its flip (the probe's relation kind): the cosine
  between a shape or colour word's token in the two (1.0: the word does not know the
  relation), and a 4-way classifier of the stated relation from the first shape word's
  token (the only way a max-pooled score can use the relation: the shape word matches
  the shape's patch).

Classifiers: ridge regression (lambda 1e-2) one-vs-rest, fit on the first half of the
images' rows and scored on the second half.

  python benchmarks/relation_readout.py --runs=runs/demo,runs/demo_rn [--untrained]

--untrained adds the first run's model at its initialisation (its seed): what the
randomly initialised encoders carry before training. Prints the table and writes
benchmarks/relation_readout.{md,json} (machine, date, each run's step and config
changes), or --out=PREFIX.
"""
import argparse
import json
import os
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from experiments import records  # noqa: E402
import ablation  # noqa: E402  (benchmarks/, beside this file)

LAMBDA = 1e-2


def _fit_half(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Ridge fit on the first half of the rows -> (predictions, targets) on the second."""
  n = len(x)
  first = np.arange(n) < n // 2
  x = np.concatenate([x, np.ones((n, 1))], 1)
  w = np.linalg.solve(x[first].T @ x[first] + LAMBDA * np.eye(x.shape[1]),
                      x[first].T @ y[first])
  return x[~first] @ w, y[~first]


def readout_accuracy(x: np.ndarray, labels: list[str]) -> float:
  """% of the second half's labels a one-vs-rest ridge fit on the first half gets."""
  classes = sorted(set(labels))
  y = np.stack([np.asarray(labels) == c for c in classes], 1).astype(np.float64)
  pred, target = _fit_half(np.asarray(x, np.float64), y)
  return round(float(100 * np.mean(pred.argmax(1) == target.argmax(1))), 1)


def readout_r2(x: np.ndarray, y: np.ndarray) -> float:
  """R^2 of a ridge fit (first half) of y (n, k) from x, on the second half."""
  pred, target = _fit_half(np.asarray(x, np.float64), np.asarray(y, np.float64))
  return round(float(1 - (target - pred).var(0).sum() / target.var(0).sum()), 3)


def _unit(x) -> np.ndarray:
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def object_token(layout, image_size: int, centre) -> int:
  """models/token_grid.py's TokenLayout of a ViT, the image size and a centre (x, y) in
  pixels -> the index of the visual token of the patch that holds it."""
  rows, cols = layout.grid
  row = min(int(centre[1] * rows / image_size), rows - 1)
  col = min(int(centre[0] * cols / image_size), cols - 1)
  return layout.first + row * cols + col


def vision_readouts(tokens: np.ndarray, scenes: list[dict], layout,
                    image_size: int) -> dict:
  """tokens (N, L_v, d) laid out as `layout` (models/token_grid.py); scenes: the
  split's scene records in image order -> the vision read-outs."""
  token = lambda i, obj: tokens[i, object_token(layout, image_size, obj["centre"])]
  from gralign_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  own, centres, tok_a, tok_b, pair_centres, stated = [], [], [], [], [], []
  for i, scene in enumerate(scenes):
    objs = scene["objects"]
    for obj in objs:
      own.append(token(i, obj))
      centres.append(np.asarray(obj["centre"]) / image_size)
    for cap in scene["captions"]:
      if "relation" in cap:
        a, b = (objs[j] for j in cap["relation"])
        tok_a.append(token(i, a))
        tok_b.append(token(i, b))
        pair_centres.append(np.r_[a["centre"], b["centre"]] / image_size)
        stated.append(synthetic.relation(a, b))
  tok_a, tok_b, pair_centres = map(np.stack, (tok_a, tok_b, pair_centres))
  return {
      "objects": len(own), "pairs": len(stated),
      "centre_r2": readout_r2(np.stack(own), np.stack(centres)),
      "relation_from_a": readout_accuracy(tok_a, stated),
      "relation_from_a_b": readout_accuracy(np.c_[tok_a, tok_b], stated),
      "relation_from_true_centre_a": readout_accuracy(pair_centres[:, :2], stated),
      "relation_from_true_centres": readout_accuracy(pair_centres, stated),
      "majority": round(100 * max(stated.count(c) for c in set(stated)) / len(stated), 1),
  }


def text_readouts(true_tokens, false_tokens, pieces: list[list[str]],
                  flips: list[str]) -> dict:
  """Token sets (M, L, d) of relation captions and their flips (same length), each
  caption's word pieces, and each flip's "stated->flipped" -> the text read-outs."""
  from gralign_jax.data import perturb_scenes  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import synthetic  # pylint: disable=g-import-not-at-top
  true_tokens, false_tokens = _unit(true_tokens), _unit(false_tokens)
  object_cos, relation_cos, shape_tokens, labels = [], [], [], []
  for m, words in enumerate(pieces):
    first_shape = None
    for l, piece in enumerate(words):
      cos = float(true_tokens[m, l] @ false_tokens[m, l])
      if piece in perturb_scenes.RELATION_OF_WORD:
        relation_cos.append(cos)
      elif piece in synthetic.SHAPES or piece in synthetic.COLOURS:
        object_cos.append(cos)
        if first_shape is None and piece in synthetic.SHAPES:
          first_shape = l
    if first_shape is not None:
      stated, flipped = flips[m].split("->")
      shape_tokens += [true_tokens[m, first_shape], false_tokens[m, first_shape]]
      labels += [stated, flipped]
  return {"pairs": len(pieces),
          "object_word_cos": round(float(np.mean(object_cos)), 4),
          "relation_word_cos": round(float(np.mean(relation_cos)), 4),
          "relation_from_shape_word": readout_accuracy(np.stack(shape_tokens), labels)}


def readouts(run, split, scenes: list[dict]) -> dict:
  """One loaded run (inference.Run) on a split of the synthetic set -> its read-outs."""
  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import false_captions
  from gralign_jax.data import pipeline
  # pylint: enable=g-import-not-at-top
  config = run.config
  vision = config.model.vision
  images = run.evaluator.encode_images(run.params, split)
  from gralign_jax.models import token_grid  # pylint: disable=g-import-not-at-top
  tokens = _unit(images["tokens"])
  layout = token_grid.visual_layout(vision, tokens.shape[1])
  out = {"vision": vision_readouts(tokens, scenes, layout, vision.image_size)}
  pert, _ = false_captions.build(config, split, kinds=("relation",), log=lambda *a: None)
  max_len = int(config.data.max_len)
  true = pipeline.encode_captions([split.captions[c] for c in pert.caption],
                                  run.tokenizer, max_len)
  flipped = pipeline.encode_captions(list(pert.text), run.tokenizer, max_len)
  same = np.flatnonzero(true.mask.sum(1) == flipped.mask.sum(1))
  pieces = [run.tokenizer.convert_ids_to_tokens([int(i) for i in true.ids[m][true.mask[m]]])
            for m in same]
  t = run.evaluator.encode_texts(run.params, true)["tokens"][same]
  f = run.evaluator.encode_texts(run.params, flipped)["tokens"][same]
  out["text"] = text_readouts(t, f, pieces, [pert.detail[m] for m in same])
  return out


def _untrained(run):
  """The run with its parameters at initialisation (config.seed)."""
  # pylint: disable=g-import-not-at-top
  import dataclasses
  import jax
  from gralign_jax.models import grm
  # pylint: enable=g-import-not-at-top
  model = grm.build_model(run.config.model)
  inputs = grm.example_inputs(run.config.model, int(run.config.data.max_len))
  params = model.init(jax.random.PRNGKey(int(run.config.seed)), *inputs)["params"]
  return dataclasses.replace(run, params=params, step=0)


def _changes(config) -> dict:
  """The settings that tell the demo runs here apart (hard negatives, model shape)."""
  model = config.model
  out = {"loss.hard_negatives": config.loss.hard_negatives or "none",
         "model.score": model.score,
         "model.vision.depth": model.vision.depth,
         "model.vision.patch_size": model.vision.patch_size,
         "model.text.depth": model.text.depth}
  if "token_positions" in model:  # benchmarks/patches/token_positions.diff applied
    out["model.token_positions"] = model.token_positions
  return out


def table(rows: list[dict]) -> str:
  head = ("| run | settings | step | object token -> centre, R^2 | relation from token "
          "a | from tokens a, b | from true centre a | from true centres a, b | majority "
          "| shape/colour word cos, true vs flipped | relation word cos | relation from "
          "first shape word | probe relation |\n|" + "---|" * 13)
  lines = [head]
  for r in rows:
    v, t = r["vision"], r["text"]
    probe = r.get("probe_relation")
    settings = ", ".join(f"{k.split('.', 1)[1]} {w}" for k, w in r["changes"].items())
    lines.append(
        f"| {r['run']} | {settings} | {r['step']} | {v['centre_r2']:.3f} | "
        f"{v['relation_from_a']} | "
        f"{v['relation_from_a_b']} | {v['relation_from_true_centre_a']} | "
        f"{v['relation_from_true_centres']} | {v['majority']} | "
        f"{t['object_word_cos']:.4f} | {t['relation_word_cos']:.4f} | "
        f"{t['relation_from_shape_word']} | {'' if probe is None else probe} |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--runs", required=True,
                      help="Comma-separated run directories of demo runs.")
  parser.add_argument("--untrained", action="store_true",
                      help="Add the first run's model at initialisation.")
  parser.add_argument("--out", default=None, help="Path prefix of the records.")
  args = parser.parse_args()
  # pylint: disable=g-import-not-at-top
  from gralign_jax import logs
  from gralign_jax import inference
  from gralign_jax.data import datasets
  from gralign_jax.data import false_captions
  from gralign_jax.data import synthetic
  # pylint: enable=g-import-not-at-top
  prefix = records.out_prefix("relation_readout", args.out, departures=[])
  rows = []
  for i, workdir in enumerate(w for w in args.runs.split(",") if w):
    run = inference.load_run(workdir, "best", log=lambda *a: None)
    root = run.config.data.root
    if not false_captions.is_synthetic(root):
      sys.exit(f"Error: {workdir}: its data ({root}) is not the synthetic scenes set; "
               "the read-outs need the scene record.")
    split = datasets.read_split(run.config, "test")
    record = synthetic.load_scene_record(root, logs.info)
    by_file = {s["filename"]: s for s in record["scenes"]}
    scenes = [by_file[os.path.basename(p)] for p in split.image_paths]
    todo = [(os.path.basename(os.path.normpath(workdir)), run)]
    if i == 0 and args.untrained:
      todo.insert(0, ("untrained (initialisation)", _untrained(run)))
    for name, r in todo:
      t0 = time.time()
      row = {"run": name, "workdir": workdir, "step": r.step,
             "changes": _changes(r.config), **readouts(r, split, scenes)}
      record = ablation.run_record(workdir) if r.step else None  # its probe, if any
      if record and "probe" in record:
        row["probe_relation"] = record["probe"].get("relation")
      rows.append(row)
      print(f"{name}: {json.dumps({k: row[k] for k in ('vision', 'text')})} "
            f"[{time.time() - t0:.0f} s]", flush=True)
  text = table(rows)
  print(text)
  machine = ablation.machine()
  with open(prefix + ".json", "w", encoding="utf-8") as f:
    json.dump({"machine": machine, "rows": rows}, f, indent=1)
  with open(prefix + ".md", "w", encoding="utf-8") as f:
    f.write(f"# Relation read-outs\n\n`python benchmarks/relation_readout.py "
            f"--runs=...` ({machine}); see the script's docstring.\n\n"
            f"{text}\n")
  print(f"Wrote {prefix}.md and {prefix}.json")


if __name__ == "__main__":
  main()
