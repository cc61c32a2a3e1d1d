"""Region prompts (method.md section 3) and saliency adapters (section 2) against NumPy."""
import math

import jax
import jax.numpy as jnp
import numpy as np

from gralign_jax.models import regions
from gralign_jax.models import saliency

_erf = np.vectorize(math.erf)


def np_gelu(x):
  return 0.5 * x * (1 + _erf(x / math.sqrt(2)))


def np_dense(p, x):
  return x @ np.asarray(p["kernel"]) + np.asarray(p["bias"])


def np_layernorm(p, x, eps=1e-6):
  mean = x.mean(-1, keepdims=True)
  var = x.var(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * np.asarray(p["scale"]) + np.asarray(p["bias"])


def region_inputs(seed=0, b=2, lv=7, d=6):
  r = np.random.RandomState(seed)
  v_hat = r.randn(b, lv, d).astype(np.float32)
  mask = np.ones((b, lv), bool)
  mask[1, 4:] = False
  v_hat[1, 4:] = r.randn(3, d) * 3  # junk at padding must be ignored
  return v_hat, mask


def np_regions(params, v_hat, mask):
  p = np.asarray(params["prompts"])
  p_hat = p / np.linalg.norm(p, axis=-1, keepdims=True)
  b, lv, _ = v_hat.shape
  k = p.shape[0]
  a_hat = np.zeros((b, lv, k))
  mu = np.zeros((b, k, v_hat.shape[-1]))
  for i in range(b):
    for kk in range(k):
      col = np.array([1 / (1 + math.exp(-(v_hat[i, l] @ p_hat[kk]))) if mask[i, l] else 0
                      for l in range(lv)])
      a_hat[i, :, kk] = col / col.sum()
      mu[i, kk] = sum(a_hat[i, l, kk] * v_hat[i, l] for l in range(lv))
  logvar = np_dense(params["logvar_fc2"], np_gelu(np_dense(params["logvar_fc1"], mu)))
  return a_hat, mu, logvar


def test_region_prompts_eval_matches_reference():
  v_hat, mask = region_inputs()
  mod = regions.RegionPrompts(num_regions=3, logvar_hidden=5)
  params = mod.init(jax.random.key(0), v_hat, mask)["params"]
  out = mod.apply({"params": params}, v_hat, mask)  # eval: no rng needed
  assert out["regions"].shape == (2, 1, 3, 6)
  assert out["region_mu"].shape == out["region_logvar"].shape == (2, 3, 6)
  assert out["assign"].shape == (2, 7, 3)
  a_hat, mu, logvar = np_regions(params, v_hat, mask)
  np.testing.assert_allclose(out["assign"], a_hat, atol=1e-6)
  np.testing.assert_allclose(out["assign"].sum(1), np.ones((2, 3)), atol=1e-6)
  assert np.all(np.asarray(out["assign"])[1, 4:] == 0)
  np.testing.assert_allclose(out["region_mu"], mu, atol=1e-5)
  np.testing.assert_allclose(out["region_logvar"], logvar, atol=1e-5)
  np.testing.assert_allclose(out["regions"][:, 0], mu, atol=1e-5)
  again = mod.apply({"params": params}, v_hat, mask)
  np.testing.assert_array_equal(again["regions"], out["regions"])


def test_region_samples_have_mean_mu_and_stated_variance():
  """u_k ~ N(mu_k, ||A_hat[:,k]||^2 sigma_k^2): Monte Carlo over S samples."""
  v_hat, mask = region_inputs(1)
  s = 4000
  mod = regions.RegionPrompts(num_regions=3, logvar_hidden=5, num_samples=s)
  params = mod.init(jax.random.key(0), v_hat, mask)["params"]
  out = mod.apply({"params": params}, v_hat, mask, train=True,
                  rngs={"sample": jax.random.key(1)})
  u = np.asarray(out["regions"])
  assert u.shape == (2, s, 3, 6)
  a_hat, mu, logvar = np_regions(params, v_hat, mask)
  var = (a_hat ** 2).sum(1)[..., None] * np.exp(logvar)
  np.testing.assert_allclose(u.mean(1), mu, atol=4 * np.sqrt(var.max() / s))
  np.testing.assert_allclose(u.var(1), var, rtol=0.15)
  # Uncertainty off: training gives the mean, S = 1.
  off = regions.RegionPrompts(num_regions=3, logvar_hidden=5, uncertainty=False)
  out = off.apply({"params": params}, v_hat, mask, train=True)
  np.testing.assert_allclose(out["regions"][:, 0], mu, atol=1e-5)


def adapter_inputs(seed=2, b=3, l=5, d=6):
  r = np.random.RandomState(seed)
  x = r.randn(b, l, d).astype(np.float32)
  mask = np.arange(l)[None] < np.array([[5], [3], [1]])
  return x, mask


def test_adapter_eval_is_softmax_keep():
  x, mask = adapter_inputs()
  mod = saliency.SaliencyAdapter(hidden=4)
  params = mod.init(jax.random.key(0), x, mask)["params"]
  a = mod.apply({"params": params}, x, mask)
  h = np_dense(params["fc2"], np_gelu(np_dense(params["fc1"],
                                               np_layernorm(params["ln"], x))))
  keep = np.exp(h[..., 0]) / np.exp(h).sum(-1)
  np.testing.assert_allclose(a, keep * mask, atol=1e-6)
  np.testing.assert_array_equal(mod.apply({"params": params}, x, mask), a)


def test_gumbel_gates_in_unit_interval_zero_at_padding():
  x, mask = adapter_inputs()
  for hard in (False, True):
    mod = saliency.SaliencyAdapter(hidden=4, hard=hard)
    params = mod.init(jax.random.key(0), x, mask)["params"]
    a1 = np.asarray(mod.apply({"params": params}, x, mask, train=True,
                              rngs={"gumbel": jax.random.key(1)}))
    a2 = np.asarray(mod.apply({"params": params}, x, mask, train=True,
                              rngs={"gumbel": jax.random.key(2)}))
    assert np.all((a1 >= 0) & (a1 <= 1)) and np.all(a1[~mask] == 0)
    assert not np.array_equal(a1, a2)
    if hard:
      assert set(np.unique(np.round(a1, 5))) <= {0.0, 1.0}


def test_gumbel_hard_frequency_matches_softmax():
  """Gumbel-max: P(keep wins) = softmax(h)[keep]; the gradient is the soft one."""
  logits = jnp.array([[1.0, 0.0], [-0.5, 0.7], [0.0, 0.0]])
  n = 20000
  keys = jax.random.split(jax.random.key(3), n)
  draws = jax.vmap(lambda k: saliency.gumbel_softmax_keep(k, logits, 1.0, True))(keys)
  np.testing.assert_allclose(draws.mean(0), jax.nn.softmax(logits)[:, 0], atol=0.02)
  g = jax.grad(lambda h: saliency.gumbel_softmax_keep(keys[0], h, 1.0, True).sum())(
      logits)
  g_soft = jax.grad(lambda h: saliency.gumbel_softmax_keep(keys[0], h, 1.0, False)
                    .sum())(logits)
  np.testing.assert_allclose(g, g_soft, atol=1e-6)


def test_hard_gates_at_evaluation_are_the_argmax_gate():
  """gumbel_hard: evaluation uses the noise-free form of the training gate, exactly 0
  or 1 (keep iff the keep logit beats the drop logit), 0 at padding."""
  x = np.random.RandomState(5).randn(4, 9, 6).astype(np.float32)
  mask = np.ones((4, 9), bool)
  mask[1, 6:] = False
  mod = saliency.SaliencyAdapter(hidden=4, hard=True)
  params = mod.init(jax.random.key(0), x, mask)["params"]
  a = np.asarray(mod.apply({"params": params}, x, mask))
  h = np_dense(params["fc2"], np_gelu(np_dense(params["fc1"],
                                               np_layernorm(params["ln"], x))))
  want = ((h[..., 0] > h[..., 1]) & mask).astype(np.float32)
  np.testing.assert_array_equal(a, want)
  assert set(np.unique(a)) == {0.0, 1.0}  # some tokens kept, some dropped
  np.testing.assert_array_equal(mod.apply({"params": params}, x, mask), a)
  # Soft gates keep the softmax at evaluation.
  soft = saliency.SaliencyAdapter(hidden=4, hard=False)
  np.testing.assert_allclose(soft.apply({"params": params}, x, mask),
                             np.exp(h[..., 0]) / np.exp(h).sum(-1) * mask, atol=1e-6)


def test_gumbel_tau_schedule_is_geometric_then_held():
  taus = [float(saliency.gumbel_tau_at(s, 1.0, 0.1, 100)) for s in (0, 50, 100, 150)]
  np.testing.assert_allclose(taus, [1.0, 0.1 ** 0.5, 0.1, 0.1], rtol=1e-6)
  # tau_final == tau (the default) is a constant temperature, exactly.
  assert {float(saliency.gumbel_tau_at(s, 0.7, 0.7, 100)) for s in (0, 37, 100)} == {
      np.float32(0.7)}


def test_annealed_adapter_trains_at_the_step_tau_and_evaluates_at_the_final_one():
  """Training: softmax((h + g) / tau_step)[keep] with the step's tau passed in, g the
  Gumbel noise of the "gumbel" rng; evaluation: softmax(h / tau_final)[keep]."""
  x, mask = adapter_inputs()
  mod = saliency.SaliencyAdapter(hidden=4, tau=0.3)
  params = mod.init(jax.random.key(0), x, mask)["params"]
  h = np_dense(params["fc2"], np_gelu(np_dense(params["fc1"],
                                               np_layernorm(params["ln"], x))))
  rng = jax.random.key(4)
  tau_step = 0.4
  a = np.asarray(mod.apply({"params": params}, x, mask, train=True, tau=tau_step,
                           rngs={"gumbel": rng}))
  # The same rng gives the same noise g, so the gate's log-odds times tau,
  # (h + g)[keep] - (h + g)[drop], does not depend on tau: compare two temperatures.
  b = np.asarray(mod.apply({"params": params}, x, mask, train=True, tau=1.0,
                           rngs={"gumbel": rng}))
  # Without a step tau, training uses the module's own (final) temperature.
  c = np.asarray(mod.apply({"params": params}, x, mask, train=True,
                           rngs={"gumbel": rng}))
  logit = lambda p: np.log(p) - np.log1p(-p)
  m = mask.copy()
  for gate in (a, b, c):  # where no float32 gate has saturated
    m &= (gate > 1e-5) & (gate < 1 - 1e-5)
  assert m.sum() >= 8
  np.testing.assert_allclose(logit(a[m]) * tau_step, logit(b[m]), rtol=2e-3, atol=2e-3)
  np.testing.assert_allclose(logit(c[m]) * 0.3, logit(b[m]), rtol=2e-3, atol=2e-3)
  e = np.asarray(mod.apply({"params": params}, x, mask))
  z = h / 0.3
  want = 1 / (1 + np.exp(z[..., 1] - z[..., 0]))
  np.testing.assert_allclose(e, want * mask, atol=1e-6)
