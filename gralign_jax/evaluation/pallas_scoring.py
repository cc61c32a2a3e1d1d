"""A Pallas kernel for the GRM max-mean scores: cosine tiles, both maxima and the masks
fused, so that no (images, texts, L_t, L_c) tensor ever leaves the chip.

Inputs are the flat layouts that engine.py prepares (one row per token, tokens already
l2-normalised, padding zero):

  t    (M x L_t, d)      text tokens                 (bf16 or f32)
  trow (1 + G, M x L_t)  row 0: 1 on valid text tokens; row 1 + g: the weight of the
                         token's max over the image columns of group g
  v    (N x L_c, d)      image columns: visual tokens, then the K regions of each of the
                         S samples, then padding
  vcol (2, N x L_c)      row 0: the column's group (0 visual, 1 + s regions of sample s,
                         -1 padding or masked); row 1: the weight of its max over texts

and the kernel returns, per (image n, text m), with c = leaky_relu(t . v):

  out[n, m] = sum_g sum_l trow[1 + g, l] max_{j in group g} c_lj
            + sum_j vcol[1, j] max_{valid l} c_lj

which is S_ori, S_key and S_unc (and their weighted sum) for the weights engine.py
writes (method.md section 4). Every score shares the one cosine tile per pair.

One program scores `tile_images` images against `tile_texts` texts. The tile_texts x
L_t text rows meet each image's columns in power-of-two chunks (Triton's shapes are
powers of two; chunks of 128 + 64 + 16 cover 202 columns with 3% padding where 256
would add 27%), and the contraction runs in steps of block_k, so only an
(rows, chunk) float32 accumulator is live. The row maxima run across chunks; the
column maxima are finished per chunk.

GPU lowering: Triton (the default of pallas_call on GPU in jax 0.10 and 0.11). With
interpret=True the same kernel runs on the CPU, which is how the tests check it.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

# Fill before a max: below any leaky_relu(cos) >= -slope, and finite, so that a zero
# weight times it is 0 (as similarity._NEG).
NEG = -1e9


@dataclasses.dataclass(frozen=True)
class KernelParams:
  """Tiling of the kernel (hashable: part of the compiled program's cache key).

  tile_texts x L_t is the matmul's M (128 for 4 captions of 32 tokens), max_chunk its
  largest N, block_k its K step. reshape_reduce: finish the per-text column maxima
  with one reshape and reduction instead of tile_texts masked passes (fewer
  operations; depends on Triton's reshape of an MMA layout).
  """
  tile_texts: int = 4
  tile_images: int = 1
  max_chunk: int = 128
  block_k: int = 64
  num_warps: int = 4
  num_stages: int = 2
  reshape_reduce: bool = False


def column_chunks(lc: int, max_chunk: int) -> tuple[tuple[int, int], ...]:
  """lc (a multiple of 16) -> ((start, width), ...) power-of-two widths >= 16."""
  if lc % 16:
    raise ValueError(f"The image columns must be padded to a multiple of 16; got {lc}.")
  out, start = [], 0
  while start < lc:
    width = max_chunk
    while width > lc - start:
      width //= 2
    out.append((start, width))
    start += width
  return tuple(out)


def _segment(x, n_seg, seg_len, op, reshape):
  """x (n_seg * seg_len,) -> (n_seg,): op over each consecutive segment."""
  if reshape:
    return op(x.reshape(n_seg, seg_len), axis=1)
  owner = lax.div(lax.broadcasted_iota(jnp.int32, x.shape, 0), seg_len)
  lane = lax.broadcasted_iota(jnp.int32, (n_seg,), 0)
  out = jnp.zeros((n_seg,), jnp.float32)
  for s in range(n_seg):
    out = jnp.where(lane == s, jnp.sum(jnp.where(owner == s, x, 0.0)), out)
  return out


def _kernel(t_ref, trow_ref, v_ref, vcol_ref, o_ref, *, lt, lc, groups, slope,
            p: KernelParams):
  tt = p.tile_texts
  rows = tt * lt
  n_k = t_ref.shape[1] // p.block_k
  valid = trow_ref[0, :] > 0                                          # (rows,)
  # Text of each row; lax.div, not //, whose sign fix-ups Triton need not lower.
  owner = lax.div(lax.broadcasted_iota(jnp.int32, (rows, 1), 0), lt)
  lane = lax.broadcasted_iota(jnp.int32, (tt,), 0)

  def one_image(i, carry):
    row_max = [jnp.full((rows,), NEG, jnp.float32) for _ in range(groups)]
    col_score = jnp.zeros((tt,), jnp.float32)
    for c0, width in column_chunks(lc, p.max_chunk):
      start = i * lc + c0

      def k_step(k, acc, start=start, width=width):
        a = t_ref[:, pl.ds(k * p.block_k, p.block_k)]                 # (rows, bk)
        b = v_ref[pl.ds(start, width), pl.ds(k * p.block_k, p.block_k)]  # (w, bk)
        return acc + lax.dot_general(a, b, (((1,), (1,)), ((), ())),
                                     preferred_element_type=jnp.float32)

      c = lax.fori_loop(0, n_k, k_step, jnp.zeros((rows, width), jnp.float32))
      c = jnp.maximum(c, slope * c)                                    # leaky_relu
      gid = vcol_ref[0, pl.ds(start, width)]                           # (w,)
      w_col = vcol_ref[1, pl.ds(start, width)]
      for g in range(groups):
        in_g = gid[None, :] == float(g)
        row_max[g] = jnp.maximum(row_max[g], jnp.max(jnp.where(in_g, c, NEG), axis=1))
      c = jnp.where(valid[:, None], c, NEG)
      if p.reshape_reduce:
        col_max = jnp.max(c.reshape(tt, lt, width), axis=1)            # (tt, w)
        col_score += jnp.sum(col_max * w_col[None, :], axis=1)
      else:
        for s in range(tt):
          col_max = jnp.max(jnp.where(owner == s, c, NEG), axis=0)     # (w,)
          col_score = jnp.where(lane == s, col_score + jnp.sum(col_max * w_col),
                                col_score)
    row_score = sum(row_max[g] * trow_ref[1 + g, :] for g in range(groups))
    score = _segment(row_score, tt, lt, jnp.sum, p.reshape_reduce) + col_score
    o_ref[pl.ds(i, 1), :] = score.reshape(1, tt)
    return carry

  lax.fori_loop(0, p.tile_images, one_image, 0)


def _compiler_params(p: KernelParams):
  try:
    from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  cls = getattr(pl_triton, "CompilerParams", None) or getattr(
      pl_triton, "TritonCompilerParams", None)
  return None if cls is None else cls(num_warps=p.num_warps, num_stages=p.num_stages)


def max_mean_scores(t, trow, v, vcol, *, lt: int, lc: int, groups: int, slope: float,
                    params: KernelParams = KernelParams(),
                    interpret: bool = False) -> jax.Array:
  """The flat inputs of the module docstring -> (N, M) float32 scores.

  N must be a multiple of params.tile_images and M of params.tile_texts; lt a power
  of two, lc a multiple of 16, d a multiple of params.block_k (engine.py pads).
  """
  p = params
  n, m, d = v.shape[0] // lc, t.shape[0] // lt, t.shape[1]
  if n % p.tile_images or m % p.tile_texts or d % p.block_k or lt & (lt - 1):
    raise ValueError(f"Unpadded kernel inputs: {n} images (tile {p.tile_images}), "
                     f"{m} texts (tile {p.tile_texts}), d={d} (block_k {p.block_k}), "
                     f"L_t={lt} (a power of two).")
  kernel = functools.partial(_kernel, lt=lt, lc=lc, groups=groups, slope=slope, p=p)
  rows, cols = p.tile_texts * lt, p.tile_images * lc
  extra = {}
  if not interpret and jax.default_backend() == "gpu":
    extra["compiler_params"] = _compiler_params(p)
  flops = 2 * n * m * lt * lc * d
  nbytes = lambda x: x.size * jnp.dtype(x.dtype).itemsize
  return pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((n, m), jnp.float32),
      grid=(n // p.tile_images, m // p.tile_texts),
      in_specs=[pl.BlockSpec((rows, d), lambda i, j: (j, 0)),
                pl.BlockSpec((trow.shape[0], rows), lambda i, j: (0, j)),
                pl.BlockSpec((cols, d), lambda i, j: (i, 0)),
                pl.BlockSpec((2, cols), lambda i, j: (0, i))],
      out_specs=pl.BlockSpec((p.tile_images, p.tile_texts), lambda i, j: (i, j)),
      interpret=interpret,
      cost_estimate=pl.CostEstimate(flops=flops, transcendentals=0,
                                    bytes_accessed=nbytes(t) + nbytes(v) + 4 * n * m),
      **extra,
  )(t, trow, v, vcol)
