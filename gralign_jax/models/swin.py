"""Swin Transformer backbone, laid out like Hugging Face's SwinModel.

Patch embedding (a Conv with stride = patch size, the image zero-padded to a multiple
of it) and a LayerNorm, optional absolute position embeddings, then stages of blocks
that attend inside (shifted) windows with a learned relative position bias; between
stages, PatchMerging halves the resolution and doubles the width. The output is HF's
`last_hidden_state` (after the final LayerNorm; no pooler: GRM uses every token).

Numerics follow HF exactly, quirks included: a feature map is zero-padded (after the
first LayerNorm) to a multiple of the window and the padding is attended to, not
masked; the shifted-window mask adds -100, not -inf; when a stage's feature map is no
larger than the window, the window becomes the feature map and nothing shifts. HF
crashes when that clamped window is smaller than the configured one (its bias index is
built for the full window); here the bias of the smaller window is read from the same
table (offsets stay offsets), which agrees with HF wherever HF runs.

Tokens stay spatial (B, H, W, C) between blocks so every window size, shift and
padding is a Python int known at trace time. Parameters map one to one onto HF's
(`hf_name`): stage_i/block_j <- encoder.layers.i.blocks.j, stage_i/downsample <-
encoder.layers.i.downsample, embed_norm <- embeddings.norm, ln_final <- layernorm.
"""
import functools
import re
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax import weights
from gralign_jax.models import layers

_LEAF = {"kernel": ("weight", weights.linear), "bias": ("bias", weights.identity),
         "scale": ("weight", weights.identity)}
_HF_BLOCK = {"ln_1": "layernorm_before", "ln_2": "layernorm_after",
             "attention/query": "attention.self.query",
             "attention/key": "attention.self.key",
             "attention/value": "attention.self.value",
             "attention/out": "attention.output.dense",
             "mlp/intermediate": "intermediate.dense", "mlp/output": "output.dense"}


def _pair(x: Any) -> tuple[int, int]:
  return (x, x) if isinstance(x, int) else tuple(x)


def window_partition(x: Any, window: int) -> Any:
  """(B, H, W, C) -> (B, H/w * W/w, w*w, C), windows in row-major order (as HF)."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // window, window, w // window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, -1, window * window, c)


def window_reverse(x: Any, window: int, h: int, w: int) -> Any:
  """(B, nW, w*w, C) -> (B, H, W, C): the inverse of window_partition."""
  b, _, _, c = x.shape
  x = x.reshape(b, h // window, w // window, window, window, c)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, c)


def relative_position_index(window: int, table_window: int) -> np.ndarray:
  """(w*w, w*w) rows of the ((2T-1)^2, heads) bias table; HF's index when w == T."""
  coords = np.stack(np.meshgrid(np.arange(window), np.arange(window), indexing="ij"))
  coords = coords.reshape(2, -1)
  rel = coords[:, :, None] - coords[:, None, :] + (table_window - 1)
  return rel[0] * (2 * table_window - 1) + rel[1]


def shift_mask(h: int, w: int, window: int, shift: int) -> np.ndarray:
  """(nW, w*w, w*w) additive mask for the rolled (H, W) map: -100 between tokens that
  came from different regions (they only share a window because of the roll)."""
  def region(n):
    i = np.arange(n)
    return (i >= n - window).astype(np.int32) + (i >= n - shift)
  label = region(h)[:, None] * 3 + region(w)[None, :]
  label = window_partition(label[None, :, :, None], window)[0, :, :, 0]
  return np.where(label[:, None, :] != label[:, :, None], -100.0, 0.0).astype(np.float32)


class WindowAttention(nn.Module):
  """Multi-head attention inside each window, plus the relative position bias."""
  num_heads: int
  table_window: int
  qkv_bias: bool = True
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, window: int, mask: Optional[np.ndarray],
               train: bool = False) -> jax.Array:
    """x (B, nW, N, C) with N = window^2, mask (nW, N, N) or None -> (B, nW, N, C)."""
    b, nw, n, c = x.shape
    h, e = self.num_heads, c // self.num_heads
    dense = functools.partial(nn.Dense, c, dtype=self.dtype,
                              kernel_init=layers.default_init)
    q = dense(use_bias=self.qkv_bias, name="query")(x).reshape(b, nw, n, h, e)
    k = dense(use_bias=self.qkv_bias, name="key")(x).reshape(b, nw, n, h, e)
    v = dense(use_bias=self.qkv_bias, name="value")(x).reshape(b, nw, n, h, e)
    logits = jnp.einsum("bwqhe,bwkhe->bwhqk", q, k).astype(jnp.float32) * e ** -0.5
    table = self.param("relative_position_bias_table", layers.default_init,
                       ((2 * self.table_window - 1) ** 2, h))
    bias = table[relative_position_index(window, self.table_window)]  # (N, N, h)
    logits = logits + bias.transpose(2, 0, 1).astype(jnp.float32)
    if mask is not None:
      logits = logits + jnp.asarray(mask)[None, :, None]
    # Softmax in float32 whatever the compute dtype (see layers.SelfAttention).
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    probs = nn.Dropout(self.dropout)(probs, deterministic=not train)
    out = jnp.einsum("bwhqk,bwkhe->bwqhe", probs, v).reshape(b, nw, n, c)
    return dense(name="out")(out)


class SwinBlock(nn.Module):
  """x + Drop(W-MSA(LN1(x))), then x + Drop(MLP(LN2(x))), on a (B, H, W, C) map.

  Odd blocks of a stage shift the windows by window // 2 (SW-MSA), so information
  crosses window borders from one block to the next.
  """
  num_heads: int
  window_size: int
  shift_size: int = 0
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  ln_eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    """x (B, H, W, C) -> (B, H, W, C)."""
    _, height, width, c = x.shape
    window, shift = self.window_size, self.shift_size
    if min(height, width) <= window:  # HF: the window shrinks to the map, no shift
      window, shift = min(height, width), 0
    ln = functools.partial(nn.LayerNorm, epsilon=self.ln_eps, dtype=self.dtype)
    drop = nn.Dropout(self.dropout, deterministic=not train)
    # Stochastic depth: one keep/drop decision per sample, i.e. dropout broadcast over
    # every axis but the batch. Applied to both branches as in the original Swin and
    # timm (HF applies it to the attention branch only; it is a no-op at eval).
    drop_path = nn.Dropout(self.drop_path, broadcast_dims=(1, 2, 3),
                           deterministic=not train)

    y = ln(name="ln_1")(x)
    pad_h, pad_w = -height % window, -width % window
    y = jnp.pad(y, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))
    hp, wp = height + pad_h, width + pad_w
    mask = None
    if shift:
      y = jnp.roll(y, (-shift, -shift), axis=(1, 2))
      mask = shift_mask(hp, wp, window, shift)
    y = WindowAttention(self.num_heads, self.window_size, self.qkv_bias,
                        self.attention_dropout, self.dtype, name="attention")(
                            window_partition(y, window), window, mask, train)
    y = window_reverse(y, window, hp, wp)
    if shift:
      y = jnp.roll(y, (shift, shift), axis=(1, 2))
    x = x + drop_path(drop(y[:, :height, :width]))

    y = layers.Mlp(int(self.mlp_ratio * c), self.dtype, name="mlp")(ln(name="ln_2")(x))
    return x + drop_path(drop(y))


class PatchMerging(nn.Module):
  """(B, H, W, C) -> (B, ceil(H/2), ceil(W/2), 2C): each 2x2 patch concatenated in
  HF's order [0::2,0::2], [1::2,0::2], [0::2,1::2], [1::2,1::2], then LayerNorm and
  Linear (no bias). Odd sizes are zero-padded first."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    _, h, w, c = x.shape
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))
    x = jnp.concatenate([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2],
                         x[:, 1::2, 1::2]], axis=-1)
    # HF builds this LayerNorm with torch's default eps, not config.layer_norm_eps.
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="norm")(x)
    return nn.Dense(2 * c, use_bias=False, dtype=self.dtype,
                    kernel_init=layers.default_init, name="reduction")(x)


class SwinStage(nn.Module):
  """`depth` blocks, alternately plain and shifted, then PatchMerging if `downsample`.

  block_settings: SwinBlock's fields that every block of the model shares (window_size,
  mlp_ratio, qkv_bias, dropout, attention_dropout, ln_eps), as (name, value) pairs.
  """
  depth: int
  num_heads: int
  drop_paths: tuple[float, ...]
  downsample: bool
  block_settings: tuple[tuple[str, Any], ...]
  remat: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    # static_argnums counts self: (x, train) -> train is 2.
    block = nn.remat(SwinBlock, static_argnums=(2,)) if self.remat else SwinBlock
    settings = dict(self.block_settings)
    for j in range(self.depth):
      shift = 0 if j % 2 == 0 else settings["window_size"] // 2
      x = block(num_heads=self.num_heads, shift_size=shift, drop_path=self.drop_paths[j],
                dtype=self.dtype, name=f"block_{j}", **settings)(x, train)
    if self.downsample:
      x = PatchMerging(self.dtype, name="downsample")(x)
    return x


class Swin(nn.Module):
  """pixels (B, H, W, 3) -> tokens (B, h * w, embed_dim * 2^(S-1)), S = len(depths),
  h = ceil(H / (patch * 2^(S-1))) (and w likewise): Swin-B at 224 gives (B, 49, 1024).

  Any H, W work (HF pads the same way); only absolute position embeddings, off in
  Microsoft's checkpoints, need the input to be `image_size`.
  """
  image_size: Any  # int, or (H, W)
  patch_size: int
  embed_dim: int
  depths: tuple[int, ...]
  num_heads: tuple[int, ...]
  window_size: int
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  dropout: float = 0.0
  attention_dropout: float = 0.0
  drop_path: float = 0.0
  use_absolute_embeddings: bool = False
  ln_eps: float = 1e-5
  remat: bool = False
  dtype: Any = jnp.float32

  HF_IGNORED = (r"relative_position_index$", r"^pooler\.", r"^classifier\.",
                r"mask_token$", r"^decoder\.")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "Swin":
    """Builds from config.model.vision (models/backbones.py calls this)."""
    return cls(image_size=config.image_size, patch_size=config.patch_size,
               embed_dim=config.embed_dim, depths=tuple(config.depths),
               num_heads=tuple(config.num_heads), window_size=config.window_size,
               mlp_ratio=config.get("mlp_ratio", 4.0), dropout=config.dropout,
               attention_dropout=config.get("attention_dropout", 0.0),
               drop_path=config.get("drop_path", 0.0),
               remat=config.get("remat", False), dtype=dtype, **kwargs)

  @classmethod
  def from_hf_config(cls, hf: dict, dtype: Any = jnp.float32, **overrides) -> "Swin":
    """From a HF SwinConfig dict; overrides (e.g. image_size=384) win."""
    layers.check_hf_activation(hf, "Swin")
    image_size = hf.get("image_size", 224)
    kw = dict(image_size=image_size if isinstance(image_size, int) else tuple(image_size),
              patch_size=hf.get("patch_size", 4), embed_dim=hf["embed_dim"],
              depths=tuple(hf["depths"]), num_heads=tuple(hf["num_heads"]),
              window_size=hf.get("window_size", 7), mlp_ratio=hf.get("mlp_ratio", 4.0),
              qkv_bias=hf.get("qkv_bias", True),
              dropout=hf.get("hidden_dropout_prob", 0.0),
              attention_dropout=hf.get("attention_probs_dropout_prob", 0.0),
              drop_path=hf.get("drop_path_rate", 0.0),
              use_absolute_embeddings=hf.get("use_absolute_embeddings", False),
              ln_eps=hf.get("layer_norm_eps", 1e-5), dtype=dtype)
    kw.update(overrides)
    return cls(**kw)

  def example_inputs(self) -> tuple[jax.Array]:
    return (jnp.zeros((1, *_pair(self.image_size), 3), jnp.float32),)

  @staticmethod
  def hf_name(path: tuple[str, ...]) -> tuple[str, weights.Transform]:
    """Flax parameter path -> (HF SwinModel tensor name, transform)."""
    if path == ("pos_embedding",):
      return "embeddings.position_embeddings", weights.identity
    if path[0] == "patch_embed":
      return layers.hf_patch_embedding(path[1])
    if path[0] == "embed_norm":
      return f"embeddings.norm.{_LEAF[path[-1]][0]}", weights.identity
    if path[0] == "ln_final":
      return f"layernorm.{_LEAF[path[-1]][0]}", weights.identity
    i = re.fullmatch(r"stage_(\d+)", path[0]).group(1)
    if path[1] == "downsample":
      suffix, transform = _LEAF[path[-1]]
      return f"encoder.layers.{i}.downsample.{path[2]}.{suffix}", transform
    j = re.fullmatch(r"block_(\d+)", path[1]).group(1)
    block = f"encoder.layers.{i}.blocks.{j}"
    if path[-1] == "relative_position_bias_table":
      return f"{block}.attention.self.relative_position_bias_table", weights.identity
    suffix, transform = _LEAF[path[-1]]
    return f"{block}.{_HF_BLOCK['/'.join(path[2:-1])]}.{suffix}", transform

  @nn.compact
  def __call__(self, pixels: jax.Array, train: bool = False) -> jax.Array:
    b, h, w, _ = pixels.shape
    p = self.patch_size
    x = jnp.pad(pixels.astype(self.dtype), ((0, 0), (0, -h % p), (0, -w % p), (0, 0)))
    x = nn.Conv(self.embed_dim, (p, p), strides=(p, p), padding="VALID", dtype=self.dtype,
                kernel_init=layers.default_init, name="patch_embed")(x)
    # HF builds this LayerNorm with torch's default eps, not config.layer_norm_eps.
    x = nn.LayerNorm(epsilon=1e-5, dtype=self.dtype, name="embed_norm")(x)
    if self.use_absolute_embeddings:
      grid = tuple(s // p for s in _pair(self.image_size))
      if x.shape[1:3] != grid:
        raise ValueError(f"Swin with absolute position embeddings expects "
                         f"{_pair(self.image_size)} images (image_size), got {h}x{w}")
      pos = self.param("pos_embedding", nn.initializers.zeros,
                       (1, grid[0] * grid[1], self.embed_dim))
      x = x + pos.reshape(1, *grid, self.embed_dim).astype(x.dtype)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    settings = (("window_size", self.window_size), ("mlp_ratio", self.mlp_ratio),
                ("qkv_bias", self.qkv_bias), ("dropout", self.dropout),
                ("attention_dropout", self.attention_dropout), ("ln_eps", self.ln_eps))
    # Stochastic depth grows linearly from 0 to drop_path over all blocks (as HF).
    total = sum(self.depths)
    rates = [self.drop_path * k / max(total - 1, 1) for k in range(total)]
    for i, depth in enumerate(self.depths):
      start = sum(self.depths[:i])
      x = SwinStage(depth, self.num_heads[i], tuple(rates[start:start + depth]),
                    i < len(self.depths) - 1, settings, self.remat, self.dtype,
                    name=f"stage_{i}")(x, train)
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_final")(x)
    return x.reshape(b, -1, x.shape[-1])
