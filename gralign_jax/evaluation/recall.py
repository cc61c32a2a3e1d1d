"""Retrieval ranks and recall metrics (method.md section 8), on the host in NumPy.

The score matrix `sims` is (N, M) with N images and M = captions_per_image x N
captions; caption c belongs to image c // captions_per_image.

Ties count against the model: an item is ranked below every competitor whose score
is >= its own. A collapsed model (every score equal) must get the worst possible
rank, never the lucky one that a sort order could hand it. NaN scores count as the
lowest possible score for the same reason (a NaN ground truth is ranked last), in
every float dtype: float16/32/64 and ml_dtypes' bfloat16 alike (`count_nan` says how
many there were; the evaluator reports it as "nan_scores").

Everything works on row chunks of `sims`, so a 5000 x 25000 matrix never needs more
than a small fraction of its own size in temporaries.
"""
from typing import Mapping

import jax.numpy as jnp
import numpy as np

RECALL_KS = (1, 5, 10)
# Elements of `sims` handled per chunk: 2^24 float32 = 64 MiB of temporaries at most.
_CHUNK_ELEMENTS = 1 << 24


def _check(sims: np.ndarray, captions_per_image: int) -> np.ndarray:
  sims = np.asarray(sims)
  if sims.ndim != 2:
    raise ValueError(f"sims must be (images, captions), got shape {sims.shape}.")
  n, m = sims.shape
  if n == 0 or m != n * captions_per_image:
    raise ValueError(
        f"sims has shape {sims.shape}: expected (N, {captions_per_image} x N) with N > 0 "
        f"(captions_per_image={captions_per_image}, caption c belongs to image c // "
        f"{captions_per_image}).")
  return sims


def _is_float(dtype) -> bool:
  """NumPy's floats and the ml_dtypes ones (bfloat16, float8...), which NumPy does not
  count as np.floating."""
  return bool(np.issubdtype(dtype, np.floating) or jnp.issubdtype(dtype, jnp.floating))


def _low_nan(x: np.ndarray) -> np.ndarray:
  """NaN -> -inf, so that a NaN score never beats anything (a copy only when needed).

  ml_dtypes floats (bfloat16) are widened to float32 first (exactly: every bfloat16 is
  a float32), so the NaN test and the comparisons after it work as for NumPy's own.
  """
  if not _is_float(x.dtype):
    return x
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float32)
  if np.isnan(x).any():
    return np.where(np.isnan(x), -np.inf, x)
  return x


def count_nan(sims: np.ndarray) -> int:
  """The number of NaN entries of a score matrix (any dtype), counted chunk by chunk."""
  sims = np.asarray(sims)
  if not _is_float(sims.dtype) or sims.size == 0:
    return 0
  flat = sims.reshape(sims.shape[0], -1) if sims.ndim > 1 else sims.reshape(1, -1)
  step = _rows_per_chunk(flat.shape[1])
  total = 0
  for s in range(0, flat.shape[0], step):
    block = flat[s:s + step]
    if not np.issubdtype(block.dtype, np.floating):
      block = block.astype(np.float32)
    total += int(np.isnan(block).sum())
  return total


def _rows_per_chunk(m: int) -> int:
  return max(1, _CHUNK_ELEMENTS // max(m, 1))


def i2t_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
  """0-based image-to-text ranks: (N, M) scores -> (N,) int64.

  The rank of image i is that of its best ground-truth caption: with best = the max
  of its captions' scores, rank = the number of other images' captions scoring
  >= best (ties pessimistic).
  """
  sims = _check(sims, captions_per_image)
  n, m = sims.shape
  cpi = captions_per_image
  ranks = np.empty(n, np.int64)
  step = _rows_per_chunk(m)
  for s in range(0, n, step):
    e = min(n, s + step)
    block = _low_nan(sims[s:e])                                   # (r, M)
    rows = np.arange(e - s)[:, None]
    gt_cols = np.arange(s, e)[:, None] * cpi + np.arange(cpi)      # (r, cpi)
    gt = block[rows, gt_cols]                                       # (r, cpi)
    best = gt.max(axis=1, keepdims=True)                            # (r, 1)
    # Counting over all columns and then removing the ground-truth hits avoids
    # building a mask of the non-gt columns.
    ranks[s:e] = (block >= best).sum(axis=1) - (gt >= best).sum(axis=1)
  return ranks


def t2i_ranks(sims: np.ndarray, captions_per_image: int = 5) -> np.ndarray:
  """0-based text-to-image ranks: (N, M) scores -> (M,) int64.

  The rank of caption c is the number of other images scoring >= its own image
  (ties pessimistic).
  """
  sims = _check(sims, captions_per_image)
  n, m = sims.shape
  cols = np.arange(m)
  gt = _low_nan(sims[cols // captions_per_image, cols])[None, :]  # (1, M)
  counts = np.zeros(m, np.int64)
  step = _rows_per_chunk(m)
  # Row chunks keep the reads contiguous; the counts accumulate over them.
  for s in range(0, n, step):
    counts += (_low_nan(sims[s:s + step]) >= gt).sum(axis=0)
  return counts - 1  # the ground-truth image itself always counts once


def _summarise(ranks: np.ndarray, prefix: str) -> dict[str, float]:
  out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks < k)) for k in RECALL_KS}
  # 1-based, as the literature reports them.
  out[f"{prefix}_medr"] = float(np.floor(np.median(ranks)) + 1)
  out[f"{prefix}_meanr"] = float(np.mean(ranks) + 1)
  return out


def recall_metrics(sims: np.ndarray, captions_per_image: int = 5) -> dict[str, float]:
  """R@1/5/10 both ways, rSum, median and mean ranks of an (N, M) score matrix.

  Returns Python floats: i2t_r1, i2t_r5, i2t_r10, t2i_r1, t2i_r5, t2i_r10 (percent),
  rsum (their sum), i2t_medr, i2t_meanr, t2i_medr, t2i_meanr (1-based ranks).
  """
  i2t = _summarise(i2t_ranks(sims, captions_per_image), "i2t")
  t2i = _summarise(t2i_ranks(sims, captions_per_image), "t2i")
  out = {f"{d}_r{k}": src[f"{d}_r{k}"]
         for d, src in (("i2t", i2t), ("t2i", t2i)) for k in RECALL_KS}
  out["rsum"] = float(sum(out.values()))
  for d, src in (("i2t", i2t), ("t2i", t2i)):
    out[f"{d}_medr"] = src[f"{d}_medr"]
    out[f"{d}_meanr"] = src[f"{d}_meanr"]
  return out


def coco_folds(sims: np.ndarray, captions_per_image: int = 5,
               num_folds: int = 5) -> list[np.ndarray]:
  """The COCO 1K folds of an (N, cpi x N) matrix: fold f is images f*F .. (f+1)*F - 1
  (F = N / num_folds) against their own captions, as views (no copies)."""
  sims = _check(sims, captions_per_image)
  n = sims.shape[0]
  if num_folds < 1 or n % num_folds:
    raise ValueError(f"{n} images cannot be split into {num_folds} equal folds; the "
                     f"COCO 1K protocol needs 5000 images in 5 folds of 1000.")
  f = n // num_folds
  c = f * captions_per_image
  return [sims[i * f:(i + 1) * f, i * c:(i + 1) * c] for i in range(num_folds)]


def coco_metrics(sims: np.ndarray, captions_per_image: int = 5,
                 num_folds: int = 5) -> dict[str, dict[str, float]]:
  """MS-COCO protocol: {"test_1k": five-fold mean, "test_5k": whole matrix}.

  sims: (N, captions_per_image x N), normally (5000, 25000). Fold f holds images
  f*F .. (f+1)*F - 1 (F = N / num_folds, 1000 for COCO) and their captions, and is
  scored against nothing else. "test_1k" is the mean of every metric over the folds
  (rsum included, which equals the sum of the mean recalls).
  """
  sims = _check(sims, captions_per_image)
  folds = [recall_metrics(fold, captions_per_image)
           for fold in coco_folds(sims, captions_per_image, num_folds)]
  test_1k = {k: float(np.mean([fold[k] for fold in folds])) for k in folds[0]}
  return {"test_1k": test_1k, "test_5k": recall_metrics(sims, captions_per_image)}


def format_table(results: Mapping[str, Mapping[str, float]]) -> str:
  """A plain-text table: one row per split, R@1/5/10 both ways and rSum.

  results: {split name: recall_metrics(...) dict}, e.g. the output of coco_metrics.
  """
  cols = [("i2t_r1", "i2t R@1"), ("i2t_r5", "R@5"), ("i2t_r10", "R@10"),
          ("t2i_r1", "t2i R@1"), ("t2i_r5", "R@5"), ("t2i_r10", "R@10"),
          ("rsum", "rSum")]
  name_w = max([len("split")] + [len(str(s)) for s in results])
  widths = [max(len(h), 6) for _, h in cols]
  header = "  ".join([f"{'split':<{name_w}}"] + [f"{h:>{w}}" for (_, h), w in zip(cols, widths)])
  lines = [header, "-" * len(header)]
  for split, metrics in results.items():
    cells = [f"{metrics[k]:>{w}.1f}" if k in metrics else f"{'-':>{w}}"
             for (k, _), w in zip(cols, widths)]
    lines.append("  ".join([f"{split:<{name_w}}"] + cells))
  # NaN scores rank last (a NaN ground truth is a miss): say so where it happened.
  for split, metrics in results.items():
    if metrics.get("nan_scores", 0) > 0:
      lines.append(f"{split}: {int(metrics['nan_scores'])} NaN score(s), ranked lowest")
  return "\n".join(lines)
