"""scores/blockwise.py: any block score function -> the sharded score matrix and the
streaming top-k, against the score computed directly."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from gralign_jax.scores import blockwise

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
  got = blockwise.score_matrix(token_score, images, texts, block_images=bi,
                             block_texts=bt, mesh=_mesh(n_dev))
  assert got.shape == (N, M) and got.dtype == np.float32
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_default_mesh_jax_inputs_and_bf16():
  images, texts = _data(seed=1, dtype=jnp.bfloat16)
  images = jax.tree.map(jnp.asarray, images)  # jax arrays in, as well as numpy
  want = np.asarray(token_score(images, texts))
  got = blockwise.score_matrix(token_score, images, texts, block_images=2, block_texts=6)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_two_axis_mesh():
  images, texts = _data(seed=2)
  mesh = Mesh(np.asarray(jax.devices()).reshape(2, 4), ("a", "b"))
  got = blockwise.score_matrix(mean_cosine, images, texts, block_images=1, block_texts=16,
                             mesh=mesh)
  np.testing.assert_allclose(got, np.asarray(mean_cosine(images, texts)), atol=1e-5)


def test_padding_never_leaks_nan():
  images, texts = _data(seed=3)
  got = blockwise.score_matrix(mean_cosine, images, texts, block_images=4, block_texts=16)
  assert np.isfinite(got).all()


def test_compiled_once_per_shapes():
  traces = []

  def counted(img, txt):
    traces.append(1)  # runs at trace time only
    return mean_cosine(img, txt)

  images, texts = _data(seed=4)
  mesh = _mesh(8)
  a = blockwise.score_matrix(counted, images, texts, block_images=2, block_texts=4, mesh=mesh)
  assert len(traces) == 1  # ten text blocks, one program
  b = blockwise.score_matrix(counted, images, texts, block_images=2, block_texts=4, mesh=mesh)
  assert len(traces) == 1
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("n_dev,bi,bt,k", [(8, 1, 4, 10), (1, 4, 16, 3), (8, 2, 8, M)])
def test_topk_texts_per_image(n_dev, bi, bt, k):
  images, texts = _data(seed=5)
  full = np.asarray(token_score(images, texts))
  vals, idx = blockwise.topk_texts_per_image(token_score, images, texts, k, block_images=bi,
                                           block_texts=bt, mesh=_mesh(n_dev))
  order = np.argsort(-full, axis=1, kind="stable")[:, :k]
  assert vals.shape == idx.shape == (N, k)
  np.testing.assert_allclose(vals, np.take_along_axis(full, order, 1), rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(idx, order)  # continuous random scores: no ties


@pytest.mark.parametrize("n_dev,bi,bt,k", [(8, 1, 5, 4), (1, 4, 16, N), (8, 2, 64, 9)])
def test_topk_images_per_text(n_dev, bi, bt, k):
  images, texts = _data(seed=6)
  full = np.asarray(token_score(images, texts))
  vals, idx = blockwise.topk_images_per_text(token_score, images, texts, k, block_images=bi,
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
  _, idx = blockwise.topk_texts_per_image(const, images, texts, 6, block_images=1,
                                        block_texts=4)
  np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(6), (N, 6)))
  _, idx = blockwise.topk_images_per_text(const, images, texts, 6, block_images=1,
                                        block_texts=4)
  np.testing.assert_array_equal(idx, np.broadcast_to(np.arange(6), (M, 6)))


def test_errors():
  images, texts = _data()
  with pytest.raises(ValueError, match="k=0"):
    blockwise.topk_texts_per_image(token_score, images, texts, 0)
  with pytest.raises(ValueError, match="number of images"):
    blockwise.topk_images_per_text(token_score, images, texts, N + 1)
  bad = {"tokens": images["tokens"], "other": np.zeros((N + 1, 2))}
  with pytest.raises(ValueError, match="leading"):
    blockwise.score_matrix(token_score, bad, texts)
