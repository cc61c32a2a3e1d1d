"""The scorer: picks the backend and the block sizes for the hardware, prepares the
encoded token sets (block_scores.py) and runs blockwise.py's sharded matrix or
streaming top-k with the matching block score function.

  scorer = Scorer.from_config(config, mesh)
  sims = scorer.matrix(image_enc, text_enc)            # (N, M) float32
  vals, idx = scorer.topk_texts(image_enc, text_enc, k)  # (N, k), memory N x k

image_enc / text_enc are the dicts encode_image / encode_text return (the keys of
similarity.SCORE_KEYS, as the evaluator and gallery.py keep them).
"""
import dataclasses
import functools

import jax
import ml_collections
import numpy as np

from gralign_jax import logs
from gralign_jax.scores import blockwise
from gralign_jax.scores import block_scores
from gralign_jax.scores import pallas_kernels
from gralign_jax.scores import similarity


# ---------------------------------------------------------------------------
# Backend and block sizes for the hardware.
# ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=8)
def pallas_works(params) -> bool:
  """Whether the kernel that params name (KernelParams: Triton, TpuKernelParams:
  Mosaic) compiles here and agrees with xla_scores on a small probe."""
  rng = np.random.default_rng(0)
  enc_i = {"tokens": rng.normal(size=(3, 20, 64)), "mask": np.ones((3, 20), bool)}
  enc_t = {"tokens": rng.normal(size=(5, 7, 64)),
           "mask": np.arange(7)[None] < rng.integers(1, 8, size=(5, 1))}
  layout = block_scores.kernel_layout(params)
  if params.platform == "gpu":
    layout = dataclasses.replace(layout, d_multiple=max(16, params.block_k))
  img = block_scores.prepare_images(enc_i, {"ori": 1.0}, layout=layout)
  txt = block_scores.prepare_texts(enc_t, {"ori": 1.0}, layout=layout)
  try:
    got = jax.jit(functools.partial(block_scores.pallas_scores, slope=0.1, params=params,
                                    interpret=False))(img, txt)
    want = block_scores.xla_scores(img, txt, slope=0.1)
    ok = bool(np.allclose(np.asarray(got), np.asarray(want), atol=1e-3))
    if not ok:
      logs.warning("The Pallas scoring kernel disagrees with XLA here; using XLA.")
    return ok
  except Exception as e:  # pylint: disable=broad-except
    logs.warning(f"The Pallas scoring kernel does not compile on "
                 f"{jax.default_backend()} ({type(e).__name__}: {str(e)[:300]}); using XLA.")
    return False


def resolve_backend(backend: str, model_config, params,
                    platform: str | None = None) -> str:
  """"auto" | "xla" | "pallas" | "reference" -> the backend that will run on
  `platform` (default: jax's default backend).

  auto takes the kernel only on the platform it is written for (params.platform) and
  only where it compiles there and agrees with XLA; everything else runs XLA, which
  lowers everywhere. "pallas" with a kernel for another accelerator is an error; on a
  CPU either kernel runs interpreted.
  """
  if backend not in block_scores.BACKENDS:
    raise ValueError(f"config.eval.backend must be one of {block_scores.BACKENDS}, "
                     f"got {backend!r}.")
  if model_config.score == "global":
    return "global"
  if model_config.gate_mode == "scale":
    if backend in ("xla", "pallas"):
      raise ValueError(f"eval.backend={backend!r} computes gate_mode 'weight' only; use "
                       "'reference' (or 'auto') with gate_mode 'scale'.")
    return "reference"
  platform = platform or jax.default_backend()
  if backend == "auto":
    return "pallas" if platform == params.platform and pallas_works(params) else "xla"
  if backend == "pallas" and platform != "cpu" and platform != params.platform:
    raise ValueError(f"eval.backend='pallas' with a kernel for {params.platform} "
                     f"({type(params).__name__}) on {platform}: it does not lower there. "
                     f"Use {type(pallas_kernels.default_params(platform)).__name__} or "
                     "backend 'auto' / 'xla'.")
  return backend


def _even(n: int, cap: int) -> int:
  """The block size <= cap that splits n into the fewest, most equal blocks (so the
  host never pads a 5,000-image gallery up to 5,120)."""
  cap = max(1, min(n, cap))
  return -(-n // -(-n // cap))


def auto_blocks(backend: str, n_local: int, m: int, lt: int, lc: int,
                bytes_limit: int | None = None) -> tuple[int, int]:
  """(block_images, block_texts) sized to a quarter of one device's memory (GPU, TPU).

  xla holds about three float32 (bi, bt, L_t, L_c) temporaries; pallas only the
  (bi, bt) output and the text block, so its blocks are limited by launch size.
  bytes_limit: the device's memory (default: what the local device reports; a CPU
  reports none).
  """
  if backend == "pallas":
    return _even(n_local, 1024), _even(m, 4096)
  if bytes_limit is None:
    bytes_limit = (jax.local_devices()[0].memory_stats() or {}).get("bytes_limit")
  # CPUs report no limit; there blocks near the cache size ran as fast as any larger
  # (benchmarks/README.md), so 64 MiB.
  budget = bytes_limit // 4 if bytes_limit else 2 ** 26
  bt = _even(m, 256 if bytes_limit else 128)
  return _even(n_local, max(1, budget // (12 * lt * lc * bt))), bt


def _fit_to_width(params, d: int):
  """Triton's K step must divide d: the largest power-of-two step <= params.block_k
  that does (Mosaic's kernel takes d whole)."""
  if params.platform != "gpu":
    return params
  block_k = params.block_k
  while d % block_k:
    block_k //= 2
  return dataclasses.replace(params, block_k=block_k)


# ---------------------------------------------------------------------------
# The scorer.
# ---------------------------------------------------------------------------
class Scorer:
  """Scores of one model config's encodings; see the module docstring.

  Args:
    model_config: config.model (score, gate_mode, adapters, regions, leaky_slope).
    backend: "auto" | "xla" | "pallas" | "reference" (block_scores.py).
    dtype: "float32" | "bfloat16": the stored unit tokens; sums are float32 always.
    block_images, block_texts: upper bounds of a block; <= 0: auto_blocks.
    weights: {score name: weight}; None: model.score_weights over the present scores
      (e.g. {"ori": 1} gives S_ori alone).
    params: the kernel and its tiling: pallas_kernels.KernelParams (Triton, GPU) or
      TpuKernelParams (Mosaic, TPU); None: the one for the mesh's platform.
    interpret: run it interpreted (default: on a CPU).
  """

  def __init__(self, model_config, *, backend: str = "auto", dtype: str = "float32",
               block_images: int = 0, block_texts: int = 0, mesh=None, weights=None,
               params=None, interpret: bool | None = None):
    if dtype not in block_scores.DTYPES:
      raise ValueError(f"score dtype must be one of {sorted(block_scores.DTYPES)}, "
                       f"got {dtype!r}.")
    self.config = model_config
    self.dtype = block_scores.DTYPES[dtype]
    self.blocks = (block_images, block_texts)
    self.mesh = mesh if mesh is not None else blockwise.default_mesh()
    platform = self.mesh.devices.flat[0].platform
    if params is None:
      params = pallas_kernels.default_params(platform)
    self.backend = resolve_backend(backend, model_config, params, platform)
    self.mix = (block_scores.score_mix(model_config, weights)
                if model_config.score == "grm" else {})
    if interpret is None:
      interpret = platform == "cpu"
    slope = float(model_config.leaky_slope)
    self.layout = (block_scores.kernel_layout(params) if self.backend == "pallas"
                   else block_scores.Layout())
    # The width d of the prepared tokens: model.embed_dim padded as the layout asks.
    self.width = blockwise.round_up(int(model_config.embed_dim), self.layout.d_multiple)
    if self.backend == "pallas":
      self.score_fn = functools.partial(
          block_scores.pallas_scores, slope=slope,
          params=_fit_to_width(params, self.width),
          interpret=interpret)
    else:
      self.score_fn = {
          "xla": functools.partial(block_scores.xla_scores, slope=slope),
          "global": block_scores.global_scores,
          "reference": functools.partial(
              block_scores.reference_scores, mix=self.mix,
              model_config=ml_collections.FrozenConfigDict(model_config)),
      }[self.backend]

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, mesh=None) -> "Scorer":
    ev = config.eval
    return cls(config.model, backend=ev.get("backend", "auto"),
               dtype=ev.get("score_dtype", "float32"), block_images=ev.block_images,
               block_texts=ev.block_texts, mesh=mesh)

  def prepare(self, images, texts) -> tuple[dict, dict]:
    """Encodings -> the trees the block score function reads (host arrays)."""
    if self.backend == "global":
      # pylint: disable-next=protected-access
      unit = lambda e: {"global": block_scores._unit(e["global"])}
      return unit(images), unit(texts)
    if self.backend == "reference":
      keep = lambda e: {k: np.asarray(v) for k, v in e.items() if k in similarity.SCORE_KEYS}
      return keep(images), keep(texts)
    samples = np.shape(images["regions"])[1] if "unc" in self.mix else 1
    img = block_scores.prepare_images(images, self.mix, self.dtype, self.layout)
    txt = block_scores.prepare_texts(texts, self.mix, samples, self.dtype, self.layout)
    d = img["tokens"].shape[-1]
    if self.backend == "pallas" and d != self.width:  # the kernel's K step is set for d
      raise ValueError(f"The image encodings have d={np.shape(images['tokens'])[-1]} "
                       f"(padded to {d}); this scorer was built for model.embed_dim="
                       f"{self.config.embed_dim} (padded to {self.width}).")
    return img, txt

  def _blocks(self, img, txt) -> dict:
    n, m = len(jax.tree.leaves(img)[0]), len(jax.tree.leaves(txt)[0])
    bi, bt = self.blocks
    if bi <= 0 or bt <= 0:
      lt = txt["tokens"].shape[1] if "tokens" in txt else 1
      lc = img["tokens"].shape[1] if "tokens" in img else 1
      auto = auto_blocks(self.backend, -(-n // self.mesh.devices.size), m, lt, lc)
      bi, bt = (b if b > 0 else a for b, a in zip(self.blocks, auto))
    return {"block_images": bi, "block_texts": bt, "mesh": self.mesh}

  def _run(self, fn, images, texts, *args, prepared: bool):
    img, txt = (images, texts) if prepared else self.prepare(images, texts)
    return fn(self.score_fn, img, txt, *args, **self._blocks(img, txt))

  def matrix(self, images, texts, *, prepared: bool = False) -> np.ndarray:
    """(N, M) float32 scores. prepared=True: images/texts come from self.prepare."""
    return self._run(blockwise.score_matrix, images, texts, prepared=prepared)

  def topk_texts(self, images, texts, k: int, *, prepared: bool = False):
    """The k best texts per image: values (N, k) float32, indices (N, k) int32."""
    return self._run(blockwise.topk_texts_per_image, images, texts, k, prepared=prepared)

  def topk_images(self, images, texts, k: int, *, prepared: bool = False):
    """The k best images per text: values (M, k) float32, indices (M, k) int32."""
    return self._run(blockwise.topk_images_per_text, images, texts, k, prepared=prepared)
