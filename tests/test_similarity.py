"""similarity.py against explicit-loop NumPy references (method.md section 4)."""
import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from gralign_jax import configs
from gralign_jax.scores import similarity

SLOPE = 0.1


def np_cos(a, b, slope):
  """leaky_relu(cos(a, b)); a zero vector has cosine 0 (as l2_normalize gives)."""
  na, nb = np.linalg.norm(a), np.linalg.norm(b)
  cs = 0.0 if na == 0 or nb == 0 else float(a @ b) / (na * nb)
  return cs if cs > 0 else slope * cs


def np_token_cosine(t, v, slope):
  ni, lv, _ = v.shape
  nt, lt, _ = t.shape
  c = np.zeros((ni, nt, lt, lv))
  for i in range(ni):
    for n in range(nt):
      for l in range(lt):
        for j in range(lv):
          c[i, n, l, j] = np_cos(t[n, l], v[i, j], slope)
  return c


def np_max_mean(c, t_mask, v_mask, t_weight=None, v_weight=None):
  ni, nt, lt, lv = c.shape
  out = np.zeros((ni, nt))
  for i in range(ni):
    for n in range(nt):
      tl = [l for l in range(lt) if t_mask[n, l]]
      vj = [j for j in range(lv) if v_mask[i, j]]
      num = den = 0.0
      for l in tl:
        w = 1.0 if t_weight is None else t_weight[n, l]
        num += w * max(c[i, n, l, j] for j in vj)
        den += w
      s = num / den
      num = den = 0.0
      for j in vj:
        w = 1.0 if v_weight is None else v_weight[i, j]
        num += w * max(c[i, n, l, j] for l in tl)
        den += w
      out[i, n] = s + num / den
  return out


def random_inputs(seed=0, ni=3, nt=4, lt=5, lv=6, d=8, k=3, s=2, zero_gates=False):
  r = np.random.RandomState(seed)
  t_len = r.randint(1, lt + 1, size=nt)
  t_len[0] = lt
  v_len = r.randint(2, lv + 1, size=ni)
  t_mask = np.arange(lt)[None] < t_len[:, None]
  v_mask = np.arange(lv)[None] < v_len[:, None]
  t_gates = r.uniform(0.05, 1.0, (nt, lt)) * t_mask
  v_gates = r.uniform(0.05, 1.0, (ni, lv)) * v_mask
  if zero_gates:  # exact zeros, as a hard straight-through gate gives
    t_gates[0, 1] = 0.0
    v_gates[1, 0] = 0.0
  img = dict(tokens=r.randn(ni, lv, d).astype(np.float32), mask=v_mask,
             gates=v_gates.astype(np.float32),
             regions=r.randn(ni, s, k, d).astype(np.float32),
             **{"global": r.randn(ni, d).astype(np.float32)})
  txt = dict(tokens=r.randn(nt, lt, d).astype(np.float32), mask=t_mask,
             gates=t_gates.astype(np.float32),
             **{"global": r.randn(nt, d).astype(np.float32)})
  return img, txt


def np_pair_scores(img, txt, cfg):
  """Literal method.md: scale the tokens by the gates, then cosines."""
  if cfg.score == "global":
    gi, gt = img["global"], txt["global"]
    return {"global": np.array([[np_cos(a, b, 1.0) for b in gt] for a in gi])}
  weight = cfg.gate_mode == "weight"
  tm, vm = txt["mask"], img["mask"]
  c = np_token_cosine(txt["tokens"], img["tokens"], SLOPE)
  out = {"ori": np_max_mean(c, tm, vm)}
  if cfg.visual_adapter or cfg.text_adapter:
    if weight:
      out["key"] = np_max_mean(c, tm, vm, txt["gates"], img["gates"])
    else:
      t_hat = txt["tokens"] * txt["gates"][..., None]
      v_hat = img["tokens"] * img["gates"][..., None]
      out["key"] = np_max_mean(np_token_cosine(t_hat, v_hat, SLOPE), tm, vm)
  if cfg.regions:
    u = img["regions"]
    ni, s, k, _ = u.shape
    t = txt["tokens"] if weight else txt["tokens"] * txt["gates"][..., None]
    acc = 0.0
    for j in range(s):
      cu = np_token_cosine(t, u[:, j], SLOPE)
      acc = acc + np_max_mean(cu, tm, np.ones((ni, k), bool),
                              txt["gates"] if weight else None)
    out["unc"] = acc / s
  return out


def jx(d):
  return {k: jnp.asarray(v) for k, v in d.items()}


def test_token_cosine_matches_reference():
  img, txt = random_inputs()
  c = similarity.token_cosine(jnp.asarray(txt["tokens"]), jnp.asarray(img["tokens"]),
                              SLOPE)
  assert c.shape == (3, 4, 5, 6) and c.dtype == jnp.float32
  np.testing.assert_allclose(c, np_token_cosine(txt["tokens"], img["tokens"], SLOPE),
                             atol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_max_mean_matches_reference(weighted):
  img, txt = random_inputs(1)
  c = np_token_cosine(txt["tokens"], img["tokens"], SLOPE)
  tw, vw = (txt["gates"], img["gates"]) if weighted else (None, None)
  got = similarity.max_mean(jnp.asarray(c), txt["mask"], img["mask"],
                            None if tw is None else jnp.asarray(tw),
                            None if vw is None else jnp.asarray(vw))
  np.testing.assert_allclose(got, np_max_mean(c, txt["mask"], img["mask"], tw, vw),
                             atol=1e-5)


def test_padding_tokens_never_change_a_score():
  """Appending padding with random values (and random gates) leaves every score."""
  cfg = configs.model_config()
  img, txt = random_inputs(2)
  base = similarity.pair_scores(jx(img), jx(txt), cfg)
  r = np.random.RandomState(3)
  pad = lambda x, n, axis: np.concatenate(
      [x, r.randn(*x.shape[:axis], n, *x.shape[axis + 1:]).astype(x.dtype) * 5], axis)
  img2, txt2 = dict(img), dict(txt)
  img2["tokens"] = pad(img["tokens"], 3, 1)
  img2["gates"] = np.abs(pad(img["gates"], 3, 1))
  img2["mask"] = np.concatenate([img["mask"], np.zeros((3, 3), bool)], 1)
  txt2["tokens"] = pad(txt["tokens"], 4, 1)
  txt2["gates"] = np.abs(pad(txt["gates"], 4, 1))
  txt2["mask"] = np.concatenate([txt["mask"], np.zeros((4, 4), bool)], 1)
  padded = similarity.pair_scores(jx(img2), jx(txt2), cfg)
  assert set(base) == {"ori", "key", "unc"}
  for name in base:
    np.testing.assert_allclose(padded[name], base[name], atol=1e-6, err_msg=name)


SWITCHES = list(itertools.product([False, True], [False, True], [False, True],
                                  ["weight", "scale"]))


@pytest.mark.parametrize("visual,text,regions,mode", SWITCHES)
def test_pair_scores_every_switch(visual, text, regions, mode):
  cfg = configs.model_config()
  cfg.visual_adapter, cfg.text_adapter, cfg.regions, cfg.gate_mode = (
      visual, text, regions, mode)
  img, txt = random_inputs(4, zero_gates=True)
  # A switched-off adapter exposes mask-valued gates (what GRM does).
  if not visual:
    img["gates"] = img["mask"].astype(np.float32)
  if not text:
    txt["gates"] = txt["mask"].astype(np.float32)
  got = similarity.pair_scores(jx(img), jx(txt), cfg)
  want = np_pair_scores(img, txt, cfg)
  assert set(got) == set(want)
  for name in want:
    assert got[name].shape == (3, 4)
    np.testing.assert_allclose(got[name], want[name], atol=1e-5, err_msg=name)


def test_scale_mode_soft_gates_key_equals_ori():
  cfg = configs.model_config()
  cfg.gate_mode = "scale"
  img, txt = random_inputs(5)
  got = similarity.pair_scores(jx(img), jx(txt), cfg)
  np.testing.assert_allclose(got["key"], got["ori"], atol=1e-6)


def test_global_score():
  cfg = configs.model_config()
  cfg.score = "global"
  img, txt = random_inputs(6)
  got = similarity.pair_scores(jx(img), jx(txt), cfg)
  assert set(got) == {"global"}
  np.testing.assert_allclose(got["global"], np_pair_scores(img, txt, cfg)["global"],
                             atol=1e-5)
  np.testing.assert_allclose(similarity.total_score(got, cfg), got["global"])


def test_total_score_weights_present_scores():
  cfg = configs.model_config()
  r = np.random.RandomState(7)
  s = {k: jnp.asarray(r.randn(3, 4)) for k in ("ori", "key", "unc")}
  np.testing.assert_allclose(similarity.total_score(s, cfg),
                             0.4 * s["ori"] + 0.4 * s["key"] + 0.2 * s["unc"],
                             atol=1e-6)
  # Without S_unc the remaining weights are renormalised to sum to one.
  two = {k: s[k] for k in ("ori", "key")}
  np.testing.assert_allclose(similarity.total_score(two, cfg),
                             0.5 * s["ori"] + 0.5 * s["key"], atol=1e-6)
  np.testing.assert_allclose(similarity.total_score({"ori": s["ori"]}, cfg), s["ori"],
                             atol=1e-6)


def test_score_keys_cover_what_pair_scores_reads():
  cfg = configs.model_config()
  img, txt = random_inputs(8)
  keep = lambda d: {k: v for k, v in jx(d).items() if k in similarity.SCORE_KEYS}
  got = similarity.pair_scores(keep(img), keep(txt), cfg)
  assert set(got) == {"ori", "key", "unc"}


@pytest.mark.parametrize("score", ["grm", "global"])
def test_own_captions_scores_are_the_pairs_entries_of_each_image_with_its_own(score):
  """own_captions_scores: image b with its K captions, as the literal reference scores
  image b against every caption; matched_scores is the K = 1 case."""
  cfg = configs.model_config()
  cfg.score = score
  img, txt = random_inputs(5, ni=3, nt=6)  # 3 images, 2 captions of their own each
  want = np_pair_scores(img, txt, cfg)
  own = {k: v.reshape(3, 2, *v.shape[1:]) for k, v in txt.items()}
  got = similarity.own_captions_scores(jx(img), jx(own), cfg)
  one = similarity.matched_scores(jx(img), jx({k: v[:, 0] for k, v in own.items()}), cfg)
  assert set(got) == set(want)
  for name in want:
    expected = np.stack([want[name][b, 2 * b:2 * b + 2] for b in range(3)])
    np.testing.assert_allclose(got[name], expected, atol=1e-5, err_msg=name)
    np.testing.assert_allclose(one[name], expected[:, 0], atol=1e-5, err_msg=name)
