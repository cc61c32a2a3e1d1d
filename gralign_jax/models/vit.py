"""Vision Transformer backbone, laid out like Hugging Face's ViTModel.

Patch embedding (a Conv with stride = patch size), a CLS token, learned position
embeddings over CLS + patches, pre-LN blocks (LayerNorm eps 1e-12, exact GELU) and a
final LayerNorm. No pooler: GRM uses every token. Parameter names map one to one onto
HF's (weights.py): patch_embed <- embeddings.patch_embeddings.projection (kernel
transposed from OIHW to HWIO), cls_token, pos_embedding <- embeddings.position_embeddings,
layer_i <- encoder.layer.i, ln_final <- layernorm.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax.models import layers


class ViT(nn.Module):
  """pixels (B, H, W, 3) -> tokens (B, 1 + P, C), P = (H / patch) * (W / patch)."""
  image_size: int
  patch_size: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "ViT":
    """Builds from config.model.vision (the registry in grm.py calls this)."""
    return cls(image_size=config.image_size, patch_size=config.patch_size,
               width=config.width, depth=config.depth, num_heads=config.num_heads,
               mlp_dim=config.mlp_dim, dropout=config.dropout, dtype=dtype, **kwargs)

  @nn.compact
  def __call__(self, pixels: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, _ = pixels.shape
    if h != self.image_size or w != self.image_size:
      raise ValueError(f"ViT expects {self.image_size}x{self.image_size} images (config "
                       f"model.vision.image_size), got {h}x{w}")
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
    for i in range(self.depth):
      x = layers.TransformerBlock(self.num_heads, self.mlp_dim, self.dropout,
                                  pre_norm=True, dtype=self.dtype, name=f"layer_{i}")(
                                      x, None, train)
    return nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="ln_final")(x)
