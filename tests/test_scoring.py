"""Tests for evaluation/scoring.py (blockwise sharded scores, streaming top-k) and the
GRM engine on top of it (engine.py, scorer.py) against similarity.pair_scores."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from gralign_jax import configs
from gralign_jax.evaluation import scorer
from gralign_jax.evaluation import scoring
from gralign_jax.models import similarity

N, M, LV, LT, D = 13, 37, 5, 4, 8  # ragged against every block size used below


def token_score(img, txt):
  """Masked bidirectional max-mean of token cosines: {tokens (bi, Lv, d)} x
  {tokens (bt, Lt, d), mask (bt, Lt)} -> (bi, bt)."""
  v = img["tokens"].astype(jnp.float32)
  t = txt["tokens"].astype(jnp.float32)
  mask = txt["mask"].astype(bool)
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
  c = jnp.einsum("bvd,ctd->bctv", v, t)                       # (bi, bt, Lt, Lv)
  t2v = jnp.max(c, -1)                                        # (bi, bt, Lt)
  t2v = jnp.sum(t2v * mask, -1) / jnp.sum(mask, -1)
  v2t = jnp.max(jnp.where(mask[None, :, :, None], c, -jnp.inf), -2).mean(-1)
  return t2v + v2t


def mean_cosine(img, txt):
  """No epsilon on purpose: an all-zero padding row would give NaN."""
  v = img["tokens"].astype(jnp.float32).mean(1)
  t = txt["tokens"].astype(jnp.float32).mean(1)
  v = v / jnp.linalg.norm(v, axis=-1, keepdims=True)
  t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
  return v @ t.T


def _data(seed=0, dtype=np.float32, n=N, m=M):
  rng = np.random.default_rng(seed)
  images = {"tokens": rng.normal(size=(n, LV, D)).astype(dtype)}
  lengths = rng.integers(1, LT + 1, size=m)
  texts = {"tokens": rng.normal(size=(m, LT, D)).astype(dtype),
           "mask": (np.arange(LT)[None, :] < lengths[:, None]).astype(np.int32)}
  return images, texts


def _mesh(n_dev):
  return Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))


@pytest.mark.parametrize("n_dev,bi,bt", [(8, 1, 8), (8, 64, 512), (1, 4, 5), (1, 3, 37)])
def test_matches_direct(n_dev, bi, bt):
  images, texts = _data()
  want = np.asarray(token_score(images, texts))
  got = scoring.score_matrix(token_score, images, texts, block_images=bi,
                             block_texts=bt, mesh=_mesh(n_dev))
  assert got.shape == (N, M) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_default_mesh_jax_inputs_and_bf16():
  images, texts = _data(seed=1, dtype=jnp.bfloat16)
  images = jax.tree.map(jnp.asarray, images)  # jax arrays in, as well as numpy
  want = np.asarray(token_score(images, texts))
  got = scoring.score_matrix(token_score, images, texts, block_images=2, block_texts=6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_axis_mesh():
  images, texts = _data(seed=2)
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ("a", "b"))
  got = scoring.score_matrix(mean_cosine, images, texts, block_images=1, block_texts=16,
                             mesh=mesh)
  np.testing.assert_allclose(got, np.asarray(mean_cosine(images, texts)), atol=1e-5)


def test_padding_never_leaks_nan():
  images, texts = _data(seed=3)
  got = scoring.score_matrix(mean_cosine, images, texts, block_images=4, block_texts=16)
  assert np.isfinite(got).all()


def test_compiled_once_per_shapes():
  traces = []

  def counted(img, txt):
    traces.append(1)  # runs at trace time only
    return mean_cosine(img, txt)

  images, texts = _data(seed=4)
  mesh = _mesh(8)
  a = scoring.score_matrix(counted, images, texts, block_images=2, block_texts=4, mesh=mesh)
  assert len(traces) == 1  # ten text blocks, one program
  b = scoring.score_matrix(counted, images, texts, block_images=2, block_texts=4, mesh=mesh)
  assert len(traces) == 1
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_dev,bi,bt,k", [(8, 1, 4, 10), (1, 4, 16, 3), (8, 2, 8, M)])
def test_topk_texts_per_image(n_dev, bi, bt, k):
  images, texts = _data(seed=5)
  full = np.asarray(token_score(images, texts))
  vals, idx = scoring.topk_texts_per_image(token_score, images, texts, k, block_images=bi,
                                           block_texts=bt, mesh=_mesh(n_dev))
  order = np.argsort(-full, axis=1, kind="stable")[:, :k]
  assert vals.shape == idx.shape == (N, k)
  np.testing.assert_allclose(vals, np.take_along_axis(full, order, 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(idx, order)  # continuous random scores: no ties


@pytest.mark.parametrize("n_dev,bi,bt,k", [(8, 1, 5, 4), (1, 4, 16, N), (8, 2, 64, 9)])
def test_topk_images_per_text(n_dev, bi, bt, k):
  images, texts = _data(seed=6)
  full = np.asarray(token_score(images, texts))
  vals, idx = scoring.topk_images_per_text(token_score, images, texts, k, block_images=bi,
                                           block_texts=bt, mesh=_mesh(n_dev))
  order = np.argsort(-full.T, axis=1, kind="stable")[:, :k]
  assert vals.shape == idx.shape == (M, k)
  np.testing.assert_allclose(vals, np.take_along_axis(full.T, order, 1), rtol=1e-5,
                             atol=1e-5)
  np.testing.assert_array_equal(idx, order)


@pytest.mark.parametrize("value", [0.5, -np.inf, np.nan])
def test_topk_ties_go_to_lower_index(value):
  images, texts = _data(seed=7)
  const = lambda img, txt: jnp.full((img["tokens"].shape[0], txt["tokens"].shape[0]),
                                    value, jnp.float32)
  _, idx = scoring.topk_texts_per_image(const, images, texts, 6, block_images=1,
                                        block_texts=4)
  np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(6), (N, 6)))
  _, idx = scoring.topk_images_per_text(const, images, texts, 6, block_images=1,
                                        block_texts=4)
  np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(6), (M, 6)))


def test_errors():
  images, texts = _data()
  with pytest.raises(ValueError, match="k=0"):
    scoring.topk_texts_per_image(token_score, images, texts, 0)
  with pytest.raises(ValueError, match="number of images"):
    scoring.topk_images_per_text(token_score, images, texts, N + 1)
  bad = {"tokens": images["tokens"], "other": np.zeros((N + 1, 2))}
  with pytest.raises(ValueError, match="leading"):
    scoring.score_matrix(token_score, bad, texts)


# ---------------------------------------------------------------------------
# The GRM engine (engine.py, scorer.py) against similarity.pair_scores.
# ---------------------------------------------------------------------------
def grm_inputs(seed=0, ni=11, nt=19, lv=7, lt=6, d=12, k=3, s=1):
  """Encoder-like dicts with padded visual and text tokens, exact zero gates."""
  rng = np.random.default_rng(seed)
  v_mask = np.arange(lv)[None] < rng.integers(2, lv + 1, size=(ni, 1))
  t_mask = np.arange(lt)[None] < rng.integers(1, lt + 1, size=(nt, 1))
  v_gates = rng.uniform(0.05, 1, (ni, lv)) * v_mask * (rng.random((ni, lv)) > 0.2)
  t_gates = rng.uniform(0.05, 1, (nt, lt)) * t_mask * (rng.random((nt, lt)) > 0.2)
  t_gates[:, 0] = np.maximum(t_gates[:, 0], 0.3)  # every caption keeps one gated word
  img = {"tokens": rng.normal(size=(ni, lv, d)).astype(np.float32), "mask": v_mask,
         "gates": v_gates.astype(np.float32),
         "regions": rng.normal(size=(ni, s, k, d)).astype(np.float32),
         "global": rng.normal(size=(ni, d)).astype(np.float32)}
  txt = {"tokens": rng.normal(size=(nt, lt, d)).astype(np.float32), "mask": t_mask,
         "gates": t_gates.astype(np.float32),
         "global": rng.normal(size=(nt, d)).astype(np.float32)}
  return img, txt


def direct(img, txt, cfg, name=None):
  """The definition (method.md section 4) on the whole set at once."""
  scores = similarity.pair_scores(img, txt, cfg)
  out = scores[name] if name else similarity.total_score(scores, cfg)
  return np.asarray(out)


@pytest.mark.parametrize("name", ["ori", "key", "unc", None])
@pytest.mark.parametrize("samples", [1, 3])
def test_engine_each_score_equals_definition(name, samples):
  cfg = configs.model_config()
  img, txt = grm_inputs(seed=samples, s=samples)
  sc = scorer.Scorer(cfg, backend="xla", weights={name: 1.0} if name else None,
                     block_images=4, block_texts=7, mesh=_mesh(1))
  np.testing.assert_allclose(sc.matrix(img, txt), direct(img, txt, cfg, name),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("n_dev,bi,bt", [(8, 1, 1), (8, 2, 5), (8, 64, 512), (1, 3, 19),
                                         (1, 11, 4), (8, 0, 0)])
def test_engine_every_block_size(n_dev, bi, bt):
  cfg = configs.model_config()
  img, txt = grm_inputs(seed=bi + bt)
  sc = scorer.Scorer(cfg, backend="xla", block_images=bi, block_texts=bt,
                     mesh=_mesh(n_dev))
  np.testing.assert_allclose(sc.matrix(img, txt), direct(img, txt, cfg),
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["ori", "no_regions", "no_text_adapter", "global",
                                     "scale_gates"])
def test_engine_ablations(variant):
  cfg = configs.model_config()
  for key, value in configs.VARIANTS[variant].items():
    cfg[key.split(".", 1)[1]] = value
  img, txt = grm_inputs(seed=5)
  sc = scorer.Scorer(cfg, block_images=3, block_texts=8, mesh=_mesh(8))
  want_backend = {"global": "global", "scale_gates": "reference"}.get(variant, "xla")
  assert sc.backend == want_backend  # auto on a CPU
  np.testing.assert_allclose(sc.matrix(img, txt), direct(img, txt, cfg),
                             rtol=1e-5, atol=1e-5)


def test_engine_bf16_close_to_f32():
  cfg = configs.model_config()
  img, txt = grm_inputs(seed=6, d=64)
  got = scorer.Scorer(cfg, backend="xla", dtype="bfloat16", mesh=_mesh(8)).matrix(img, txt)
  want = direct(img, txt, cfg)
  assert np.abs(got - want).max() < 2e-2  # bf16 unit vectors: ~3 significant digits
  assert np.abs(got - want).max() > 0     # and the option does change the inputs


def test_engine_topk_equals_full_matrix():
  cfg = configs.model_config()
  img, txt = grm_inputs(seed=7)
  sc = scorer.Scorer(cfg, backend="xla", block_images=2, block_texts=5, mesh=_mesh(8))
  full = direct(img, txt, cfg)
  vals, idx = sc.topk_texts(img, txt, 4)
  np.testing.assert_array_equal(idx, np.argsort(-full, 1, kind="stable")[:, :4])
  np.testing.assert_allclose(vals, np.sort(full, 1)[:, ::-1][:, :4], rtol=1e-5, atol=1e-5)
  vals, idx = sc.topk_images(img, txt, 3)
  np.testing.assert_array_equal(idx, np.argsort(-full.T, 1, kind="stable")[:, :3])
  np.testing.assert_allclose(vals, np.sort(full.T, 1)[:, ::-1][:, :3], rtol=1e-5,
                             atol=1e-5)


def test_engine_errors():
  cfg = configs.model_config()
  with pytest.raises(ValueError, match="backend must be one of"):
    scorer.Scorer(cfg, backend="cuda")
  with pytest.raises(ValueError, match="dtype"):
    scorer.Scorer(cfg, dtype="float16")
  cfg.regions = False
  with pytest.raises(ValueError, match=r"does not compute.*\['ori', 'key'\]"):
    scorer.Scorer(cfg, weights={"unc": 1.0})
  cfg.gate_mode = "scale"
  with pytest.raises(ValueError, match="gate_mode 'weight' only"):
    scorer.Scorer(cfg, backend="pallas")
