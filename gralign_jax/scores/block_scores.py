"""The GRM scoring engine: encoded image and caption token sets -> score matrix or
streaming top-k, on every device, with the backend chosen for the hardware.

S_ori, S_key and S_unc (method.md section 4) are all masked, weighted max-means over
one cosine matrix per pair, and each is linear in two kinds of maxima: per text token,
the max over a group of image columns (visual tokens; the K regions of one sample), and
per image column, the max over the text's valid tokens. So the images become columns
(visual tokens, then regions) carrying a group id and a weight, the texts become rows
carrying a validity flag and one weight per group, and a single pass over the cosines
gives the weighted sum of all three scores (or any one of them, with one weight on):

  images: {"tokens": (N, L_c, d) unit vectors, "col": (N, 2, L_c) [group, weight]}
  texts:  {"tokens": (M, L_t, d) unit vectors, "row": (M, 1 + G, L_t) [valid, w_g..]}

Block score functions (scorer.py picks one): xla_scores (the reference and the
portable fallback: blocks of (bi, bt, L_t, L_c) in memory; lowers for every platform),
pallas_scores (pallas_kernels.py: tiles never leave the chip; the Triton kernel for
KernelParams, the Mosaic TPU kernel for TpuKernelParams, each padded by kernel_layout;
interpreted on a CPU), reference_scores
(similarity.pair_scores itself, the definition; what gate_mode "scale" runs on) and
global_scores (model.score "global": cosine of the pooled vectors). Blocks and devices
are blockwise.py's: images split over the mesh, texts streamed.
"""
import dataclasses
from typing import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from gralign_jax.scores import blockwise
from gralign_jax.scores import pallas_kernels
from gralign_jax.scores import similarity

BACKENDS = ("auto", "xla", "pallas", "reference")
DTYPES = {"float32": np.float32, "bfloat16": jnp.bfloat16}
NEG = similarity.NEG


# ---------------------------------------------------------------------------
# Encodings -> rows and columns (host NumPy, once per gallery).
# ---------------------------------------------------------------------------
def score_mix(model_config, weights: Mapping[str, float] | None = None) -> dict:
  """{score name: coefficient} over the scores the config switches on, summing to 1
  (similarity.weighted_sum's normalisation); weights overrides score_weights."""
  present = ["ori"]
  if model_config.visual_adapter or model_config.text_adapter:
    present.append("key")
  if model_config.regions:
    present.append("unc")
  if weights is None:
    weights = {k: model_config.score_weights[similarity.WEIGHT_INDEX[k]] for k in present}
  unknown = set(weights) - set(present)
  if unknown:
    raise ValueError(f"weights name scores {sorted(unknown)} that this config does not "
                     f"compute; it computes {present}.")
  total = float(sum(weights.values()))
  if total <= 0:
    raise ValueError(f"weights {dict(weights)} sum to {total}; need a positive total.")
  return {k: float(weights.get(k, 0.0)) / total for k in present}


def _unit(x: np.ndarray) -> np.ndarray:
  """l2-normalised float32 (a zero vector stays zero, as models.layers.l2_normalize)."""
  x = np.asarray(x, np.float32)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-6)


def _wmean_weights(valid: np.ndarray, w: np.ndarray | None) -> np.ndarray:
  """(n, L) weights of similarity._wmean: w (or 1) on valid entries over their sum."""
  w = valid.astype(np.float32) if w is None else np.where(valid, w, 0.0).astype(np.float32)
  return w / np.maximum(w.sum(-1, keepdims=True), 1e-6)


def _pad_axis(x: np.ndarray, axis: int, size: int, value=0) -> np.ndarray:
  pad = [(0, 0)] * x.ndim
  pad[axis] = (0, size - x.shape[axis])
  return np.pad(x, pad, constant_values=value)


@dataclasses.dataclass(frozen=True)
class Layout:
  """Padding of the prepared arrays: L_t to a power of two or a multiple, L_c and d to
  multiples (kernel_layout; xla: none needed)."""
  pow2_text: bool = False
  col_multiple: int = 1
  d_multiple: int = 1
  text_multiple: int = 1


def kernel_layout(params) -> Layout:
  """The padding a kernel variant wants. Triton: power-of-two L_t, L_c and d in
  multiples of 16 (its matmul shapes). TPU: L_c and d in multiples of 128 (vreg lanes),
  L_t of 16 (bf16 packs 16 rows per vreg)."""
  if params.platform == "tpu":
    return Layout(text_multiple=16, col_multiple=128, d_multiple=128)
  return Layout(pow2_text=True, col_multiple=16, d_multiple=16)


def prepare_images(enc: Mapping[str, np.ndarray], mix: Mapping[str, float],
                   dtype=np.float32, layout: Layout = Layout()) -> dict:
  """encode_image outputs {tokens (N, Lv, d), mask, gates, regions (N, S, K, d)} ->
  {"tokens": (N, L_c, d), "col": (N, 2, L_c) float32}."""
  v, mask = _unit(enc["tokens"]), np.asarray(enc["mask"]).astype(bool)
  w = mix["ori"] * _wmean_weights(mask, None)
  if "key" in mix:
    w = w + mix["key"] * _wmean_weights(mask, enc["gates"])
  cols, gid, wcol = [v], [np.where(mask, 0.0, -1.0)], [w]
  if "unc" in mix:
    u = _unit(enc["regions"])                                   # (N, S, K, d)
    n, s, k, d = u.shape
    cols.append(u.reshape(n, s * k, d))
    gid.append(np.broadcast_to(1.0 + np.repeat(np.arange(s), k), (n, s * k)))
    wcol.append(np.full((n, s * k), mix["unc"] / (s * k), np.float32))
  cols, gid, wcol = (np.concatenate(x, 1) for x in (cols, gid, wcol))
  lc = blockwise.round_up(cols.shape[1], layout.col_multiple)
  d = blockwise.round_up(cols.shape[2], layout.d_multiple)
  tokens = _pad_axis(_pad_axis(cols, 1, lc), 2, d).astype(dtype)
  col = np.stack([_pad_axis(gid, 1, lc, -1.0), _pad_axis(wcol, 1, lc)], 1)
  return {"tokens": tokens, "col": col.astype(np.float32)}


def prepare_texts(enc: Mapping[str, np.ndarray], mix: Mapping[str, float],
                  num_samples: int = 1, dtype=np.float32,
                  layout: Layout = Layout()) -> dict:
  """encode_text outputs {tokens (M, Lt, d), mask, gates} -> {"tokens": (M, L_t, d),
  "row": (M, 1 + G, L_t) float32}, G = 1 + num_samples with regions, else 1."""
  t, mask = _unit(enc["tokens"]), np.asarray(enc["mask"]).astype(bool)
  w = mix["ori"] * _wmean_weights(mask, None)
  if "key" in mix:
    w = w + mix["key"] * _wmean_weights(mask, enc["gates"])
  rows = [mask.astype(np.float32), w]
  if "unc" in mix:  # S_unc: gate-weighted text side, averaged over the samples
    w_unc = mix["unc"] / num_samples * _wmean_weights(mask, enc["gates"])
    rows += [w_unc] * num_samples
  lt = t.shape[1]
  lt = (1 << (lt - 1).bit_length() if layout.pow2_text
        else blockwise.round_up(lt, layout.text_multiple))
  d = blockwise.round_up(t.shape[2], layout.d_multiple)
  row = _pad_axis(np.stack(rows, 1), 2, lt)
  return {"tokens": _pad_axis(_pad_axis(t, 1, lt), 2, d).astype(dtype),
          "row": row.astype(np.float32)}


# ---------------------------------------------------------------------------
# Block score functions (pure; blockwise.py calls them per image x text block).
# ---------------------------------------------------------------------------
def xla_scores(img, txt, *, slope: float) -> jax.Array:
  """Prepared blocks (bi, L_c, d) x (bt, L_t, d) -> (bi, bt); the XLA reference.

  leaky_relu is monotone, so it is applied to the maxima, not to every cosine: the
  (bi, bt, L_t, L_c) tile is read once per maximum and never rewritten.
  """
  c = jnp.einsum("tld,icd->itlc", txt["tokens"], img["tokens"],
                 preferred_element_type=jnp.float32)
  leaky = lambda x: jnp.maximum(x, slope * x)                     # slope <= 1
  gid, w_col = img["col"][:, 0], img["col"][:, 1]                 # (bi, L_c)
  valid = txt["row"][:, 0] > 0                                    # (bt, L_t)
  col_max = leaky(jnp.max(jnp.where(valid[None, :, :, None], c, NEG), axis=2))
  s = jnp.sum(col_max * w_col[:, None, :], axis=-1)
  for g in range(txt["row"].shape[1] - 1):
    row_max = leaky(jnp.max(jnp.where((gid == g)[:, None, None, :], c, NEG), axis=3))
    s = s + jnp.sum(row_max * txt["row"][None, :, 1 + g], axis=-1)
  return s


def _pad_items(x: jax.Array, n: int) -> jax.Array:
  return x if x.shape[0] == n else jnp.pad(x, [(0, n - x.shape[0])] + [(0, 0)] * (x.ndim - 1))


def pallas_scores(img, txt, *, slope: float, params, interpret: bool) -> jax.Array:
  """Same contract as xla_scores, through the fused kernel that params name
  (KernelParams: Triton, flat layouts; TpuKernelParams: Mosaic), inputs padded to its
  tiles."""
  (bi, lc, d), (bt, lt, _) = img["tokens"].shape, txt["tokens"].shape
  ni = blockwise.round_up(bi, params.tile_images)
  mt = blockwise.round_up(bt, params.tile_texts)
  if params.platform == "tpu":
    out = pallas_kernels.max_mean_scores_tpu(
        _pad_items(txt["tokens"], mt), _pad_items(txt["row"], mt).transpose(0, 2, 1),
        _pad_items(img["tokens"], ni), _pad_items(img["col"], ni),
        groups=txt["row"].shape[1] - 1, slope=slope, params=params, interpret=interpret)
    return out[:bi, :bt]
  v = _pad_items(img["tokens"], ni).reshape(ni * lc, d)
  vcol = _pad_items(img["col"], ni).transpose(1, 0, 2).reshape(2, ni * lc)
  t = _pad_items(txt["tokens"], mt).reshape(mt * lt, d)
  r = txt["row"].shape[1]
  trow = _pad_items(txt["row"], mt).transpose(1, 0, 2).reshape(r, mt * lt)
  out = pallas_kernels.max_mean_scores(t, trow, v, vcol, lt=lt, lc=lc, groups=r - 1,
                                       slope=slope, params=params, interpret=interpret)
  return out[:bi, :bt]


def global_scores(img, txt) -> jax.Array:
  """{"global": (bi, d) unit} x {"global": (bt, d) unit} -> (bi, bt) cosines."""
  return jnp.einsum("id,td->it", img["global"], txt["global"],
                    preferred_element_type=jnp.float32)


def reference_scores(img, txt, *, model_config, mix) -> jax.Array:
  """similarity.pair_scores mixed with the engine's coefficients (the definition)."""
  scores = similarity.pair_scores(img, txt, model_config)
  return sum(mix[k] * scores[k] for k in mix)

