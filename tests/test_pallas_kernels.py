"""The fused Pallas scoring kernel, run by Pallas's interpreter on the CPU, against a
NumPy loop over pairs and tokens, against the XLA path (block_scores.xla_scores) and
against the model's own definition (similarity.pair_scores) through the Scorer."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from gralign_jax import configs
from gralign_jax.scores import pallas_kernels as ps
from gralign_jax.scores import scorer
from gralign_jax.scores import similarity

SLOPE = 0.1


def loop_reference(t, trow, v, vcol, lt, lc):
  """The kernel's contract (pallas_kernels docstring), one pair and token at a time."""
  n, m = v.shape[0] // lc, t.shape[0] // lt
  groups = trow.shape[0] - 1
  out = np.zeros((n, m))
  for i in range(n):
    for j in range(m):
      tt = t[j * lt:(j + 1) * lt].astype(np.float64)
      vv = v[i * lc:(i + 1) * lc].astype(np.float64)
      c = tt @ vv.T
      c = np.where(c > 0, c, SLOPE * c)
      valid = trow[0, j * lt:(j + 1) * lt] > 0
      gid = vcol[0, i * lc:(i + 1) * lc]
      s = 0.0
      for col in range(lc):
        best = max([c[l, col] for l in range(lt) if valid[l]], default=ps.NEG)
        s += vcol[1, i * lc + col] * best
      for g in range(groups):
        for l in range(lt):
          best = max([c[l, col] for col in range(lc) if gid[col] == g], default=ps.NEG)
          s += trow[1 + g, j * lt + l] * best
      out[i, j] = s
  return out


def flat_inputs(seed, n, m, lt, lc, d, groups, dtype=np.float32):
  """Random flat kernel inputs: unit tokens, masked rows, ragged column groups."""
  rng = np.random.default_rng(seed)
  unit = lambda x: x / np.linalg.norm(x, axis=-1, keepdims=True)
  t = unit(rng.normal(size=(m * lt, d))).astype(dtype)
  v = unit(rng.normal(size=(n * lc, d))).astype(dtype)
  valid = (rng.random(m * lt) > 0.3).astype(np.float32)
  trow = np.concatenate([valid[None], rng.random((groups, m * lt)) * valid], 0)
  gid = rng.integers(-1, groups, size=n * lc).astype(np.float32)
  vcol = np.stack([gid, rng.random(n * lc) * (gid >= 0)]).astype(np.float32)
  return t, trow.astype(np.float32), v, vcol


PARAMS = [
    ps.KernelParams(tile_texts=1, tile_images=1, max_chunk=16, block_k=16),
    ps.KernelParams(tile_texts=2, tile_images=3, max_chunk=32, block_k=16),
    ps.KernelParams(tile_texts=4, tile_images=2, max_chunk=128, block_k=32,
                    reshape_reduce=True),
]


@pytest.mark.parametrize("params", PARAMS)
def test_kernel_equals_loop_reference(params):
  n, m, lt, lc, d, groups = 6, 8, 4, 48, 32, 2   # lc = 32 + 16: two chunk widths
  t, trow, v, vcol = flat_inputs(0, n, m, lt, lc, d, groups)
  got = ps.max_mean_scores(t, trow, v, vcol, lt=lt, lc=lc, groups=groups, slope=SLOPE,
                           params=params, interpret=True)
  np.testing.assert_allclose(np.asarray(got), loop_reference(t, trow, v, vcol, lt, lc),
                             rtol=1e-5, atol=1e-5)


def test_kernel_bf16_inputs_accumulate_in_f32():
  n, m, lt, lc, d, groups = 2, 4, 8, 16, 64, 1
  t, trow, v, vcol = flat_inputs(1, n, m, lt, lc, d, groups, dtype=jnp.bfloat16)
  got = ps.max_mean_scores(t, trow, v, vcol, lt=lt, lc=lc, groups=groups, slope=SLOPE,
                           params=ps.KernelParams(tile_texts=2, block_k=64),
                           interpret=True)
  assert got.dtype == jnp.float32
  want = loop_reference(np.asarray(t, np.float32), trow, np.asarray(v, np.float32),
                        vcol, lt, lc)  # the same bf16 values, multiplied exactly
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_column_chunks():
  assert ps.column_chunks(208, 128) == ((0, 128), (128, 64), (192, 16))
  assert ps.column_chunks(256, 128) == ((0, 128), (128, 128))
  assert ps.column_chunks(16, 128) == ((0, 16),)
  with pytest.raises(ValueError, match="multiple of 16"):
    ps.column_chunks(202, 128)


def test_unpadded_inputs_are_refused():
  t, trow, v, vcol = flat_inputs(2, 3, 3, 4, 16, 16, 1)
  with pytest.raises(ValueError, match="Unpadded"):
    ps.max_mean_scores(t, trow, v, vcol, lt=4, lc=16, groups=1, slope=SLOPE,
                       params=ps.KernelParams(tile_texts=2, block_k=16), interpret=True)


def _grm_inputs(seed, ni, nt, lv=9, lt=5, d=20, k=3, s=1):
  rng = np.random.default_rng(seed)
  v_mask = np.arange(lv)[None] < rng.integers(2, lv + 1, size=(ni, 1))
  t_mask = np.arange(lt)[None] < rng.integers(1, lt + 1, size=(nt, 1))
  img = {"tokens": rng.normal(size=(ni, lv, d)), "mask": v_mask,
         "gates": rng.uniform(0, 1, (ni, lv)) * v_mask,
         "regions": rng.normal(size=(ni, s, k, d))}
  txt = {"tokens": rng.normal(size=(nt, lt, d)), "mask": t_mask,
         "gates": np.where(rng.random((nt, lt)) > 0.2, rng.uniform(0.1, 1, (nt, lt)),
                           0.0) * t_mask}
  txt["gates"][:, 0] = 0.5
  return ({k: np.asarray(x, np.float32) if x.dtype == np.float64 else x
           for k, x in img.items()},
          {k: np.asarray(x, np.float32) if x.dtype == np.float64 else x
           for k, x in txt.items()})


def _config_for(img):
  """The model config whose embed_dim is the encodings' d (what a kernel is built for)."""
  cfg = configs.model_config()
  cfg.embed_dim = img["tokens"].shape[-1]
  return cfg


def test_a_kernel_scorer_refuses_encodings_of_another_width():
  img, txt = _grm_inputs(1, ni=4, nt=5)
  cfg = _config_for(img)
  cfg.embed_dim += 16
  sc = scorer.Scorer(cfg, backend="pallas", params=ps.KernelParams(tile_texts=2))
  with pytest.raises(ValueError, match=f"built for model.embed_dim={cfg.embed_dim}"):
    sc.matrix(img, txt)


@pytest.mark.parametrize("n_dev,bi,bt,samples", [(8, 1, 3, 1), (1, 5, 7, 2), (8, 2, 13, 1)])
def test_scorer_pallas_equals_xla_and_definition(n_dev, bi, bt, samples):
  img, txt = _grm_inputs(n_dev + bi, ni=10, nt=13, s=samples)   # ragged last blocks
  cfg = _config_for(img)
  mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
  kw = dict(block_images=bi, block_texts=bt, mesh=mesh)
  params = ps.KernelParams(tile_texts=2, tile_images=2, max_chunk=16, block_k=16)
  pallas = scorer.Scorer(cfg, backend="pallas", params=params, **kw).matrix(img, txt)
  _assert_equals_xla_and_definition(pallas, cfg, img, txt, kw)


def _assert_equals_xla_and_definition(got, cfg, img, txt, scorer_kw):
  """A kernel's score matrix == the XLA engine's == the model's own definition."""
  xla = scorer.Scorer(cfg, backend="xla", **scorer_kw).matrix(img, txt)
  want = similarity.total_score(similarity.pair_scores(img, txt, cfg), cfg)
  np.testing.assert_allclose(got, xla, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(got, np.asarray(want), rtol=1e-5, atol=1e-5)


def test_scorer_pallas_topk():
  img, txt = _grm_inputs(3, ni=7, nt=9)
  cfg = _config_for(img)
  sc = scorer.Scorer(cfg, backend="pallas", block_images=2, block_texts=4,
                     params=ps.KernelParams(tile_texts=2, block_k=16))
  full = sc.matrix(img, txt)
  _, idx = sc.topk_texts(img, txt, 3)
  np.testing.assert_array_equal(idx, np.argsort(-full, 1, kind="stable")[:, :3])
  _, idx = sc.topk_images(img, txt, 2)
  np.testing.assert_array_equal(idx, np.argsort(-full.T, 1, kind="stable")[:, :2])


def test_auto_is_xla_on_cpu():
  assert jax.default_backend() == "cpu"
  assert scorer.Scorer(configs.model_config()).backend == "xla"
  assert scorer.Scorer(configs.model_config(), backend="pallas").backend == "pallas"


# ---------------------------------------------------------------------------
# The TPU (Mosaic) variant, interpreted on the CPU.
# ---------------------------------------------------------------------------
def tpu_layout(t, trow, v, vcol, n, m, lt, lc):
  """The flat inputs -> max_mean_scores_tpu's (M, L_t, d), (M, L_t, 1 + G),
  (N, L_c, d), (N, 2, L_c)."""
  return (t.reshape(m, lt, -1), trow.reshape(-1, m, lt).transpose(1, 2, 0),
          v.reshape(n, lc, -1), vcol.reshape(2, n, lc).transpose(1, 0, 2))


TPU_PARAMS = [ps.TpuKernelParams(tile_texts=1, tile_images=1),
              ps.TpuKernelParams(tile_texts=2, tile_images=3),
              ps.TpuKernelParams(tile_texts=8, tile_images=6),
              ps.TpuKernelParams(tile_texts=4, tile_images=2, reshape_reduce=False)]


@pytest.mark.parametrize("lt", [4, 8])  # 4: the masked passes; 8: the reshape too
@pytest.mark.parametrize("params", TPU_PARAMS)
def test_tpu_kernel_equals_loop_reference(params, lt):
  n, m, lc, d, groups = 6, 8, 48, 32, 2
  t, trow, v, vcol = flat_inputs(0, n, m, lt, lc, d, groups)
  got = ps.max_mean_scores_tpu(*tpu_layout(t, trow, v, vcol, n, m, lt, lc),
                               groups=groups, slope=SLOPE, params=params, interpret=True)
  np.testing.assert_allclose(np.asarray(got), loop_reference(t, trow, v, vcol, lt, lc),
                             rtol=1e-5, atol=1e-5)


def test_tpu_kernel_bf16_inputs_accumulate_in_f32():
  n, m, lt, lc, d, groups = 4, 4, 16, 128, 128, 1
  t, trow, v, vcol = flat_inputs(1, n, m, lt, lc, d, groups, dtype=jnp.bfloat16)
  got = ps.max_mean_scores_tpu(*tpu_layout(t, trow, v, vcol, n, m, lt, lc),
                               groups=groups, slope=SLOPE,
                               params=ps.TpuKernelParams(tile_texts=2, tile_images=2),
                               interpret=True)
  assert got.dtype == jnp.float32
  want = loop_reference(np.asarray(t, np.float32), trow, np.asarray(v, np.float32),
                        vcol, lt, lc)
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-5, atol=1e-5)


def test_tpu_kernel_refuses_unpadded_inputs():
  n, m, lt, lc, d = 3, 3, 4, 16, 16
  t, trow, v, vcol = flat_inputs(2, n, m, lt, lc, d, 1)
  with pytest.raises(ValueError, match="Unpadded TPU"):
    ps.max_mean_scores_tpu(*tpu_layout(t, trow, v, vcol, n, m, lt, lc), groups=1,
                           slope=SLOPE, params=ps.TpuKernelParams(tile_texts=2),
                           interpret=True)


@pytest.mark.parametrize("n_dev,bi,bt,samples", [(8, 1, 3, 1), (1, 5, 7, 2)])
def test_scorer_tpu_kernel_equals_xla_and_definition(n_dev, bi, bt, samples):
  img, txt = _grm_inputs(n_dev + bi, ni=10, nt=13, s=samples)
  cfg = _config_for(img)
  mesh = Mesh(np.asarray(jax.devices()[:n_dev]), ("data",))
  kw = dict(block_images=bi, block_texts=bt, mesh=mesh)
  sc = scorer.Scorer(cfg, backend="pallas", params=ps.TpuKernelParams(tile_texts=4,
                                                                        tile_images=2),
                     **kw)
  prepared_img, prepared_txt = sc.prepare(img, txt)
  # Padded for Mosaic: L_c and d to 128 lanes, L_t to 16 rows.
  assert prepared_img["tokens"].shape[1:] == (128, 128)
  assert prepared_txt["tokens"].shape[1:] == (16, 128)
  _assert_equals_xla_and_definition(sc.matrix(img, txt), cfg, img, txt, kw)


def test_backend_choice_never_takes_a_kernel_for_another_platform():
  cfg = configs.model_config()
  triton, tpu = ps.KernelParams(), ps.TpuKernelParams()
  assert ps.default_params("tpu") == tpu and ps.default_params("gpu") == triton
  # auto: the Triton kernel is never tried on a TPU, nor the TPU kernel on a GPU.
  assert scorer.resolve_backend("auto", cfg, triton, "tpu") == "xla"
  assert scorer.resolve_backend("auto", cfg, tpu, "gpu") == "xla"
  # auto on the right platform still needs the probe to compile: here (a CPU host)
  # it cannot, so XLA.
  assert scorer.resolve_backend("auto", cfg, tpu, "tpu") == "xla"
  with pytest.raises(ValueError, match="does not lower there"):
    scorer.resolve_backend("pallas", cfg, triton, "tpu")
  with pytest.raises(ValueError, match="does not lower there"):
    scorer.resolve_backend("pallas", cfg, tpu, "gpu")
  assert scorer.resolve_backend("pallas", cfg, tpu, "cpu") == "pallas"  # interpreted
