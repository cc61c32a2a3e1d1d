"""A plain NumPy implementation of the GRM inference score (method.md section 4), the
baseline of the CPU scoring benchmark (benchmarks/scoring.py --numpy).

Straightforward on purpose: image x caption blocks, one float32 cosine tensor
(bi, bt, L_t, L_v) per block through NumPy's matmul (BLAS), masked maxima both ways,
S_ori, S_key (gate-weighted means) and S_unc (text tokens against the K regions), then
0.4 S_ori + 0.4 S_key + 0.2 S_unc. Written from method.md, not from the engine, so
that it also cross-checks the engine (benchmarks/scoring.py --check).
"""
import numpy as np

NEG = -1e9


def _unit(x):
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _wmean(x, valid, w):
  """Mean of x (..., L) over valid entries, weighted by w (broadcastable)."""
  w = np.where(valid, w, 0.0)
  return (x * w).sum(-1) / np.maximum(w.sum(-1), 1e-6)


def _block(v, v_mask, v_gates, u, t, t_mask, t_gates, slope, weights):
  """One block: images (bi, ...) x captions (bt, ...) -> (bi, bt) float32."""
  c = np.matmul(t[None, :, :, :], v[:, None].transpose(0, 1, 3, 2))   # (bi, bt, Lt, Lv)
  c = np.where(c > 0, c, slope * c)
  vm = v_mask[:, None, None, :]
  tm = t_mask[None, :, :, None]
  t2v = np.where(vm, c, NEG).max(-1)                                  # (bi, bt, Lt)
  v2t = np.where(tm, c, NEG).max(-2)                                  # (bi, bt, Lv)
  tmask, vmask = t_mask[None], v_mask[:, None]
  s_ori = _wmean(t2v, tmask, 1.0) + _wmean(v2t, vmask, 1.0)
  s_key = _wmean(t2v, tmask, t_gates[None]) + _wmean(v2t, vmask, v_gates[:, None])
  cu = np.matmul(t[None], u[:, None].transpose(0, 1, 3, 2))          # (bi, bt, Lt, K)
  cu = np.where(cu > 0, cu, slope * cu)
  s_unc = (_wmean(cu.max(-1), tmask, t_gates[None]) +
           np.where(tm, cu, NEG).max(-2).mean(-1))
  w = np.asarray(weights, np.float32) / np.sum(weights)
  return w[0] * s_ori + w[1] * s_key + w[2] * s_unc


def score_matrix(images, texts, slope=0.1, weights=(0.4, 0.4, 0.2), block_images=4,
                 block_texts=128):
  """images {tokens (N, Lv, d), mask, gates, regions (N, 1, K, d)}, texts {tokens
  (M, Lt, d), mask, gates} -> (N, M) float32 GRM scores."""
  v, t = _unit(images["tokens"]), _unit(texts["tokens"])
  u = _unit(images["regions"][:, 0])
  n, m = len(v), len(t)
  out = np.empty((n, m), np.float32)
  for i in range(0, n, block_images):
    si = slice(i, i + block_images)
    for j in range(0, m, block_texts):
      sj = slice(j, j + block_texts)
      out[si, sj] = _block(v[si], images["mask"][si], images["gates"][si], u[si],
                           t[sj], texts["mask"][sj], texts["gates"][sj], slope, weights)
  return out
