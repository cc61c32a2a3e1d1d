"""GRM model: init, encode shapes, switches, bf16, gradients, one jitted train step."""
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from gralign_jax import configs
from gralign_jax import losses
from gralign_jax import weights
from gralign_jax.models import backbones
from gralign_jax.models import bert
from gralign_jax.models import grm
from gralign_jax.models import swin
from gralign_jax.models import vit
from gralign_jax.scores import similarity

B, LT = 2, 32


def model_cfg(small=False, **overrides):
  cfg = configs.model_config()  # image 64, max_len 32, d 256
  cfg.text.vocab_size = 100
  if small:  # one block per backbone: the switch tests only need the wiring
    cfg.vision.depth = cfg.text.depth = 1
  cfg.update(overrides)
  return cfg


def apply(model, params, *args, **kwargs):
  return jax.jit(lambda p, *a: model.apply({"params": p}, *a, **kwargs))(params, *args)


def batch(b=B, seed=0):
  r = np.random.RandomState(seed)
  pixels = jnp.asarray(r.randn(b, 64, 64, 3), jnp.float32)
  ids = jnp.asarray(r.randint(0, 100, (b, LT)), jnp.int32)
  lengths = r.randint(5, LT + 1, size=b)
  mask = jnp.asarray(np.arange(LT)[None] < lengths[:, None])
  return pixels, ids, mask


def init(cfg, b=B):
  model = grm.build_model(cfg)
  params = jax.jit(lambda k: model.init(k, *batch(b)))(jax.random.key(0))["params"]
  return model, params


def train_rngs(seed=1):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  return {"gumbel": k1, "sample": k2, "dropout": k3}


@pytest.fixture(scope="module")
def default_model():
  return init(model_cfg())


def test_init_and_encode_shapes(default_model):
  model, params = default_model
  assert set(params) == {"vision", "text", "img_proj", "txt_proj", "visual_adapter",
                         "text_adapter", "regions"}
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  pixels, ids, mask = batch()
  img, txt = jax.jit(lambda p: model.apply({"params": p}, pixels, ids, mask))(params)
  lv, d = 1 + (64 // 8) ** 2, 256
  assert img["tokens"].shape == (B, lv, d) and img["mask"].dtype == jnp.bool_
  assert img["mask"].all() and img["gates"].shape == (B, lv)
  assert img["regions"].shape == (B, 1, 5, d)
  assert img["region_mu"].shape == img["region_logvar"].shape == (B, 5, d)
  assert img["assign"].shape == (B, lv, 5)
  assert img["global"].shape == (B, d)
  np.testing.assert_allclose(img["global"], img["tokens"].mean(1), atol=1e-5)
  assert txt["tokens"].shape == (B, LT, d) and txt["global"].shape == (B, d)
  assert np.all(np.asarray(txt["gates"])[~np.asarray(mask)] == 0)
  assert set(similarity.pair_scores(img, txt, model.config)) == {"ori", "key", "unc"}


def test_eval_is_deterministic_without_rng(default_model):
  model, params = default_model
  pixels, ids, mask = batch()
  f = jax.jit(lambda p: model.apply({"params": p}, pixels, ids, mask, train=False))
  a, b = f(params), f(params)
  for k in a[0]:
    np.testing.assert_array_equal(a[0][k], b[0][k])


def test_text_padding_is_ignored(default_model):
  model, params = default_model
  pixels, ids, mask = batch()
  junk = jnp.where(mask, ids, (ids * 7 + 3) % 100)
  enc = jax.jit(lambda p, i: model.apply({"params": p}, i, mask,
                                         method=grm.GRM.encode_text))
  a, b = enc(params, ids), enc(params, junk)
  m = np.asarray(mask)
  np.testing.assert_allclose(np.asarray(a["tokens"])[m], np.asarray(b["tokens"])[m],
                             atol=1e-5)
  np.testing.assert_allclose(a["global"], b["global"], atol=1e-5)


def test_bfloat16_compute():
  model, params = init(model_cfg(small=True, compute_dtype="bfloat16"))
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
  pixels, ids, mask = batch()
  img, txt = jax.jit(lambda p: model.apply({"params": p}, pixels, ids, mask, train=True,
                                           rngs=train_rngs()))(params)
  assert img["tokens"].dtype == txt["tokens"].dtype == jnp.bfloat16
  assert img["gates"].dtype == jnp.float32 and img["regions"].dtype == jnp.float32
  scores = similarity.pair_scores(img, txt, model.config)
  for s in scores.values():
    assert s.dtype == jnp.float32 and np.all(np.isfinite(s))


def test_global_and_ablation_switches():
  model, params = init(model_cfg(small=True, score="global"))
  assert set(params) == {"vision", "text", "img_proj", "txt_proj"}
  img, txt = apply(model, params, *batch())
  assert "regions" not in img and np.all(np.asarray(img["gates"]) == 1)
  assert set(similarity.pair_scores(img, txt, model.config)) == {"global"}
  model, params = init(model_cfg(small=True, visual_adapter=False,
                                 text_adapter=False, regions=False))
  assert set(params) == {"vision", "text", "img_proj", "txt_proj"}
  img, txt = apply(model, params, *batch())
  assert set(similarity.pair_scores(img, txt, model.config)) == {"ori"}


def test_backbone_registry_and_errors():
  assert backbones.lookup("vision", "vit") is vit.ViT
  assert backbones.lookup("text", "bert") is bert.Bert
  # A checkpoint's model_type finds the same class; a BiGRU has no HF checkpoints.
  assert backbones.for_hf_model_type("swin", "here") is swin.Swin
  with pytest.raises(weights.CheckpointMismatchError, match="'bigru'.*supported"):
    backbones.for_hf_model_type("bigru", "here")
  cfg = model_cfg()
  cfg.text.vocab_size = 0
  with pytest.raises(ValueError, match="vocab_size"):
    init(cfg)
  cfg = model_cfg()
  cfg.vision.name = "resnet"
  with pytest.raises(ValueError, match="resnet"):
    init(cfg)


def test_jit_train_step_batch16(default_model):
  """One full forward + loss + grad, jitted, at batch 16 (two pairs per image):
  finite, reaching every branch, one compilation for both warm-up phases."""
  model, params = default_model
  cfg, b = model.config, 16
  pixels, ids, mask = batch(b, seed=3)
  image_ids = jnp.arange(b) // 2

  @jax.jit
  def step(p, rng, hardest):
    def loss_fn(p):
      rngs = dict(zip(("gumbel", "sample", "dropout"), jax.random.split(rng, 3)))
      img, txt = model.apply({"params": p}, pixels, ids, mask, train=True, rngs=rngs)
      scores = similarity.pair_scores(img, txt, cfg)
      return losses.grm_loss(scores, img, image_ids, configs.loss_config(), hardest,
                             txt)
    return jax.grad(loss_fn, has_aux=True)(p)

  t0 = time.time()
  grads, aux = step(params, jax.random.key(0), jnp.asarray(False))
  grads2, aux2 = step(params, jax.random.key(1), jnp.asarray(True))
  jax.block_until_ready(grads2)
  assert step._cache_size() == 1  # the warm-up switch does not recompile
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves((grads, grads2)))
  # Every branch gets gradient: adapters through the gate weights, prompts via S_unc.
  for name in ("visual_adapter", "text_adapter", "regions", "vision", "text"):
    assert any(np.abs(g).sum() > 0 for g in jax.tree.leaves(grads[name])), name
  assert float(aux["loss"]) > float(aux2["loss"]) > 0  # sum over negatives > hardest
  assert time.time() - t0 < 120


def test_hard_gates_drop_tokens_at_evaluation_too():
  """gumbel_hard with gate_mode "scale": evaluation gates are the argmax gate (exactly
  0/1, as in training), so dropped tokens change S_key; with the soft gates evaluation
  used before, S_key was S_ori exactly."""
  cfg = model_cfg(small=True, gumbel_hard=True, gate_mode="scale")
  model, params = init(cfg)
  pixels, ids, mask = batch(4, seed=1)
  img, txt = apply(model, params, pixels, ids, mask, train=False)
  for gates, valid in ((img["gates"], img["mask"]), (txt["gates"], txt["mask"])):
    g, m = np.asarray(gates), np.asarray(valid)
    assert set(np.unique(g[m])) == {0.0, 1.0}, np.unique(g[m])
    assert np.all(g[~m] == 0)
  scores = similarity.pair_scores(img, txt, model.config)
  assert not np.allclose(scores["key"], scores["ori"])
  # Deterministic: no rng needed, the same twice.
  again = apply(model, params, pixels, ids, mask, train=False)
  np.testing.assert_array_equal(again[0]["gates"], img["gates"])


def _dropout_text_model(dropout):
  cfg = model_cfg(small=True)
  cfg.text.dropout = dropout
  return init(cfg)


def test_bert_dropout_in_training_only_with_reproducible_rngs():
  """Text dropout (0.1 in the paper rows): applied with train=True, the same for the
  same rng and different for another; train=False is deterministic and equals the
  model without dropout."""
  model, params = _dropout_text_model(0.1)
  plain, _ = _dropout_text_model(0.0)
  _, ids, mask = batch(2, seed=2)
  enc = jax.jit(lambda p, r, train, m=model: m.apply(
      {"params": p}, ids, mask, train=train, rngs=r, method=grm.GRM.encode_text),
      static_argnums=2)
  a = enc(params, train_rngs(1), True)["tokens"]
  b = enc(params, train_rngs(1), True)["tokens"]
  c = enc(params, train_rngs(2), True)["tokens"]
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  e1 = enc(params, {}, False)["tokens"]
  np.testing.assert_array_equal(e1, enc(params, {}, False)["tokens"])
  e0 = jax.jit(lambda p: plain.apply({"params": p}, ids, mask,
                                     method=grm.GRM.encode_text))(params)["tokens"]
  np.testing.assert_allclose(e1, e0, atol=1e-6)
  assert not np.allclose(a, e1)
  # Without dropout, training mode (gates aside) gives the evaluation tokens.
  t0 = jax.jit(lambda p: plain.apply({"params": p}, ids, mask, train=True,
                                     rngs=train_rngs(1),
                                     method=grm.GRM.encode_text))(params)["tokens"]
  np.testing.assert_allclose(t0, e0, atol=1e-6)
