"""losses.py against explicit-loop NumPy references (method.md section 5)."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gralign_jax import configs
from gralign_jax import losses
from gralign_jax.evaluation import collapse


def np_triplet(s, ids, margin, hardest, false=None, valid=None):
  b = len(ids)
  total = 0.0
  for i in range(b):  # image anchor, negative captions (and its own made false)
    costs = [max(0.0, margin + s[i, j] - s[i, i]) for j in range(b) if ids[j] != ids[i]]
    if false is not None:  # false (B, K), valid (B, K)
      costs += [max(0.0, margin + f - s[i, i]) for f, v in zip(false[i], valid[i]) if v]
    total += (max(costs) if hardest else sum(costs)) if costs else 0.0
  for j in range(b):  # caption anchor, negative images
    costs = [max(0.0, margin + s[i, j] - s[j, j]) for i in range(b) if ids[i] != ids[j]]
    total += (max(costs) if hardest else sum(costs)) if costs else 0.0
  return total


def np_infonce(s, ids, temperature, false=None, valid=None):
  b = len(ids)
  i2t = t2i = 0.0
  for a in range(b):
    row = [s[a, j] / temperature for j in range(b) if j == a or ids[j] != ids[a]]
    if false is not None:
      row += [f / temperature for f, v in zip(false[a], valid[a]) if v]
    i2t += -(s[a, a] / temperature - math.log(sum(math.exp(x) for x in row)))
    col = [s[i, a] / temperature for i in range(b) if i == a or ids[i] != ids[a]]
    t2i += -(s[a, a] / temperature - math.log(sum(math.exp(x) for x in col)))
  return i2t / b + t2i / b


def np_kl(mu, logvar):
  b, k, d = mu.shape
  total = 0.0
  for i in range(b):
    for j in range(k):
      total += -0.5 * sum(1 + logvar[i, j, e] - mu[i, j, e] ** 2 - math.exp(logvar[i, j, e])
                          for e in range(d))
  return total / (b * k)


def np_recon(mu, tokens, mask, kind):
  out = []
  for i in range(mu.shape[0]):
    pred = mu[i].mean(0)
    target = tokens[i][mask[i]].mean(0)
    if kind == "mse":
      out.append(np.mean((pred - target) ** 2))
    else:
      out.append(1 - pred @ target / (np.linalg.norm(pred) * np.linalg.norm(target)))
  return np.mean(out)


def np_entropy(assign, mask):
  hs = []
  for i in range(assign.shape[0]):
    rows = [assign[i, l] / assign[i, l].sum() for l in range(assign.shape[1]) if mask[i, l]]
    p = np.mean(rows, axis=0)
    hs.append(-sum(x * math.log(x) for x in p))
  return -np.mean(hs)


IDS = np.array([0, 0, 1, 2, 3, 3, 4, 5])  # repeated ids: extra positives


@pytest.mark.parametrize("hardest", [False, True])
def test_triplet_matches_reference(hardest):
  s = np.random.RandomState(0).uniform(-0.2, 1.0, (8, 8))
  got = losses.triplet(jnp.asarray(s), jnp.asarray(IDS[:, None] == IDS[None]), 0.2,
                       jnp.asarray(hardest))
  np.testing.assert_allclose(got, np_triplet(s, IDS, 0.2, hardest), rtol=1e-5)


def test_triplet_collapse_value():
  b, margin = 8, 0.2
  s = jnp.full((b, b), 0.37)
  pos = jnp.asarray(IDS[:, None] == IDS[None])
  np.testing.assert_allclose(losses.triplet(s, pos, margin, jnp.asarray(True)),
                             2 * b * margin, rtol=1e-6)


def test_triplet_hardest_switch_is_traced():
  s = jnp.asarray(np.random.RandomState(1).randn(8, 8))
  pos = jnp.asarray(IDS[:, None] == IDS[None])
  f = jax.jit(lambda h: losses.triplet(s, pos, 0.2, h))
  np.testing.assert_allclose(f(jnp.asarray(False)), np_triplet(np.asarray(s), IDS, 0.2,
                                                                False), rtol=1e-5)
  np.testing.assert_allclose(f(jnp.asarray(True)), np_triplet(np.asarray(s), IDS, 0.2,
                                                               True), rtol=1e-5)
  assert f._cache_size() == 1


def test_infonce_matches_reference():
  s = np.random.RandomState(2).uniform(-0.2, 1.0, (8, 8))
  got = losses.infonce(jnp.asarray(s), jnp.asarray(IDS[:, None] == IDS[None]), 0.05)
  np.testing.assert_allclose(got, np_infonce(s, IDS, 0.05), rtol=1e-5)


FALSE_VALID = np.array([1, 1, 0, 1, 1, 0, 1, 1], bool)[:, None]
# Two per image anchor: both, the first only, or none.
FALSE_VALID_2 = np.array([[1, 1], [1, 0], [0, 0], [1, 1], [1, 1], [0, 0], [1, 0], [1, 1]],
                         bool)


@pytest.mark.parametrize("per_caption", [1, 2])
@pytest.mark.parametrize("kind", ["triplet_summed", "triplet_hardest", "infonce"])
def test_false_captions_are_more_negatives_per_image_anchor(kind, per_caption):
  """loss.hard_negatives: image i's own captions made false (K of them) join its
  negatives (not where false_valid is False); the caption anchors are unchanged."""
  rng = np.random.RandomState(3)
  s = rng.uniform(-0.2, 1.0, (8, 8))
  valid = FALSE_VALID if per_caption == 1 else FALSE_VALID_2
  # about as high as the row's highest score, so that they weigh for the hardest too
  false = s.max(1)[:, None] + rng.uniform(-0.1, 0.2, (8, per_caption))
  pos = jnp.asarray(IDS[:, None] == IDS[None])
  args = dict(false_scores=jnp.asarray(false), false_valid=jnp.asarray(valid))
  if kind == "infonce":
    got = losses.infonce(jnp.asarray(s), pos, 0.05, **args)
    want, without = (np_infonce(s, IDS, 0.05, false, valid),
                     np_infonce(s, IDS, 0.05))
  else:
    hardest = kind == "triplet_hardest"
    got = losses.triplet(jnp.asarray(s), pos, 0.2, jnp.asarray(hardest), **args)
    want, without = (np_triplet(s, IDS, 0.2, hardest, false, valid),
                     np_triplet(s, IDS, 0.2, hardest))
  np.testing.assert_allclose(got, want, rtol=1e-5)
  assert want > without + 1e-3  # the false captions weigh


def test_grm_loss_reports_how_often_the_true_caption_beats_the_false_one():
  rng = np.random.RandomState(4)
  b = 8
  scores = {"ori": jnp.asarray(rng.uniform(size=(b, b)), jnp.float32)}
  false = np.diagonal(np.asarray(scores["ori"]))[:, None] + np.array(
      [-0.1, 0.1, -0.1, -0.1, 0.1, 0.2, -0.1, -0.1])[:, None]  # rows 1, 4 lose; 5 invalid
  cfg = configs.loss_config()
  cfg.weights = (1.0,)
  _, aux = losses.grm_loss(scores, {}, jnp.asarray(IDS), cfg, jnp.asarray(False),
                           false_scores={"ori": jnp.asarray(false, jnp.float32)},
                           false_valid=jnp.asarray(FALSE_VALID))
  np.testing.assert_allclose(aux["false_win"], 4 / 6, rtol=1e-6)


def test_kl_recon_entropy_keep():
  r = np.random.RandomState(3)
  mu, logvar = r.randn(2, 3, 4), r.randn(2, 3, 4) * 0.5
  np.testing.assert_allclose(losses.kl_divergence(jnp.asarray(mu), jnp.asarray(logvar)),
                             np_kl(mu, logvar), rtol=1e-5)
  tokens = r.randn(2, 6, 4)
  mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
  for kind in ("mse", "cos"):
    np.testing.assert_allclose(
        losses.reconstruction(jnp.asarray(mu), jnp.asarray(tokens), mask, kind),
        np_recon(mu, tokens, mask, kind), rtol=1e-5, atol=1e-6)
  with pytest.raises(ValueError, match="recon"):
    losses.reconstruction(jnp.asarray(mu), jnp.asarray(tokens), mask, "l1")
  assign = r.uniform(0.01, 1, (2, 6, 3))
  np.testing.assert_allclose(losses.prompt_entropy(jnp.asarray(assign), mask),
                             np_entropy(assign, mask), rtol=1e-5)
  gates = r.uniform(0, 1, (2, 6)) * mask
  np.testing.assert_allclose(losses.keep_ratio_penalty(jnp.asarray(gates), mask, 0.3),
                             (gates[mask].mean() - 0.3) ** 2, rtol=1e-5)


def fake_batch(seed=4, b=8, lv=6, k=3, d=4):
  r = np.random.RandomState(seed)
  scores = {n: jnp.asarray(r.uniform(-0.1, 1.0, (b, b))) for n in ("ori", "key", "unc")}
  img = dict(tokens=jnp.asarray(r.randn(b, lv, d)), mask=jnp.ones((b, lv), bool),
             gates=jnp.asarray(r.uniform(0, 1, (b, lv))),
             region_mu=jnp.asarray(r.randn(b, k, d)),
             region_logvar=jnp.asarray(r.randn(b, k, d) * 0.3),
             assign=jnp.asarray(r.uniform(0.01, 1, (b, lv, k))))
  return scores, img


@pytest.mark.parametrize("kl,ent,hardest", [(True, True, False), (False, True, True),
                                             (True, False, True)])
def test_grm_loss_combines_terms(kl, ent, hardest):
  """Triplet with regularizer_scale "batch": the regularisers are scaled by B = 8."""
  cfg = configs.loss_config()
  cfg.kl, cfg.ent = kl, ent
  scores, img = fake_batch()
  loss, aux = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(hardest))
  con = sum(w * np_triplet(np.asarray(scores[n]), IDS, 0.2, hardest)
            for w, n in zip((0.4, 0.4, 0.2), ("ori", "key", "unc")))
  mu, lv, a = (np.asarray(img[k]) for k in ("region_mu", "region_logvar", "assign"))
  recon = np_recon(mu, np.asarray(img["tokens"]), np.asarray(img["mask"]), "mse")
  reg = (np_kl(mu, lv) if kl else 0) + (np_entropy(a, np.asarray(img["mask"])) if ent
                                        else 0)
  np.testing.assert_allclose(aux["l_con"], con, rtol=1e-5)
  b = len(IDS)
  np.testing.assert_allclose(loss, con + b * (0.1 * recon + 0.01 * reg), rtol=1e-5)
  assert float(aux["reg_scale"]) == b
  assert {"loss", "l_con", "l_ori", "l_key", "l_unc", "l_recon", "l_kl", "l_ent",
          "score_spread", "pos_score", "neg_score"} <= set(aux)
  assert "l_keep" not in aux


def test_grm_loss_collapse_aux_and_variants():
  cfg = configs.loss_config()
  b = 8
  scores = {"ori": jnp.full((b, b), 0.5)}  # regions and adapters off, collapsed
  img = dict(tokens=jnp.ones((b, 2, 4)), mask=jnp.ones((b, 2), bool),
             gates=jnp.full((b, 2), 0.9))
  loss, aux = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(True))
  np.testing.assert_allclose(loss, 2 * b * cfg.margin, rtol=1e-6)
  assert float(aux["score_spread"]) == 0.0
  assert float(aux["pos_score"]) == float(aux["neg_score"]) == 0.5
  assert "l_recon" not in aux
  # Keep-ratio penalty on visual and text gates.
  cfg.keep_ratio, cfg.keep_ratio_weight = 0.5, 2.0
  txt = dict(gates=jnp.full((b, 3), 0.2), mask=jnp.ones((b, 3), bool))
  loss2, aux2 = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(True),
                                txt)
  np.testing.assert_allclose(aux2["l_keep"], 0.4 ** 2 + 0.3 ** 2, rtol=1e-5)
  # The triplet sums over the batch: the penalty is scaled by B (regularizer_scale).
  np.testing.assert_allclose(loss2, loss + b * 2.0 * aux2["l_keep"], rtol=1e-6)
  # InfoNCE alternative and the global score.
  cfg.kind = "infonce"
  s = np.random.RandomState(5).randn(b, b)
  loss3, aux3 = losses.grm_loss({"global": jnp.asarray(s)}, img, jnp.asarray(IDS), cfg,
                                jnp.asarray(True))
  np.testing.assert_allclose(aux3["l_global"], np_infonce(s, IDS, 0.05), rtol=1e-5)


def test_grm_loss_grad_finite():
  cfg = configs.loss_config()
  scores, img = fake_batch(6)
  mask = img.pop("mask")
  g = jax.grad(lambda s, i: losses.grm_loss(s, i | {"mask": mask}, jnp.asarray(IDS),
                                            cfg, jnp.asarray(False))[0],
               argnums=(0, 1))(scores, img)
  for leaf in jax.tree.leaves(g):
    assert np.all(np.isfinite(leaf))


@pytest.mark.parametrize("kind,scale,want", [
    ("triplet", "batch", 8.0),     # a sum over the batch: regularisers x B
    ("infonce", "batch", 1.0),     # a mean over anchors: as chosen on the demo
    ("triplet", 1.0, 1.0), ("infonce", 3.0, 3.0),
    ("triplet", "2.5", 2.5),       # a number given on the command line as text
])
def test_regularizer_scale(kind, scale, want):
  cfg = configs.loss_config()
  cfg.kind, cfg.regularizer_scale = kind, scale
  cfg.keep_ratio, cfg.keep_ratio_weight = 0.5, 2.0
  scores, img = fake_batch()
  loss, aux = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(True))
  mu, lv, a = (np.asarray(img[k]) for k in ("region_mu", "region_logvar", "assign"))
  mask = np.asarray(img["mask"])
  recon = np_recon(mu, np.asarray(img["tokens"]), mask, "mse")
  reg = np_kl(mu, lv) + np_entropy(a, mask)
  keep = (np.asarray(img["gates"])[mask].mean() - 0.5) ** 2
  np.testing.assert_allclose(
      loss, float(aux["l_con"]) + want * (0.1 * recon + 0.01 * reg + 2.0 * keep),
      rtol=1e-5)
  assert float(aux["reg_scale"]) == want
  assert losses.regularizer_scale(cfg, len(IDS)) == want


def test_regularizer_scale_rejects_nonsense():
  cfg = configs.loss_config()
  for bad in ("sum", -1.0):
    cfg.regularizer_scale = bad
    with pytest.raises(ValueError, match="regularizer_scale"):
      losses.regularizer_scale(cfg, 8)
    config = configs.base_config()
    config.loss.regularizer_scale = bad
    with pytest.raises(configs.ConfigError, match="regularizer_scale"):
      configs.validate(config)


def np_mutual_information(assign, mask):
  """-(H(mean assignment) - mean per-token H), per image, averaged: explicit loops."""
  out = []
  for i in range(assign.shape[0]):
    rows = [assign[i, l] / assign[i, l].sum() for l in range(assign.shape[1]) if mask[i, l]]
    p = np.mean(rows, axis=0)
    h_mean = -sum(x * math.log(x) for x in p)
    h_tok = np.mean([-sum(x * math.log(x) for x in q) for q in rows])
    out.append(h_mean - h_tok)
  return -np.mean(out)


def test_entropy_mutual_information_form_matches_numpy():
  r = np.random.RandomState(7)
  assign = r.uniform(0.01, 1, (3, 6, 4))
  mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6, [1, 1, 0, 0, 0, 0]], bool)
  got = losses.prompt_entropy(jnp.asarray(assign), mask, "mutual_information")
  np.testing.assert_allclose(got, np_mutual_information(assign, mask), rtol=1e-5)
  # The default stays the paper form.
  np.testing.assert_allclose(losses.prompt_entropy(jnp.asarray(assign), mask),
                             np_entropy(assign, mask), rtol=1e-5)
  with pytest.raises(ValueError, match="entropy_form"):
    losses.prompt_entropy(jnp.asarray(assign), mask, "other")


def test_entropy_forms_tell_collapsed_regions_apart():
  """Every prompt on the same tokens (each token's assignment uniform): the paper form
  is at its best (-log K); the MI form is at its worst (0)."""
  k = 4
  same = np.ones((2, 5, k))        # every prompt covers every token alike
  picked = np.tile(np.eye(k)[None, [0, 1, 2, 3, 0]], (2, 1, 1)) + 1e-9  # one each
  mask = np.ones((2, 5), bool)
  paper = lambda a: float(losses.prompt_entropy(jnp.asarray(a), mask, "paper"))
  mi = lambda a: float(losses.prompt_entropy(jnp.asarray(a), mask, "mutual_information"))
  assert paper(same) == pytest.approx(-math.log(k), abs=1e-5)
  assert mi(same) == pytest.approx(0.0, abs=1e-5)
  assert mi(picked) < -1.0 and paper(picked) > -math.log(k)


def test_aux_reports_prompt_coverage_and_token_entropy():
  cfg = configs.loss_config()
  scores, img = fake_batch()
  _, aux = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(True))
  a, mask = np.asarray(img["assign"]), np.asarray(img["mask"])
  q = a / a.sum(-1, keepdims=True)
  coverage = np.mean([q[i][mask[i]].mean(0) for i in range(len(a))], axis=0)
  h_tok = np.mean([np.mean(-(q[i][mask[i]] * np.log(q[i][mask[i]])).sum(-1))
                   for i in range(len(a))])
  np.testing.assert_allclose(aux["prompt_coverage"], coverage, rtol=1e-5)
  assert aux["prompt_coverage"].shape == (a.shape[-1],)
  np.testing.assert_allclose(float(aux["prompt_coverage_min"]), coverage.min(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["prompt_coverage_max"]), coverage.max(), rtol=1e-5)
  np.testing.assert_allclose(float(aux["assign_entropy"]), h_tok, rtol=1e-5)
  # The MI form switch reaches grm_loss.
  cfg.entropy_form = "mutual_information"
  _, aux_mi = losses.grm_loss(scores, img, jnp.asarray(IDS), cfg, jnp.asarray(True))
  np.testing.assert_allclose(aux_mi["l_ent"], np_mutual_information(a, mask), rtol=1e-5)


def _config(kind, warmup_epochs=1.0, batch_size=6):
  config = configs.base_config()
  config.loss.update(kind=kind, warmup_epochs=warmup_epochs, margin=0.2)
  config.train.update(batch_size=batch_size, warmup_steps=7)
  return config


def test_the_objective_switches_to_hardest_negatives_at_its_warmup_step():
  objective = losses.Objective.from_config(_config("triplet", 1.5), steps_per_epoch=10)
  assert objective.hard_from == 15
  assert objective.describe(100) == "loss triplet, hardest negatives from step 15"
  assert objective.describe(15) == "loss triplet"  # the switch never comes
  assert losses.Objective.from_config(_config("triplet", -1), 10).hard_from == losses.NEVER
  s = np.random.default_rng(0).normal(size=(6, 6)).astype(np.float32)
  ids, img = jnp.arange(6), {"gates": jnp.ones((6, 3)), "mask": jnp.ones((6, 3), bool)}
  for step, hardest in ((14, False), (15, True)):
    got, _ = jax.jit(objective.__call__)({"ori": jnp.asarray(s)}, img, ids,
                                         jnp.int32(step))
    np.testing.assert_allclose(got, np_triplet(s, list(range(6)), 0.2, hardest),
                               rtol=1e-5)


@pytest.mark.parametrize("kind,step", [("triplet", 3), ("triplet", 20), ("infonce", 3)])
def test_the_collapse_reference_is_the_loss_of_a_collapsed_model(kind, step):
  """Every score equal, distinct images: L_con is exactly the objective's reference."""
  objective = losses.Objective.from_config(_config(kind), steps_per_epoch=10)
  scores = {"ori": jnp.full((6, 6), 0.3)}
  img = {"gates": jnp.ones((6, 3)), "mask": jnp.ones((6, 3), bool)}
  _, aux = objective(scores, img, jnp.arange(6), jnp.int32(step))
  assert float(aux["l_con"]) == pytest.approx(objective.collapsed_value(step), rel=1e-5)
  message = collapse.training_message(objective, step, jax.device_get(aux))
  name = {("triplet", 3): "summed triplet", ("triplet", 20): "hardest-negative triplet",
          ("infonce", 3): "InfoNCE"}[kind, step]
  assert f"a collapsed {name} sits at about {objective.collapsed_value(step):.1f}" in message
  # Watched after the switch (step 10) for the triplet, after the lr warm-up (7) else.
  assert objective.watch_collapse(9) == (kind == "infonce")
  assert objective.watch_collapse(11)
