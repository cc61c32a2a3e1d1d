"""A Pallas kernel for the GRM max-mean scores: cosine tiles, both maxima and the masks
fused, so that no (images, texts, L_t, L_c) tensor ever leaves the chip.

Inputs are the flat layouts that block_scores.py prepares (one row per token, tokens
already l2-normalised, padding zero):

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

which is S_ori, S_key and S_unc (and their weighted sum) for the weights block_scores.py
writes (method.md section 4). Every score shares the one cosine tile per pair.

One program scores `tile_images` images against `tile_texts` texts. The tile_texts x
L_t text rows meet each image's columns in power-of-two chunks (Triton's shapes are
powers of two; chunks of 128 + 64 + 16 cover 202 columns with 3% padding where 256
would add 27%), and the contraction runs in steps of block_k, so only an
(rows, chunk) float32 accumulator is live. The row maxima run across chunks; the
column maxima are finished per chunk.

GPU lowering: Triton. pallas_call picks its GPU backend from the type of
compiler_params; with none, jax 0.10.2 takes Mosaic GPU (jax_pallas_use_mosaic_gpu
defaults to True), which this kernel does not fit (its shared memory overflows), so
Triton's CompilerParams are always passed, also when lowering from a CPU host. This
kernel cannot lower for a TPU: its (2, tile_images x L_c) column block breaks Mosaic's
rule that a block's last two dimensions be divisible by 8 and 128 (or whole).

TPU: max_mean_scores_tpu, a second kernel with the same contract for Mosaic. Every
operand carries the grid axis in front and the block spans its trailing dimensions whole
(so any L_t, L_c, d and tile sizes satisfy Mosaic's block rule), the output is
one small tile per program, and the body keeps values two-dimensional: per image one
(rows, L_c) cosine tile from the MXU, the row maxima per group as masked lane
reductions, the column maxima of all tile_texts texts in one sublane reduction over a
(tile_texts, L_t, L_c) view, leaky_relu applied to the maxima (it is monotone).
block_scores.py lays the inputs out for it (L_c and d multiples of 128, L_t of 16). It
compiles (libtpu, no TPU attached) for v4, v5e, v5p and v6e chips; it has not yet run
on one.

With interpret=True either kernel runs on the CPU, which is how the tests check them;
experiments/export_check.py lowers both for their hardware from the CPU.
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

from gralign_jax.scores import similarity

# A block dimension of 1 dropped in the kernel (pl.squeezed; None before it existed).
_SQUEEZE = getattr(pl, "squeezed", None)

NEG = similarity.NEG  # the fill before a max


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

  platform = "gpu"  # the hardware this kernel lowers for (a class constant, not a field)


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
  """Triton's CompilerParams (their type is what makes pallas_call lower to Triton)."""
  from jax.experimental.pallas import triton as pl_triton  # pylint: disable=g-import-not-at-top
  cls = getattr(pl_triton, "CompilerParams", None) or getattr(
      pl_triton, "TritonCompilerParams")
  return cls(num_warps=p.num_warps, num_stages=p.num_stages)


def max_mean_scores(t, trow, v, vcol, *, lt: int, lc: int, groups: int, slope: float,
                    params: KernelParams = KernelParams(),
                    interpret: bool = False) -> jax.Array:
  """The flat inputs of the module docstring -> (N, M) float32 scores.

  N must be a multiple of params.tile_images and M of params.tile_texts; lt a power
  of two, lc a multiple of 16, d a multiple of params.block_k (block_scores.py pads).
  """
  p = params
  n, m, d = v.shape[0] // lc, t.shape[0] // lt, t.shape[1]
  if n % p.tile_images or m % p.tile_texts or d % p.block_k or lt & (lt - 1):
    raise ValueError(f"Unpadded kernel inputs: {n} images (tile {p.tile_images}), "
                     f"{m} texts (tile {p.tile_texts}), d={d} (block_k {p.block_k}), "
                     f"L_t={lt} (a power of two).")
  kernel = functools.partial(_kernel, lt=lt, lc=lc, groups=groups, slope=slope, p=p)
  rows, cols = p.tile_texts * lt, p.tile_images * lc
  # Triton's params also when lowering for a GPU from another host (jax.export).
  extra = {} if interpret else {"compiler_params": _compiler_params(p)}
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


# ---------------------------------------------------------------------------
# The TPU variant (Mosaic).
# ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TpuKernelParams:
  """Tiling of the TPU kernel: tile_texts x L_t rows meet tile_images images per
  program. The default puts 8 x L_t rows (256 at L_t = 32) on the MXU and keeps a
  program's blocks near 2 MiB of VMEM at L_c = 256, d = 256 in float32.
  reshape_reduce: every text's column maxima in one pass over a (tile_texts, L_t, L_c)
  view of the cosines (L_t a multiple of 8), instead of tile_texts masked passes.
  """
  tile_texts: int = 8
  tile_images: int = 8
  reshape_reduce: bool = True
  vmem_limit_bytes: int = 0  # > 0: raise Mosaic's scoped VMEM limit

  platform = "tpu"


def _tpu_kernel(t_ref, trow_ref, v_ref, vcol_ref, o_ref, *, lt, groups, slope, tt, ti,
                reshape):
  """Refs: t (rows, d), trow (rows, 1 + G), v (ti, L_c, d), vcol (ti, 2, L_c),
  o (tt, ti) with reshape, else (ti, tt); rows = tt x L_t."""
  rows = tt * lt
  leaky = lambda x: jnp.maximum(x, slope * x)
  t = t_ref[...]
  valid = trow_ref[:, 0:1] > 0                                        # (rows, 1)
  row = lax.broadcasted_iota(jnp.int32, (rows, 1), 0)
  # Row r belongs to text r // L_t: compared, not divided (vector integer division is
  # not a given on every TPU generation).
  in_text = [valid & (row >= s * lt) & (row < (s + 1) * lt) for s in range(tt)]
  r2 = lax.broadcasted_iota(jnp.int32, (rows, tt), 0)
  s2 = lax.broadcasted_iota(jnp.int32, (rows, tt), 1) * lt
  owner = jnp.where((r2 >= s2) & (r2 < s2 + lt), 1.0, 0.0)           # (rows, tt)
  lane = lax.broadcasted_iota(jnp.int32, (1, tt), 1)
  image_row = lax.broadcasted_iota(jnp.int32, (ti, tt), 0)
  image_col = lax.broadcasted_iota(jnp.int32, (tt, ti), 1)

  def one_image(i, acc):
    c = lax.dot_general(t, v_ref[i], (((1,), (1,)), ((), ())),
                        preferred_element_type=jnp.float32)           # (rows, L_c)
    col = vcol_ref[i]                                                 # (2, L_c)
    gid, w_col = col[0:1, :], col[1:2, :]
    row_score = jnp.zeros((rows, 1), jnp.float32)
    for g in range(groups):
      best = jnp.max(jnp.where(gid == float(g), c, NEG), axis=1, keepdims=True)
      row_score += leaky(best) * trow_ref[:, 1 + g:2 + g]
    if reshape:  # texts on sublanes: (tt, 1) per image, a column of the output
      best = jnp.max(jnp.where(valid, c, NEG).reshape(tt, lt, -1), axis=1)  # (tt, L_c)
      score = (jnp.sum(leaky(best) * w_col, axis=1, keepdims=True) +
               jnp.sum(row_score.reshape(tt, lt, 1), axis=1))               # (tt, 1)
      return jnp.where(image_col == i, score, acc)
    score = jnp.sum(row_score * owner, axis=0, keepdims=True)         # (1, tt)
    for s in range(tt):
      best = jnp.max(jnp.where(in_text[s], c, NEG), axis=0, keepdims=True)  # (1, L_c)
      col_score = jnp.sum(leaky(best) * w_col, axis=1, keepdims=True)       # (1, 1)
      score += jnp.where(lane == s, col_score, 0.0)
    return jnp.where(image_row == i, score, acc)

  o_ref[...] = lax.fori_loop(0, ti, one_image,
                             jnp.zeros((tt, ti) if reshape else (ti, tt), jnp.float32))


def _tpu_compiler_params(p: TpuKernelParams):
  from jax.experimental.pallas import tpu as pltpu  # pylint: disable=g-import-not-at-top
  cls = getattr(pltpu, "CompilerParams", None) or getattr(pltpu, "TPUCompilerParams")
  kw = {"vmem_limit_bytes": p.vmem_limit_bytes} if p.vmem_limit_bytes > 0 else {}
  return cls(dimension_semantics=("parallel", "parallel"), **kw)


def max_mean_scores_tpu(t, trow, v, vcol, *, groups: int, slope: float,
                        params: TpuKernelParams = TpuKernelParams(),
                        interpret: bool = False) -> jax.Array:
  """The TPU kernel's layouts -> (N, M) float32, the scores of max_mean_scores.

  t (M, L_t, d), trow (M, L_t, 1 + G), v (N, L_c, d), vcol (N, 2, L_c): block_scores.py's
  prepared arrays, trow with the token axis before the weights. N must be a multiple
  of params.tile_images and M of params.tile_texts (block_scores.py pads); L_c and d are
  best multiples of 128 and L_t of 16 (vreg tiles), though any size lowers.
  """
  p = params
  (n, lc, d), (m, lt, _) = v.shape, t.shape
  tt, ti = p.tile_texts, p.tile_images
  if n % ti or m % tt or t.shape[2] != d or trow.shape[:2] != (m, lt):
    raise ValueError(f"Unpadded TPU kernel inputs: {n} images (tile {ti}), {m} texts "
                     f"(tile {tt}), t {t.shape}, trow {trow.shape}, v {v.shape}.")
  gi, gj, rows, r = n // ti, m // tt, tt * lt, trow.shape[2]
  sq = _SQUEEZE
  reshape = p.reshape_reduce and lt % 8 == 0
  kernel = functools.partial(_tpu_kernel, lt=lt, groups=groups, slope=slope, tt=tt, ti=ti,
                             reshape=reshape)
  tile = (tt, ti) if reshape else (ti, tt)
  extra = {} if interpret else {"compiler_params": _tpu_compiler_params(p)}
  nbytes = lambda x: x.size * jnp.dtype(x.dtype).itemsize
  out = pl.pallas_call(
      kernel,
      out_shape=jax.ShapeDtypeStruct((gi, gj) + tile, jnp.float32),
      grid=(gi, gj),
      in_specs=[pl.BlockSpec((sq, rows, d), lambda i, j: (j, 0, 0)),
                pl.BlockSpec((sq, rows, r), lambda i, j: (j, 0, 0)),
                pl.BlockSpec((sq, ti, lc, d), lambda i, j: (i, 0, 0, 0)),
                pl.BlockSpec((sq, ti, 2, lc), lambda i, j: (i, 0, 0, 0))],
      out_specs=pl.BlockSpec((sq, sq) + tile, lambda i, j: (i, j, 0, 0)),
      interpret=interpret,
      cost_estimate=pl.CostEstimate(flops=2 * n * m * lt * lc * d, transcendentals=0,
                                    bytes_accessed=nbytes(t) + nbytes(v) + 4 * n * m),
      **extra,
  )(t.reshape(gj, rows, d), trow.reshape(gj, rows, r), v.reshape(gi, ti, lc, d),
    vcol.reshape(gi, ti, 2, lc))
  return out.transpose((0, 3, 1, 2) if reshape else (0, 2, 1, 3)).reshape(n, m)


def default_params(platform: str):
  """The kernel (and tiling) for a platform: TPU's for "tpu", Triton's otherwise."""
  return TpuKernelParams() if platform == "tpu" else KernelParams()
