"""Tests for evaluation/recall.py: ranks, the tie rule, R@K, medr/meanr, COCO folds."""
import time

import numpy as np
import pytest

from gralign_jax.evaluation import recall


def _brute_ranks(sims, cpi):
  """Pure-Python reference with the same (pessimistic) tie rule."""
  n, m = len(sims), len(sims[0])
  i2t = []
  for i in range(n):
    gt = set(range(i * cpi, (i + 1) * cpi))
    best = max(sims[i][c] for c in gt)
    i2t.append(sum(1 for c in range(m) if c not in gt and sims[i][c] >= best))
  t2i = []
  for c in range(m):
    g = sims[c // cpi][c]
    t2i.append(sum(1 for i in range(n) if i != c // cpi and sims[i][c] >= g))
  return i2t, t2i


def _permuted(n, cpi, img_rank):
  """Scores whose ranks are known by construction.

  Image i's captions score, in column order, a distinct value per caption; its best
  ground-truth caption is placed so that exactly img_rank[i] other captions beat it.
  Built directly: every row is a permutation of 0..M-1; the non-gt captions take the
  top values and gt captions are interleaved at the required depth.
  """
  m = n * cpi
  sims = np.zeros((n, m))
  for i in range(n):
    gt = list(range(i * cpi, (i + 1) * cpi))
    others = [c for c in range(m) if c not in gt]
    order = others[:img_rank[i]] + gt + others[img_rank[i]:]  # best first
    sims[i, order] = np.arange(m, 0, -1)
  return sims


def test_i2t_ranks_by_construction():
  rng = np.random.default_rng(0)
  n, cpi = 7, 5
  want = rng.integers(0, n * cpi - cpi + 1, size=n)
  sims = _permuted(n, cpi, want)
  np.testing.assert_array_equal(recall.i2t_ranks(sims, cpi), want)


def test_only_best_of_five_counts_for_i2t():
  n, cpi = 4, 5
  sims = np.zeros((n, n * cpi))
  # Image 0: one gt caption at the top, the other four at the very bottom.
  sims[0] = 0.5
  sims[0, 3] = 1.0
  sims[0, 0:3] = sims[0, 4] = -1.0
  # Image 1: scores fall with the caption index, so its best gt (caption 5) is
  # beaten by exactly captions 0..4 whatever its other four score.
  sims[1] = np.linspace(1, 0, n * cpi)  # caption c scores 1 - c / (M - 1)
  ranks = recall.i2t_ranks(sims, cpi)
  assert ranks[0] == 0
  assert ranks[1] == 5


def test_t2i_ranks_by_construction():
  rng = np.random.default_rng(1)
  n, cpi = 6, 5
  m = n * cpi
  want = rng.integers(0, n, size=m)
  sims = np.zeros((n, m))
  for c in range(m):
    g = c // cpi
    others = [i for i in range(n) if i != g]
    rng.shuffle(others)
    order = others[:want[c]] + [g] + others[want[c]:]
    sims[order, c] = np.arange(n, 0, -1)
  np.testing.assert_array_equal(recall.t2i_ranks(sims, cpi), want)


@pytest.mark.parametrize("n", [2, 11])
def test_ties_are_pessimistic(n):
  sims = np.full((n, 5 * n), 0.3, np.float32)
  np.testing.assert_array_equal(recall.i2t_ranks(sims), 5 * n - 5)
  np.testing.assert_array_equal(recall.t2i_ranks(sims), n - 1)
  got = recall.recall_metrics(sims)
  if n == 2:
    # i2t rank 5: only R@10 hits; t2i rank 1: R@5 and R@10 hit.
    want = dict(i2t_r1=0, i2t_r5=0, i2t_r10=100, t2i_r1=0, t2i_r5=100, t2i_r10=100)
    assert got["rsum"] == 300.0
  else:
    want = dict(i2t_r1=0, i2t_r5=0, i2t_r10=0, t2i_r1=0, t2i_r5=0, t2i_r10=0)
    assert got["rsum"] == 0.0
  for k, v in want.items():
    assert got[k] == v, k
  assert got["i2t_medr"] == got["i2t_meanr"] == 5 * n - 4
  assert got["t2i_medr"] == got["t2i_meanr"] == n


def test_nan_is_never_lucky():
  sims = np.full((3, 15), np.nan)
  np.testing.assert_array_equal(recall.i2t_ranks(sims), 10)
  np.testing.assert_array_equal(recall.t2i_ranks(sims), 2)


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64", "bfloat16"])
def test_nan_ground_truth_is_a_miss_in_every_float_dtype(dtype):
  """A NaN ground-truth score ranks below everything, whatever the float dtype:
  bfloat16 (an ml_dtypes type, not np.floating) included."""
  import ml_dtypes
  dt = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
  n, cpi = 3, 5
  sims = np.random.default_rng(0).uniform(0.0, 0.5, (n, n * cpi)).astype(dt)
  sims[0, :cpi] = np.nan       # image 0: every ground-truth caption NaN
  sims[2, 2 * cpi] = np.nan    # caption 10's own image (2) scores NaN
  sims[1, cpi:2 * cpi] = 0.9   # image 1 wins its captions outright
  i2t, t2i = recall.i2t_ranks(sims, cpi), recall.t2i_ranks(sims, cpi)
  assert i2t[0] == n * cpi - cpi   # ranked last, never a hit
  assert i2t[1] == 0
  assert t2i[2 * cpi] == n - 1     # its NaN image ranks below the other two
  assert all(t2i[:cpi] == n - 1)
  got = recall.recall_metrics(sims, cpi)
  want = recall.recall_metrics(np.where(np.isnan(sims.astype(np.float32)), -np.inf,
                                        sims.astype(np.float32)), cpi)
  assert got == want
  assert recall.count_nan(sims) == cpi + 1


def test_count_nan_in_chunks(monkeypatch):
  import ml_dtypes
  monkeypatch.setattr(recall, "_CHUNK_ELEMENTS", 16)
  sims = np.zeros((6, 30), ml_dtypes.bfloat16)
  sims[[0, 3, 5], [1, 29, 7]] = np.nan
  assert recall.count_nan(sims) == 3
  assert recall.count_nan(np.zeros((2, 10), np.int32)) == 0


def test_evaluator_reports_nan_scores(monkeypatch):
  """Evaluator.evaluate says how many scores were NaN, per split and COCO protocol;
  the printed table mentions them when there are any."""
  import types

  import ml_dtypes

  from gralign_jax import configs
  from gralign_jax.evaluation import evaluator as evaluator_lib
  n, cpi = 10, 5
  sims = np.random.default_rng(1).normal(size=(n, n * cpi)).astype(ml_dtypes.bfloat16)
  sims[0, 0] = sims[3, 20] = sims[9, 0] = np.nan  # the last is outside every 1K fold
  ev = evaluator_lib.Evaluator.__new__(evaluator_lib.Evaluator)
  ev.config = configs.base_config()
  ev.scorer = types.SimpleNamespace(matrix=lambda *a: sims)
  monkeypatch.setattr(ev, "encode_images_and_count_bad", lambda *a: (None, 0),
                      raising=False)
  monkeypatch.setattr(ev, "encode_texts", lambda *a: None, raising=False)
  split = types.SimpleNamespace(captions_per_image=cpi)
  one = ev.evaluate(None, split, None)
  assert one["nan_scores"] == 3
  coco = ev.evaluate(None, split, None, "coco")
  assert coco["test_5k"]["nan_scores"] == 3 and coco["test_1k"]["nan_scores"] == 1
  table = recall.format_table({"test": one})
  assert "test: 3 NaN score(s)" in table
  assert "NaN" not in recall.format_table({"test": dict(one, nan_scores=0)})


def test_recalls_medr_meanr():
  n, cpi = 10, 5
  img_rank = np.array([0, 0, 1, 2, 4, 5, 9, 10, 20, 44])
  sims = _permuted(n, cpi, img_rank)
  got = recall.recall_metrics(sims, cpi)
  assert got["i2t_r1"] == 20.0
  assert got["i2t_r5"] == 50.0
  assert got["i2t_r10"] == 70.0
  assert got["i2t_medr"] == np.floor(np.median(img_rank)) + 1 == 5.0
  assert got["i2t_meanr"] == pytest.approx(img_rank.mean() + 1)
  t2i = recall.t2i_ranks(sims, cpi)
  assert got["t2i_r5"] == pytest.approx(100 * np.mean(t2i < 5))
  six = [got[f"{d}_r{k}"] for d in ("i2t", "t2i") for k in (1, 5, 10)]
  assert got["rsum"] == pytest.approx(sum(six))
  assert all(isinstance(v, float) for v in got.values())


def test_matches_brute_force(monkeypatch):
  rng = np.random.default_rng(2)
  # Few distinct values, so that ties are common; small chunks to cross boundaries.
  sims = rng.integers(0, 4, size=(9, 45)).astype(np.float32)
  monkeypatch.setattr(recall, "_CHUNK_ELEMENTS", 100)
  i2t, t2i = _brute_ranks(sims.tolist(), 5)
  np.testing.assert_array_equal(recall.i2t_ranks(sims), i2t)
  np.testing.assert_array_equal(recall.t2i_ranks(sims), t2i)
  sims = rng.normal(size=(12, 60))
  i2t, t2i = _brute_ranks(sims.tolist(), 5)
  np.testing.assert_array_equal(recall.i2t_ranks(sims), i2t)
  np.testing.assert_array_equal(recall.t2i_ranks(sims), t2i)


def test_coco_folds():
  rng = np.random.default_rng(3)
  n, cpi, folds = 20, 5, 5
  f, c = n // folds, n // folds * cpi
  sims = rng.normal(size=(n, n * cpi))
  out = recall.coco_metrics(sims, cpi, num_folds=folds)
  per_fold = [recall.recall_metrics(sims[i * f:(i + 1) * f, i * c:(i + 1) * c], cpi)
              for i in range(folds)]
  for k, v in out["test_1k"].items():
    assert v == pytest.approx(np.mean([p[k] for p in per_fold])), k
  assert out["test_5k"] == recall.recall_metrics(sims, cpi)
  # Huge cross-fold scores wreck the 5K numbers but must not touch the 1K ones.
  blocked = sims.copy()
  for i in range(folds):
    for j in range(folds):
      if i != j:
        blocked[i * f:(i + 1) * f, j * c:(j + 1) * c] = 100.0
  out2 = recall.coco_metrics(blocked, cpi, num_folds=folds)
  assert out2["test_1k"] == out["test_1k"]
  assert out2["test_5k"]["rsum"] == 0.0
  with pytest.raises(ValueError, match="folds"):
    recall.coco_metrics(sims[:18, :90], cpi, num_folds=folds)


def test_shape_errors():
  with pytest.raises(ValueError, match="expected"):
    recall.recall_metrics(np.zeros((4, 19)))
  with pytest.raises(ValueError, match="images, captions"):
    recall.i2t_ranks(np.zeros(20))


def test_format_table():
  sims = np.random.default_rng(4).normal(size=(10, 50))
  table = recall.format_table(recall.coco_metrics(sims))
  lines = table.splitlines()
  assert "rSum" in lines[0] and "R@10" in lines[0]
  assert lines[2].startswith("test_1k") and lines[3].startswith("test_5k")


def test_5k_is_fast():
  sims = np.random.default_rng(5).random((5000, 25000), dtype=np.float32)
  t = time.perf_counter()
  out = recall.coco_metrics(sims)
  assert time.perf_counter() - t < 20.0  # a few seconds; slack for a shared CPU
  assert 0.0 <= out["test_5k"]["rsum"] < 10.0  # random scores retrieve nothing
