"""Vision Transformer backbone, laid out like Hugging Face's ViTModel.

Patch embedding (a Conv with stride = patch size), a CLS token, learned position
embeddings over CLS + patches, pre-LN blocks (LayerNorm eps 1e-12, exact GELU) and a
final LayerNorm. No pooler: GRM uses every token. Parameters map one to one onto HF's
(`hf_name`): patch_embed <- embeddings.patch_embeddings.projection (kernel OIHW ->
HWIO), cls_token, pos_embedding <- embeddings.position_embeddings, layer_i <-
encoder.layer.i, ln_final <- layernorm. A checkpoint trained at another resolution
(google/vit-base-patch16-224-in21k used at 384) has its position grid resized with
PyTorch's bicubic rule, as HF's `interpolate_pos_encoding=True` does at run time.
"""
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax import weights
from gralign_jax.models import layers


def _cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic resize (align_corners=False, edge clamp)."""
  def w(t):  # Keys' cubic convolution kernel with torch's a = -0.75.
    t = abs(t)
    if t <= 1:
      return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
      return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0
  m = np.zeros((n_out, n_in), np.float64)
  for o in range(n_out):
    src = (o + 0.5) * n_in / n_out - 0.5   # not clamped at 0: torch's cubic rule
    base = int(np.floor(src))
    for k in range(-1, 3):
      m[o, min(max(base + k, 0), n_in - 1)] += w(src - (base + k))
  return m


def interpolate_positions(x: np.ndarray, shape: tuple[int, ...],
                          resize=_cubic_matrix) -> np.ndarray:
  """Position table (1, 1 + g*g, C) -> (1, 1 + G*G, C): the patch grid resized with
  `resize(g, G)`, an (G, g) matrix per axis (default: torch's bicubic); CLS kept."""
  if tuple(x.shape) == tuple(shape) or x.ndim != 3 or x.shape[2] != shape[2]:
    return x
  g, big = int(round((x.shape[1] - 1) ** 0.5)), int(round((shape[1] - 1) ** 0.5))
  if g * g != x.shape[1] - 1 or big * big != shape[1] - 1:
    return x  # not square grids: left for convert() to report as mis-shaped
  m = resize(g, big)
  grid = x[0, 1:].reshape(g, g, -1).astype(np.float64)
  grid = np.einsum("Hh,hwc,Ww->HWc", m, grid, m).reshape(1, big * big, -1)
  return np.concatenate([x[:, :1], grid.astype(x.dtype)], axis=1)


# Block parameters -> HF names. The attention's are shared with DINOv2 (dinov2.py).
HF_ATTENTION = {f"attention/{x}": f"attention.attention.{x}"
                for x in ("query", "key", "value")}
HF_ATTENTION["attention/out"] = "attention.output.dense"
_HF_BLOCK = dict(HF_ATTENTION, **{
    "mlp/intermediate": "intermediate.dense", "mlp/output": "output.dense",
    "ln_1": "layernorm_before", "ln_2": "layernorm_after"})


class ViT(nn.Module):
  """pixels (B, H, W, 3) -> tokens (B, 1 + P, C), P = (H / patch) * (W / patch)."""
  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  ln_eps: float = 1e-12
  remat: bool = False
  layer_scale: bool = False  # DINOv2's per-channel branch scales (dinov2.py)
  dtype: Any = jnp.float32

  HF_IGNORED = (r"^pooler\.", r"^classifier\.", r"mask_token$")
  # The checkpoint's block names, and how its position table fits the run's grid.
  HF_BLOCK = _HF_BLOCK
  HF_POSITIONS = staticmethod(interpolate_positions)

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "ViT":
    """Builds from config.model.vision (models/backbones.py calls this)."""
    return cls(image_size=config.image_size, patch_size=config.patch_size,
               **layers.encoder_kwargs(config), dtype=dtype, **kwargs)

  @classmethod
  def from_hf_config(cls, hf: dict, dtype: Any = jnp.float32, **overrides) -> "ViT":
    """From a HF ViTConfig dict; overrides (e.g. image_size=384) win."""
    layers.check_hf_activation(hf, "ViT")
    kw = dict(image_size=hf.get("image_size", 224), patch_size=hf.get("patch_size", 16),
              width=hf["hidden_size"], depth=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
              ln_eps=hf.get("layer_norm_eps", 1e-12), dtype=dtype)
    kw.update(overrides)
    return cls(**kw)

  def example_inputs(self) -> tuple[jax.Array]:
    return (jnp.zeros((1, self.image_size, self.image_size, 3), jnp.float32),)

  @classmethod
  def hf_name(cls, path: tuple[str, ...]) -> tuple[str, weights.Transform]:
    """Flax parameter path -> (HF ViTModel / Dinov2Model tensor name, transform)."""
    if path == ("cls_token",):
      return "embeddings.cls_token", weights.identity
    if path == ("pos_embedding",):
      return "embeddings.position_embeddings", cls.HF_POSITIONS
    if path[0] == "patch_embed":
      return layers.hf_patch_embedding(path[1])
    if path[-1] in ("layer_scale_1", "layer_scale_2"):  # DINOv2's LayerScale
      i = re.fullmatch(r"layer_(\d+)", path[0]).group(1)
      return f"encoder.layer.{i}.layer_scale{path[-1][-1]}.lambda1", weights.identity
    suffix, transform = layers.hf_leaf(path[-1])
    if path[0] == "ln_final":
      return f"layernorm.{suffix}", transform
    i = re.fullmatch(r"layer_(\d+)", path[0]).group(1)
    return f"encoder.layer.{i}.{cls.HF_BLOCK['/'.join(path[1:-1])]}.{suffix}", transform

  @nn.compact
  def __call__(self, pixels: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, _ = pixels.shape
    if h != self.image_size or w != self.image_size:
      raise ValueError(f"{type(self).__name__} expects {self.image_size}x"
                       f"{self.image_size} images (config model.vision.image_size), got "
                       f"{h}x{w}")
    p = self.patch_size
    x = nn.Conv(self.width, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=layers.default_init, name="patch_embed")(
                    pixels.astype(self.dtype))
    x = x.reshape(b, -1, self.width)
    cls = self.param("cls_token", layers.default_init, (1, 1, self.width))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, self.width)).astype(x.dtype), x],
                        axis=1)
    pos = self.param("pos_embedding", layers.default_init, (1, x.shape[1], self.width))
    x = x + pos.astype(x.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    block = layers.block_class(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dropout, pre_norm=True,
                ln_eps=self.ln_eps, layer_scale=self.layer_scale, dtype=self.dtype,
                name=f"layer_{i}")(x, None, train)
    return nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_final")(x)
