"""Pure image-text scores (method.md section 4), on blocks of images and captions.

Everything takes a block of Ni images and a block of Nt captions and returns (Ni, Nt)
score matrices, so the training step (Ni = Nt = batch) and blockwise evaluation use
the same kernel. The inputs are the dicts that GRM.encode_image / encode_text return;
only the keys in SCORE_KEYS are read, which is what evaluation caches.

Fine-grained score (granularity-aware bidirectional max-pooling):
  c_ij = leaky_relu(cos(t_i, v_j), slope)
  S = wmean_i max_j c_ij + wmean_j max_i c_ij
with maxima and means over valid tokens only (padding never changes a score).
Three scores per pair: S_ori (plain tokens), S_key (gated tokens), S_unc (text tokens
against the K region samples, averaged over the S samples).

Cosine is blind to the scale of a token, so S_ori and S_key share one cosine tensor.
gate_mode "weight" (default): the gates weight the means of S_key and of the text side
of S_unc. gate_mode "scale" (the literal paper form): the gates only scale the tokens,
so a cosine changes only where a gate is exactly 0 (a zero vector has cosine 0 here);
the means are plain. With soft gates this makes S_key equal S_ori, which is the point
of keeping the option: it measures what the weighting buys.
"""
from typing import Mapping, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax.models.layers import l2_normalize

# The encoder outputs a score needs; evaluation caches only these.
SCORE_KEYS = ("tokens", "mask", "gates", "regions", "global")

# Position of each score in model.score_weights / loss.weights; "global" stands alone.
WEIGHT_INDEX = {"ori": 0, "key": 1, "unc": 2}

# Fill for masked entries before a max: far below any leaky_relu(cos) >= -slope, and
# finite so that a zero weight times it is still 0 (the kernels and InfoNCE's masked
# logits use it too).
NEG = -1e9


def token_cosine(t: jax.Array, v: jax.Array, slope: float) -> jax.Array:
  """t (Nt, Lt, d), v (Ni, Lv, d) -> c (Ni, Nt, Lt, Lv) = leaky_relu(cos, slope).

  In float32 whatever the token dtype: the max-pooling compares cosines that differ in
  the third decimal.
  """
  t = l2_normalize(t.astype(jnp.float32))
  v = l2_normalize(v.astype(jnp.float32))
  return jax.nn.leaky_relu(jnp.einsum("tld,ivd->itlv", t, v), slope)


def _wmean(x: jax.Array, valid: jax.Array, w: Optional[jax.Array]) -> jax.Array:
  """Mean of x (..., L) over the last axis, weighted by w (or 1) on valid entries."""
  w = valid.astype(jnp.float32) if w is None else jnp.where(valid, w, 0.0)
  num = jnp.sum(jnp.where(valid, x * w, 0.0), axis=-1)
  return num / jnp.maximum(jnp.sum(w, axis=-1), 1e-6)


def max_mean(c: jax.Array, t_mask: jax.Array, v_mask: jax.Array,
             t_weight: Optional[jax.Array] = None,
             v_weight: Optional[jax.Array] = None) -> jax.Array:
  """c (Ni, Nt, Lt, Lv), t_mask (Nt, Lt), v_mask (Ni, Lv) -> S (Ni, Nt).

  S = wmean_{valid i} max_{valid j} c_ij + wmean_{valid j} max_{valid i} c_ij, the
  means weighted by t_weight (Nt, Lt) / v_weight (Ni, Lv) where given, else plain.
  """
  t_mask = t_mask.astype(bool)
  v_mask = v_mask.astype(bool)
  t2v = jnp.max(jnp.where(v_mask[:, None, None, :], c, NEG), axis=-1)  # (Ni, Nt, Lt)
  v2t = jnp.max(jnp.where(t_mask[None, :, :, None], c, NEG), axis=-2)  # (Ni, Nt, Lv)
  s_t = _wmean(t2v, t_mask[None], None if t_weight is None else t_weight[None])
  s_v = _wmean(v2t, v_mask[:, None], None if v_weight is None else v_weight[:, None])
  return s_t + s_v


def _check(model_config: ml_collections.ConfigDict) -> None:
  if model_config.score not in ("grm", "global"):
    raise ValueError(f"config.model.score must be 'grm' or 'global', got "
                     f"{model_config.score!r}")
  if model_config.gate_mode not in ("weight", "scale"):
    raise ValueError(f"config.model.gate_mode must be 'weight' or 'scale', got "
                     f"{model_config.gate_mode!r}")


def pair_scores(img: Mapping[str, jax.Array], txt: Mapping[str, jax.Array],
                model_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Image block and caption block -> {name: (Ni, Nt)} float32.

  Keys: "ori"; "key" when an adapter is on; "unc" when regions are on; or only
  "global" (cosine of the mean-pooled vectors) when model.score == "global".
  """
  cfg = model_config
  _check(cfg)
  if cfg.score == "global":
    g_i = l2_normalize(img["global"].astype(jnp.float32))
    g_t = l2_normalize(txt["global"].astype(jnp.float32))
    return {"global": jnp.einsum("id,td->it", g_i, g_t)}

  t_mask, v_mask = txt["mask"], img["mask"]
  weight = cfg.gate_mode == "weight"
  c = token_cosine(txt["tokens"], img["tokens"], cfg.leaky_slope)
  scores = {"ori": max_mean(c, t_mask, v_mask)}
  if cfg.visual_adapter or cfg.text_adapter:
    if weight:
      scores["key"] = max_mean(c, t_mask, v_mask, txt["gates"], img["gates"])
    else:
      # The cosine of a scaled token is the cosine of the token unless the scale is 0,
      # where l2_normalize leaves a zero vector: cosine 0, leaky_relu(0) = 0. Under jit
      # this where fuses into the reductions: c is not materialised twice.
      live = ((txt["gates"] > 0)[None, :, :, None] & (img["gates"] > 0)[:, None, None, :])
      scores["key"] = max_mean(jnp.where(live, c, 0.0), t_mask, v_mask)
  if cfg.regions:
    u = img["regions"]
    ni, s, k, d = u.shape
    # Samples become extra "images": each gets its own max over the K regions.
    c_u = token_cosine(txt["tokens"], u.reshape(ni * s, k, d), cfg.leaky_slope)
    if not weight:
      c_u = jnp.where((txt["gates"] > 0)[None, :, :, None], c_u, 0.0)
    s_u = max_mean(c_u, t_mask, jnp.ones((ni * s, k), bool),
                   txt["gates"] if weight else None)
    scores["unc"] = s_u.reshape(ni, s, -1).mean(axis=1)
  return scores


def matched_scores(img: Mapping[str, jax.Array], txt: Mapping[str, jax.Array],
                   model_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Image b with caption b only: img and txt with the same leading axis P ->
  {name: (P,)} float32, pair_scores' entries (b, b) without the other P^2 - P pairs."""
  keys_i = {k: img[k] for k in SCORE_KEYS if k in img}
  keys_t = {k: txt[k] for k in SCORE_KEYS if k in txt}

  def one(i, t):  # one pair, as a 1 x 1 block
    s = pair_scores(jax.tree.map(lambda x: x[None], i), jax.tree.map(lambda x: x[None], t),
                    model_config)
    return {k: v[0, 0] for k, v in s.items()}

  return jax.vmap(one)(keys_i, keys_t)


def own_captions_scores(img: Mapping[str, jax.Array], txt: Mapping[str, jax.Array],
                        model_config: ml_collections.ConfigDict) -> dict[str, jax.Array]:
  """Image b with K captions of its own: img with leading axis P, txt with leading axes
  (P, K) -> {name: (P, K)} float32, matched_scores for each of the K."""
  return jax.vmap(lambda t: matched_scores(img, t, model_config), in_axes=1,
                  out_axes=1)(txt)


def weighted_sum(values: Mapping[str, jax.Array],
                 weights: Sequence[float]) -> jax.Array:
  """sum_k w_k values[k] / sum_k w_k over the keys present ("global": weight 1).

  Normalising over the present keys keeps the scale of a score (and of a loss, which
  uses this too) independent of which switches are on: an ablation that drops S_unc
  still has weights summing to one, and a collapsed model's triplet loss stays at
  exactly 2 x B x margin whatever is on.
  """
  total, norm = 0.0, 0.0
  for name, value in values.items():
    w = 1.0 if name == "global" else float(weights[WEIGHT_INDEX[name]])
    total = total + w * value
    norm += w
  if norm <= 0:
    raise ValueError(f"weights {tuple(weights)} give the scores {list(values)} a zero "
                     "total weight")
  return total / norm


def total_score(scores: Mapping[str, jax.Array],
                model_config: ml_collections.ConfigDict) -> jax.Array:
  """{name: (Ni, Nt)} -> (Ni, Nt) inference score with model.score_weights."""
  return weighted_sum(scores, model_config.score_weights)
