"""Blockwise, sharded image-text score matrices and streaming top-k retrieval.

The fine-grained score of one pair goes through a (L_t, L_v) token-similarity matrix,
so a block of bi images against bt texts costs a (bi, bt, L_t, L_v) tensor. Memory is
bounded by the block sizes, never by N x M x L_t x L_v:

- images are padded to a multiple of n_devices x block_images and split across all
  devices of the mesh with `shard_map`; each device loops (`lax.map`) over its image
  blocks against one text block;
- the host loops over text blocks (replicated on every device), so that one compiled
  program serves every block; the next block is dispatched before the previous one is
  copied back, so the transfer overlaps the compute.

Padding repeats the last real row (a real image or caption), so a score_fn that
normalises or masks never sees an all-zero input that could turn into NaN; padded rows
and columns are dropped (or masked out of top-k) before anything is returned.

`score_fn(img_block, txt_block) -> (bi, bt)` is a pure jnp function of two pytrees
whose leaves carry the items on their leading axis. Compiled programs are cached per
(score_fn, mesh, block sizes) and per shapes: pass the same callable (a module-level
function, or `functools.partial` with hashable arguments) to reuse them across calls.
Arrays closed over by score_fn are baked into the program as constants; pass
everything that varies as leaves of `images` / `texts` instead.

GRM's score functions (one cosine pass for S_ori, S_key and S_unc; XLA blocks or the
fused Pallas kernel) are in block_scores.py and pallas_kernels.py; scorer.py picks one for
the device and sizes the blocks.
"""
import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Tree = Mapping[str, Any]
ScoreFn = Callable[[Tree, Tree], jax.Array]


# ---------------------------------------------------------------------------
# Plumbing: mesh, shard_map, host <-> device, cache keys.
# ---------------------------------------------------------------------------
def default_mesh() -> Mesh:
  """A 1-D mesh over every device (of every host), axis name 'data'."""
  return Mesh(np.asarray(jax.devices()), ("data",))


def _shard_map(f, mesh, in_specs, out_specs):
  # The bodies below only use collectives whose replication is known by construction,
  # so the replication checker is switched off.
  return jax.shard_map(f, mesh=mesh, in_specs=in_specs, out_specs=out_specs,
                       check_vma=False)


def _leading_dim(tree: Tree, name: str) -> int:
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f"{name} has no arrays.")
  dims = {np.shape(x)[0] if np.ndim(x) else None for x in leaves}
  if len(dims) != 1 or None in dims:
    shapes = jax.tree.map(np.shape, tree)
    raise ValueError(f"Every leaf of {name} must share its leading (item) dimension; "
                     f"got shapes {shapes}.")
  n = dims.pop()
  if n == 0:
    raise ValueError(f"{name} is empty (leading dimension 0).")
  return n


def pad_rows(x: np.ndarray, rows: int) -> np.ndarray:
  """(n, ...) -> (rows, ...) by repeating the last row: padding stays a valid input."""
  if x.shape[0] == rows:
    return x
  return np.concatenate([x, np.repeat(x[-1:], rows - x.shape[0], axis=0)])


def to_host(x: jax.Array) -> np.ndarray:
  """A global array -> all of it as a host array, on every host."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if x.sharding.is_fully_replicated:  # every host holds all of it already
    return np.asarray(x.addressable_data(0))
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def round_up(x: int, m: int) -> int:
  return -(-x // m) * m


class _FnKey:
  """Hashable stand-in for score_fn: equal partials of one function share a program."""

  def __init__(self, fn):
    self.fn = fn
    self.key = self._identity(fn)

  @classmethod
  def _identity(cls, fn):
    if isinstance(fn, functools.partial):
      key = (cls._identity(fn.func),
             tuple((type(a), a) for a in fn.args),
             tuple((k, type(v), v) for k, v in sorted(fn.keywords.items())))
      try:
        hash(key)
        return key
      except TypeError:  # array arguments: fall back to the object itself
        pass
    return fn

  def __hash__(self):
    return hash(self.key)

  def __eq__(self, other):
    return isinstance(other, _FnKey) and self.key == other.key


class _Prepared:
  """Images on the mesh (rows sharded) and texts on the host, with padded sizes."""

  def __init__(self, images, texts, block_images, block_texts, mesh):
    self.mesh = mesh if mesh is not None else default_mesh()
    self.n = _leading_dim(images, "images")
    self.m = _leading_dim(texts, "texts")
    n_dev = self.mesh.devices.size
    # Block sizes are upper bounds: a small gallery is not padded up to a full block.
    self.bi = max(1, min(block_images, -(-self.n // n_dev)))
    self.bt = max(1, min(block_texts, self.m))
    self.n_pad = round_up(self.n, n_dev * self.bi)
    self.m_pad = round_up(self.m, self.bt)
    self.rows = P(self.mesh.axis_names)  # item axis split over every mesh axis
    self.images = jax.device_put(
        jax.tree.map(lambda x: pad_rows(np.asarray(x), self.n_pad), images),
        NamedSharding(self.mesh, self.rows))
    self.texts = jax.tree.map(np.asarray, texts)

  def text_blocks(self):
    """Yields (start, texts[start:start + bt] padded and replicated on the mesh)."""
    replicated = NamedSharding(self.mesh, P())
    for s in range(0, self.m, self.bt):
      block = jax.tree.map(lambda x: pad_rows(x[s:s + self.bt], self.bt), self.texts)
      yield s, jax.device_put(block, replicated)


def _local_scores(score_fn: ScoreFn, img: Tree, txt: Tree, block_images: int) -> jax.Array:
  """Per device: images (n_local, ...) x texts (bt, ...) -> (n_local, bt) float32.

  Image blocks go one at a time (lax.map), so the live (bi, bt, L_t, L_v) tensor of
  score_fn is the only large temporary.
  """
  n_local = jax.tree.leaves(img)[0].shape[0]
  nb = n_local // block_images
  blocks = jax.tree.map(lambda x: x.reshape((nb, block_images) + x.shape[1:]), img)
  s = jax.lax.map(lambda b: score_fn(b, txt).astype(jnp.float32), blocks)  # (nb, bi, bt)
  return s.reshape(n_local, s.shape[-1])


def _merge_topk(vals, idx, k):
  """Top k of (..., c) by value, ties to the lower index: (..., k) values, indices.

  A two-key sort rather than lax.top_k: the sentinels (-inf, int32 max) that fill
  the running top-k and the masked padding then lose every tie against real items,
  even real scores of -inf, and the result is deterministic.
  """
  neg, idx = jax.lax.sort((-vals, idx), dimension=-1, num_keys=2)
  return -neg[..., :k], idx[..., :k]


def _clean(s):
  return jnp.where(jnp.isnan(s), -jnp.inf, s)  # a NaN score never ranks high


# ---------------------------------------------------------------------------
# The full score matrix.
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _matrix_program(fn_key: _FnKey, mesh: Mesh, block_images: int):
  rows = P(mesh.axis_names)
  body = functools.partial(_local_scores, fn_key.fn, block_images=block_images)
  return jax.jit(_shard_map(body, mesh, in_specs=(rows, P()), out_specs=rows))


def score_matrix(score_fn: ScoreFn, images: Tree, texts: Tree, *,
                 block_images: int = 64, block_texts: int = 512,
                 mesh: Mesh | None = None) -> np.ndarray:
  """Scores of every image against every text, blockwise over the mesh.

  Args:
    score_fn: (img_block {k: (bi, ...)}, txt_block {k: (bt, ...)}) -> (bi, bt).
    images: pytree of arrays (numpy or jax, any dtype), leading dimension N.
    texts: pytree of arrays, leading dimension M.
    block_images: images per score_fn call on a device (upper bound).
    block_texts: texts per host step (upper bound).
    mesh: devices to split the images over; default a 1-D 'data' mesh of all devices.

  Returns:
    (N, M) float32 numpy array on the host.
  """
  prep = _Prepared(images, texts, block_images, block_texts, mesh)
  program = _matrix_program(_FnKey(score_fn), prep.mesh, prep.bi)
  out = np.empty((prep.n, prep.m), np.float32)

  def fetch(start, res):
    width = min(prep.bt, prep.m - start)
    out[:, start:start + width] = to_host(res)[:prep.n, :width]

  pending = None
  for start, txt in prep.text_blocks():
    res = program(prep.images, txt)  # dispatched asynchronously
    if pending is not None:
      fetch(*pending)
    pending = (start, res)
  fetch(*pending)
  return out


# ---------------------------------------------------------------------------
# Streaming top-k: memory proportional to (items x k), not N x M.
# ---------------------------------------------------------------------------
def _prepared_for_topk(images: Tree, texts: Tree, k: int, ranked: str, block_images: int,
                       block_texts: int, mesh: Mesh | None) -> "_Prepared":
  """_Prepared, after checking that k is between 1 and the number of `ranked` items."""
  prep = _Prepared(images, texts, block_images, block_texts, mesh)
  count = prep.m if ranked == "texts" else prep.n
  if not 1 <= k <= count:
    raise ValueError(f"k={k} must be between 1 and the number of {ranked} ({count}).")
  return prep


@functools.lru_cache(maxsize=32)
def _texts_topk_program(fn_key: _FnKey, mesh: Mesh, block_images: int, k: int):
  rows = P(mesh.axis_names)

  def body(img, txt, vals, idx, start, m):
    s = _clean(_local_scores(fn_key.fn, img, txt, block_images))   # (n_local, bt)
    cols = start + jnp.arange(s.shape[1], dtype=jnp.int32)         # global text ids
    s = jnp.where(cols[None, :] < m, s, -jnp.inf)                   # padded texts
    cols = jnp.broadcast_to(cols, s.shape)
    return _merge_topk(jnp.concatenate([vals, s], 1), jnp.concatenate([idx, cols], 1), k)

  return jax.jit(_shard_map(body, mesh, in_specs=(rows, P(), rows, rows, P(), P()),
                            out_specs=(rows, rows)))


def topk_texts_per_image(score_fn: ScoreFn, images: Tree, texts: Tree, k: int, *,
                         block_images: int = 64, block_texts: int = 512,
                         mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The k best texts of every image, streaming over text blocks.

  A running (N, k) top-k per image, sharded like the images, is merged with each
  text block's scores; nothing of size N x M is ever built. Ties go to the lower
  text index; NaN scores rank last.

  Returns:
    values (N, k) float32 (best first) and indices (N, k) int32 into texts.
  """
  prep = _prepared_for_topk(images, texts, k, "texts", block_images, block_texts, mesh)
  program = _texts_topk_program(_FnKey(score_fn), prep.mesh, prep.bi, k)
  sharded = NamedSharding(prep.mesh, prep.rows)
  vals = jax.device_put(np.full((prep.n_pad, k), -np.inf, np.float32), sharded)
  idx = jax.device_put(np.full((prep.n_pad, k), np.iinfo(np.int32).max, np.int32), sharded)
  m = np.int32(prep.m)
  for start, txt in prep.text_blocks():
    vals, idx = program(prep.images, txt, vals, idx, np.int32(start), m)
  return to_host(vals)[:prep.n], to_host(idx)[:prep.n]


@functools.lru_cache(maxsize=32)
def _images_topk_program(fn_key: _FnKey, mesh: Mesh, block_images: int, k: int):
  rows = P(mesh.axis_names)
  axes = mesh.axis_names

  def body(img, txt, row_ids, n):
    s = _clean(_local_scores(fn_key.fn, img, txt, block_images))   # (n_local, bt)
    s = jnp.where(row_ids[:, None] < n, s, -jnp.inf).T               # (bt, n_local)
    ids = jnp.broadcast_to(row_ids[None, :], s.shape)
    # Local top-k first, so that only (devices, bt, k) crosses the interconnect.
    v, i = _merge_topk(s, ids, min(k, s.shape[1]))
    v = jax.lax.all_gather(v, axes, axis=1, tiled=True)             # (bt, dev x k')
    i = jax.lax.all_gather(i, axes, axis=1, tiled=True)
    return _merge_topk(v, i, k)

  return jax.jit(_shard_map(body, mesh, in_specs=(rows, P(), rows, P()),
                            out_specs=(P(), P())))


def topk_images_per_text(score_fn: ScoreFn, images: Tree, texts: Tree, k: int, *,
                         block_images: int = 64, block_texts: int = 512,
                         mesh: Mesh | None = None) -> tuple[np.ndarray, np.ndarray]:
  """The k best images of every text, one text block at a time.

  Each device reduces its image shard to a local top-k per text, the shards' top-k
  are gathered and merged; the host keeps (M, k). Ties go to the lower image index;
  NaN scores rank last.

  Returns:
    values (M, k) float32 (best first) and indices (M, k) int32 into images.
  """
  prep = _prepared_for_topk(images, texts, k, "images", block_images, block_texts, mesh)
  program = _images_topk_program(_FnKey(score_fn), prep.mesh, prep.bi, k)
  row_ids = jax.device_put(np.arange(prep.n_pad, dtype=np.int32),
                           NamedSharding(prep.mesh, prep.rows))
  vals = np.empty((prep.m, k), np.float32)
  idx = np.empty((prep.m, k), np.int32)
  n = np.int32(prep.n)
  for start, txt in prep.text_blocks():
    v, i = program(prep.images, txt, row_ids, n)
    width = min(prep.bt, prep.m - start)
    vals[start:start + width] = to_host(v)[:width]
    idx[start:start + width] = to_host(i)[:width]
  return vals, idx
