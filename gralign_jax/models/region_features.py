"""The input path for precomputed bottom-up-attention (BUTD) region features.

SCAN's precomputed features (Faster R-CNN, 36 regions x 2048 per image; data format
"precomp") take the place of a vision backbone: each region is a token. The map into
the backbone width follows VSE-infinity's EncoderImageAggr, fc(x) + MLP(x) (a linear
map plus a two-layer residual MLP), with LayerNorm where VSE-infinity has BatchNorm, so
that the output does not depend on the batch. All regions are valid tokens.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax.models import layers


class RegionFeatures(nn.Module):
  """features (B, R, F) float -> tokens (B, R, width)."""
  num_regions: int = 36
  feature_dim: int = 2048
  width: int = 1024
  mlp: bool = True
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "RegionFeatures":
    """Builds from config.model.vision (name "butd")."""
    return cls(num_regions=config.num_regions, feature_dim=config.feature_dim,
               width=config.width,
               mlp=config.get("mlp", True), dropout=config.dropout, dtype=dtype, **kwargs)

  def example_inputs(self) -> tuple[jax.Array]:
    return (jnp.zeros((1, self.num_regions, self.feature_dim), jnp.float32),)

  @nn.compact
  def __call__(self, features: jax.Array, train: bool = False) -> jax.Array:
    if features.ndim != 3 or features.shape[-1] != self.feature_dim:
      raise ValueError(f"region features must be (batch, regions, {self.feature_dim}) "
                       f"(config model.vision.feature_dim), got {features.shape}")
    x = features.astype(self.dtype)
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, kernel_init=layers.default_init,
                                     name=name)
    out = dense(self.width, "fc")(x)
    if self.mlp:
      h = nn.LayerNorm(dtype=self.dtype, name="mlp_norm")(dense(self.width // 2, "mlp_in")(x))
      out = out + dense(self.width, "mlp_out")(nn.relu(h))
    return nn.Dropout(self.dropout)(out, deterministic=not train)
