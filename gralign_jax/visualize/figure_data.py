"""The numbers behind the pictures: pure NumPy functions of encoder outputs and logs.

Every drawing function in figures.py calls these, so that what a picture shows can be
tested without looking at it: a heat map's cells are `saliency_grid`, a box marks
`best_patches`, a bar is `region_sigma`.

Visual tokens are laid out as models/token_grid.py says (`TokenLayout`).
"""
from typing import Mapping, Sequence

import numpy as np

from gralign_jax.models.token_grid import TokenLayout


def saliency_grid(gates: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """Visual keep gates a_v (L_v,) -> (rows, cols): cell (r, c) is the gate of patch
  r * cols + c (tokens before layout.first, e.g. CLS, are left out)."""
  gates = np.asarray(gates, np.float32)
  if layout.kind != "grid":
    raise ValueError("saliency_grid needs a patch grid; region features have none "
                     "(plot the gates per region instead)")
  return gates[layout.first:layout.first + layout.num_patches].reshape(layout.grid)


def region_maps(assign: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """A_hat (L_v, K) -> (K, rows, cols) for a grid (each prompt's weight on every
  patch), or (K, L_v) for regions. Each column of A_hat sums to 1 over all visual
  tokens; on a ViT the CLS token's share is what the maps do not show."""
  assign = np.asarray(assign, np.float32)
  if layout.kind != "grid":
    return assign.T
  patches = assign[layout.first:layout.first + layout.num_patches]
  return patches.T.reshape(assign.shape[1], *layout.grid)


def region_sigma(logvar: np.ndarray) -> np.ndarray:
  """log sigma^2 (K, d) -> (K,): each region's mean standard deviation over the d
  dimensions, mean_d exp(0.5 log sigma^2), the width of its Gaussian."""
  return np.exp(0.5 * np.asarray(logvar, np.float64)).mean(axis=-1).astype(np.float32)


def token_cosines(text_tokens: np.ndarray, visual_tokens: np.ndarray) -> np.ndarray:
  """T (L_t, d), V (L_v, d) -> cos (L_t, L_v). (The score applies leaky_relu, which is
  increasing: it keeps every argmax.)"""
  t = np.asarray(text_tokens, np.float32)
  v = np.asarray(visual_tokens, np.float32)
  t = t / np.maximum(np.linalg.norm(t, axis=-1, keepdims=True), 1e-6)
  v = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-6)
  return t @ v.T


def best_patches(text_tokens: np.ndarray, text_mask: np.ndarray,
                 visual_tokens: np.ndarray, layout: TokenLayout) -> np.ndarray:
  """-> int (L_t,): for each valid text token, the patch (index into the grid,
  row-major; for regions, the region index) of highest cosine; -1 at padding. Only
  patches compete: a ViT's CLS token has no place to mark."""
  cos = token_cosines(text_tokens, visual_tokens)
  stop = layout.first + layout.num_patches if layout.kind == "grid" else cos.shape[1]
  best = np.argmax(cos[:, layout.first:stop], axis=1)
  return np.where(np.asarray(text_mask, bool), best, -1).astype(np.int64)


def hardest_negative(scores: Sequence[float], positives: Sequence[int] = ()) -> int:
  """The index of the highest score that is not a positive (e.g. the caption that
  scores highest with an image without describing it).

  Raises:
    ValueError: every candidate is a positive.
  """
  scores = np.asarray(scores, np.float64).copy()
  allowed = np.ones(scores.size, bool)
  allowed[[int(p) for p in positives]] = False
  if not allowed.any():
    raise ValueError(f"all {scores.size} candidates are positives: no negative to pick")
  return int(np.argmax(np.where(allowed, scores, -np.inf)))


# ------------------------------------------------------------------ training curves

CURVES = ("loss", "score_spread", "dev_rsum", "lr")


def training_series(records: Sequence[Mapping], lr_schedule=None
                    ) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """metrics.jsonl records -> {name: (steps, values)} for the curves.

  "loss" and "score_spread" from the train records; "dev_rsum" from the dev records,
  "dev_score_std" beside it (a near-zero spread of the dev scores is a collapse);
  "test_rsum" the final test evaluation (at the best step); "lr" from the train
  records' "lr" where the trainer logs it, else lr_schedule(step - 1) (the rate that
  step's update used: optax counts updates from 0) at the train steps, when given.
  Missing series are left out.
  """
  out = {}

  def series(split, key, name):
    pts = sorted((int(r["step"]), float(r[key])) for r in records
                 if r.get("split") == split and isinstance(r.get(key), (int, float)))
    if pts:
      out[name] = tuple(np.asarray(x) for x in zip(*pts))

  series("train", "loss", "loss")
  series("train", "score_spread", "score_spread")
  series("dev", "rsum", "dev_rsum")
  series("dev", "score_std", "dev_score_std")
  series("test", "rsum", "test_rsum")
  series("train", "lr", "lr")
  if "lr" not in out and lr_schedule is not None:
    steps = sorted({int(r["step"]) for r in records if r.get("split") == "train"})
    if steps:
      steps = np.asarray(steps)
      out["lr"] = (steps, np.asarray([float(lr_schedule(s - 1)) for s in steps]))
  return out
