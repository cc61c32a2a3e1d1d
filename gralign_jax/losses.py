"""GRM losses (method.md section 5), pure: (scores, encoder outputs, ids) -> (loss, aux).

L = L_con + s * (recon_weight * L_recon + reg_weight * (L_KL + L_ent) [+ keep-ratio])
with L_con the weighted contrastive loss over the scores that are on (ori, key, unc,
or global alone) and s = loss.regularizer_scale. Conventions settled here:
- triplet: VSE++ hinge in both directions, SUMMED over the batch, so a collapsed model
  (every score equal) sits at exactly 2 x B x margin with hardest negatives, which the
  trainer can detect. `hardest` is a traced bool so the warm-up switch does not
  recompile.
- infonce: cross-entropy in both directions, each averaged over its anchors, summed.
- The weights of L_con are normalised over the scores present (similarity.weighted_sum),
  so the collapse value stays 2 x B x margin under every ablation.
- L_recon "mse" is a true mean over the d dimensions (and the batch): its size does not
  grow with embed_dim. "cos" is 1 - cos.
- L_KL is summed over d (the KL of the d-dimensional Gaussian) and averaged over
  regions and images, as in method.md.
- Regulariser scale. The weights l1 = 0.1, l2 = 0.01 were chosen with InfoNCE, a MEAN
  over anchors (one term per direction); the triplet is a SUM over the B anchors of
  both directions, B times larger for the same per-anchor violation. With
  regularizer_scale "batch" the regularisers are multiplied by B under the triplet
  (by 1 under InfoNCE), so they weigh the same against L_con per anchor in both; a
  number is used as it is (1.0: the weights as written).
- L_ent, entropy_form "paper": minus the entropy of the mean assignment over prompts
  (every prompt used on average; at its best also when every prompt covers the same
  tokens). "mutual_information": minus (that entropy minus the mean per-token
  entropy), the mutual information between tokens and prompts: also asks each token
  to choose. aux reports per-prompt coverage and the mean per-token entropy either way,
  so a collapse of the regions is visible.
"""
import dataclasses
import math
from typing import Mapping, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax.models import layers
from gralign_jax.scores import similarity


def _offdiag_negatives(positives: jax.Array) -> jax.Array:
  """(B, B) bool: True where (i, j) is a negative (never the diagonal)."""
  return ~(positives | jnp.eye(positives.shape[0], dtype=bool))


def triplet(scores: jax.Array, positives: jax.Array, margin: float,
            hardest: jax.Array, false_scores: Optional[jax.Array] = None,
            false_valid: Optional[jax.Array] = None) -> jax.Array:
  """scores (B, B) rows = images, cols = captions of the batch pairs -> scalar.

  positives (B, B) bool: pairs that share an image id (never negatives).
  hardest: bool scalar; False sums over all violating negatives (warm-up), True keeps
  only the hardest negative per anchor, in each direction.
  false_scores (B, K): image i with K captions of its own made false (composition-aware
  hard negatives), K more negative captions for image anchor i where false_valid
  (B, K) bool; captions stay anchors of the batch's images only.
  """
  scores = scores.astype(jnp.float32)
  neg = _offdiag_negatives(positives)
  diag = jnp.diagonal(scores)
  # Image anchor i (row), negative captions j; caption anchor j (column), negative
  # images i.
  cost_c = jnp.where(neg, jax.nn.relu(margin + scores - diag[:, None]), 0.0)
  cost_i = jnp.where(neg, jax.nn.relu(margin + scores - diag[None, :]), 0.0)
  if false_scores is not None:  # K more columns per image anchor
    cost_f = jnp.where(false_valid, jax.nn.relu(
        margin + false_scores.astype(jnp.float32) - diag[:, None]), 0.0)
    cost_c = jnp.concatenate([cost_c, cost_f], axis=1)
  summed = jnp.sum(cost_c) + jnp.sum(cost_i)
  hard = jnp.sum(jnp.max(cost_c, axis=1)) + jnp.sum(jnp.max(cost_i, axis=0))
  return jnp.where(hardest, hard, summed)


def infonce(scores: jax.Array, positives: jax.Array, temperature: float,
            false_scores: Optional[jax.Array] = None,
            false_valid: Optional[jax.Array] = None) -> jax.Array:
  """Symmetric InfoNCE: scores (B, B), positives (B, B) bool -> scalar.

  The diagonal is the target; other positives (same image) leave the denominators, so
  a caption is never pushed away from its own image. false_scores (B, K), false_valid
  (B, K) bool: as in triplet, K more captions in image i's denominator.
  """
  logits = scores.astype(jnp.float32) / temperature
  b = scores.shape[0]
  others = positives & ~jnp.eye(b, dtype=bool)
  logits = jnp.where(others, similarity.NEG, logits)
  t2i = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=0)))
  if false_scores is not None:
    extra = jnp.where(false_valid, false_scores.astype(jnp.float32) / temperature,
                      similarity.NEG)
    logits = jnp.concatenate([logits, extra], axis=1)
  i2t = -jnp.mean(jnp.diagonal(jax.nn.log_softmax(logits, axis=1)))
  return i2t + t2i


def kl_divergence(mu: jax.Array, logvar: jax.Array) -> jax.Array:
  """mu, logvar (B, K, d) -> mean_{b,k} KL(N(mu, e^logvar) || N(0, I)), summed over d."""
  kl = -0.5 * jnp.sum(1.0 + logvar - jnp.square(mu) - jnp.exp(logvar), axis=-1)
  return jnp.mean(kl)


def reconstruction(mu: jax.Array, tokens: jax.Array, mask: jax.Array,
                   kind: str = "mse") -> jax.Array:
  """mu (B, K, d), tokens (B, Lv, d), mask (B, Lv) -> scalar.

  Compares mean_k mu_k with the masked mean of the tokens: "mse" is the mean over d
  and the batch of the squared difference; "cos" is mean_b (1 - cos).
  """
  pred = jnp.mean(mu.astype(jnp.float32), axis=1)
  target = layers.masked_mean(tokens, mask)
  if kind == "mse":
    return jnp.mean(jnp.square(pred - target))
  if kind == "cos":
    cos = jnp.sum(layers.l2_normalize(pred) * layers.l2_normalize(target), -1)
    return jnp.mean(1.0 - cos)
  raise ValueError(f"config.loss.recon must be 'mse' or 'cos', got {kind!r}")


def _entropy(p: jax.Array) -> jax.Array:
  """Entropy over the last axis (0 log 0 = 0)."""
  return -jnp.sum(p * jnp.log(jnp.maximum(p, 1e-12)), axis=-1)


def assignment_stats(assign: jax.Array, mask: jax.Array) -> dict[str, jax.Array]:
  """assign A_hat (B, Lv, K), mask (B, Lv) -> the pieces of L_ent.

  q (B, Lv, K): each token's assignment normalised over the K prompts; p (B, K): its
  mean over valid tokens (the share of the image each prompt takes); "h_mean" (B,)
  = H(p_b); "h_token" (B,) = mean over valid tokens of H(q_bl).
  """
  q = assign / jnp.maximum(jnp.sum(assign, axis=-1, keepdims=True), 1e-12)
  m = mask.astype(jnp.float32)
  count = jnp.maximum(jnp.sum(m, axis=1), 1.0)
  p = jnp.sum(q * m[..., None], axis=1) / count[:, None]  # (B, K)
  h_token = jnp.sum(_entropy(q) * m, axis=1) / count
  return {"p": p, "h_mean": _entropy(p), "h_token": h_token}


def prompt_entropy(assign: jax.Array, mask: jax.Array, form: str = "paper") -> jax.Array:
  """assign A_hat (B, Lv, K), mask (B, Lv) -> L_ent (scalar).

  "paper": -mean_b H(p_b), p_b the mean over valid tokens of each token's assignment
  normalised over the K prompts. Minimising it pushes every prompt to be used.
  "mutual_information": -mean_b [H(p_b) - mean_l H(q_bl)]: every prompt used AND each
  token's assignment sharp, so prompts that all take the same tokens no longer score
  best (they leave every token's assignment uniform).
  """
  stats = assignment_stats(assign, mask)
  if form == "paper":
    return -jnp.mean(stats["h_mean"])
  if form == "mutual_information":
    return -jnp.mean(stats["h_mean"] - stats["h_token"])
  raise ValueError(f"config.loss.entropy_form must be 'paper' or 'mutual_information', "
                   f"got {form!r}")


def regularizer_scale(loss_config: ml_collections.ConfigDict,
                      batch_size: int) -> float:
  """The factor on the regulariser weights (loss.regularizer_scale, module docstring):
  "batch" -> batch_size for the triplet (a sum over the batch), 1 for InfoNCE."""
  value = loss_config.get("regularizer_scale", "batch")
  if value == "batch":
    return float(batch_size) if loss_config.kind == "triplet" else 1.0
  try:
    value = float(value)
  except (TypeError, ValueError):
    value = -1.0
  if value < 0:
    raise ValueError(f"config.loss.regularizer_scale must be 'batch' or a number >= 0, "
                     f"got {loss_config.regularizer_scale!r}")
  return value


def keep_ratio_penalty(gates: jax.Array, mask: jax.Array, rho: float) -> jax.Array:
  """gates (B, L), mask (B, L) -> (mean of the gates over valid tokens - rho)^2."""
  m = mask.astype(jnp.float32)
  return jnp.square(jnp.sum(gates * m) / jnp.maximum(jnp.sum(m), 1.0) - rho)


def grm_loss(scores: Mapping[str, jax.Array], img: Mapping[str, jax.Array],
             image_ids: jax.Array, loss_config: ml_collections.ConfigDict,
             hardest: jax.Array,
             txt: Optional[Mapping[str, jax.Array]] = None,
             false_scores: Optional[Mapping[str, jax.Array]] = None,
             false_valid: Optional[jax.Array] = None
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The full objective on one batch of B pairs.

  scores: similarity.pair_scores of the batch with itself, {name: (B, B)}.
  img: GRM.encode_image output (region keys are used when present).
  image_ids (B,) int: pairs with the same id are positives.
  hardest: bool scalar, the warm-up switch of the triplet loss.
  txt: GRM.encode_text output, only read by the keep-ratio penalty on text gates.
  false_scores {name: (B, K)}, false_valid (B, K) bool: image i scored with K captions
  of its own made false (similarity.own_captions_scores; loss.hard_negatives), K more
  negative captions per image anchor; aux then has "false_win" (the share of valid
  false captions that the true caption outscores, by the total score).
  Returns (loss, aux): aux has "loss", "l_con", "l_<score>" per score, "l_recon",
  "l_kl", "l_ent" (when regions are on; reported even if switched off),
  "prompt_coverage" (K,) (mean share of an image each prompt takes; 1/K each when
  every prompt is used alike), "prompt_coverage_min", "prompt_coverage_max",
  "assign_entropy" (mean per-token entropy of the assignment over prompts: log K
  when no token chooses), "reg_scale" (the regularizer_scale applied), "l_keep" (when
  on), "score_spread" (std of the total score matrix), "pos_score", "neg_score".
  """
  cfg = loss_config
  positives = image_ids[:, None] == image_ids[None, :]
  reg_scale = regularizer_scale(cfg, image_ids.shape[0])
  terms = {}
  for name, s in scores.items():
    extra = {} if false_scores is None else dict(false_scores=false_scores[name],
                                                 false_valid=false_valid)
    if cfg.kind == "triplet":
      terms[name] = triplet(s, positives, cfg.margin, hardest, **extra)
    elif cfg.kind == "infonce":
      terms[name] = infonce(s, positives, cfg.temperature, **extra)
    else:
      raise ValueError(f"config.loss.kind must be 'triplet' or 'infonce', got "
                       f"{cfg.kind!r}")
  l_con = similarity.weighted_sum(terms, cfg.weights)
  aux = {f"l_{name}": value for name, value in terms.items()}
  aux["l_con"] = l_con
  loss = l_con

  if "region_mu" in img:
    aux["l_recon"] = reconstruction(img["region_mu"], img["tokens"], img["mask"],
                                    cfg.recon)
    aux["l_kl"] = kl_divergence(img["region_mu"], img["region_logvar"])
    aux["l_ent"] = prompt_entropy(img["assign"], img["mask"],
                                  cfg.get("entropy_form", "paper"))
    stats = jax.lax.stop_gradient(assignment_stats(img["assign"], img["mask"]))
    coverage = jnp.mean(stats["p"], axis=0)
    aux.update(prompt_coverage=coverage, prompt_coverage_min=jnp.min(coverage),
               prompt_coverage_max=jnp.max(coverage),
               assign_entropy=jnp.mean(stats["h_token"]))
    reg = (aux["l_kl"] if cfg.kl else 0.0) + (aux["l_ent"] if cfg.ent else 0.0)
    if reg_scale == 1.0:  # the same operations as before the scale existed
      loss = loss + cfg.recon_weight * aux["l_recon"] + cfg.reg_weight * reg
    else:
      loss = loss + reg_scale * (cfg.recon_weight * aux["l_recon"]
                                 + cfg.reg_weight * reg)

  if cfg.keep_ratio >= 0 and cfg.keep_ratio_weight > 0:
    keep = keep_ratio_penalty(img["gates"], img["mask"], cfg.keep_ratio)
    if txt is not None:
      keep = keep + keep_ratio_penalty(txt["gates"], txt["mask"], cfg.keep_ratio)
    aux["l_keep"] = keep
    loss = loss + reg_scale * cfg.keep_ratio_weight * keep

  # Collapse detection: with every score equal, the spread is 0 and pos == neg.
  total = jax.lax.stop_gradient(similarity.weighted_sum(scores, cfg.weights))
  pos = positives.astype(jnp.float32)
  aux["score_spread"] = jnp.std(total)
  aux["pos_score"] = jnp.sum(total * pos) / jnp.maximum(jnp.sum(pos), 1.0)
  aux["neg_score"] = jnp.sum(total * (1 - pos)) / jnp.maximum(jnp.sum(1 - pos), 1.0)
  if false_scores is not None:
    f_total = jax.lax.stop_gradient(similarity.weighted_sum(false_scores, cfg.weights))
    valid = false_valid.astype(jnp.float32)
    aux["false_win"] = (jnp.sum((jnp.diagonal(total)[:, None] > f_total) * valid)
                        / jnp.maximum(jnp.sum(valid), 1.0))
  aux["reg_scale"] = jnp.float32(reg_scale)
  aux["loss"] = loss
  return loss, aux


# ---------------------------------------------------------------------------
# The objective of a run: grm_loss over the run's schedule.
# ---------------------------------------------------------------------------
NEVER = int(np.iinfo(np.int32).max)


@dataclasses.dataclass(frozen=True)
class Objective:
  """config.loss over a run: objective(scores, img, image_ids, step, txt) -> (loss, aux).

  It owns what depends on the step and on the loss kind, so the trainer only passes the
  step: the triplet's warm-up switch to hardest negatives (hard_from, a traced
  comparison, no recompilation) and what a collapsed model's loss would be.
  """
  config: ml_collections.FrozenConfigDict  # config.loss
  batch_size: int
  hard_from: int          # the first step with hardest negatives (NEVER: none)
  lr_warmup_steps: int

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict,
                  steps_per_epoch: int) -> "Objective":
    """loss.warmup_epochs (< 0: never hardest) at steps_per_epoch -> the switch step."""
    warmup = config.loss.warmup_epochs
    hard_from = int(round(warmup * steps_per_epoch)) if warmup >= 0 else NEVER
    return cls(ml_collections.FrozenConfigDict(config.loss), config.train.batch_size,
               hard_from, config.train.warmup_steps)

  def __call__(self, scores, img, image_ids, step, txt=None, false_scores=None,
               false_valid=None):
    return grm_loss(scores, img, image_ids, self.config, hardest=step >= self.hard_from,
                    txt=txt, false_scores=false_scores, false_valid=false_valid)

  def describe(self, total_steps: int) -> str:
    """'loss triplet, hardest negatives from step 312' (the switch when it comes)."""
    hard = self.config.kind == "triplet" and self.hard_from < total_steps
    return (f"loss {self.config.kind}"
            + (f", hardest negatives from step {self.hard_from}" if hard else ""))

  def watch_collapse(self, step: int) -> bool:
    """Whether a collapse at `step` means something: after the switch to hardest
    negatives (which is where a triplet collapses), else after the lr warm-up."""
    start = self.hard_from if self.config.kind == "triplet" else self.lr_warmup_steps
    return step > start

  def collapsed_value(self, step: int) -> float:
    """L_con of a model whose every score is equal: 2 x B x margin for the hardest-
    negative triplet, 2 x (B - 1) x B x margin summed, about 2 ln B for InfoNCE (the
    exact value is 2 ln of the number of negatives + 1 per anchor)."""
    b = self.batch_size
    if self.config.kind == "triplet":
      per_anchor = 1 if step >= self.hard_from else b - 1
      return 2.0 * b * per_anchor * float(self.config.margin)
    return 2.0 * math.log(b)

