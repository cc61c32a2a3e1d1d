"""scores/scorer.py and block_scores.py, the GRM engine on top of blockwise.py: every
score, block size, ablation and dtype against the definition, similarity.pair_scores."""
import jax
import numpy as np
import pytest
from jax.sharding import Mesh

from experiments.configs import common
from gralign_jax import configs
from gralign_jax.scores import scorer
from gralign_jax.scores import similarity


def _mesh(n_dev):
  return Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))


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
  for key, value in common.VARIANTS[variant].items():
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
