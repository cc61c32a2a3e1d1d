"""Transformer pieces shared by the backbones (ViT, BERT, and those to come).

Parameter names follow Hugging Face's layout closely enough that weights.py can map a
checkpoint tensor by tensor: separate query/key/value/out projections with (C, C)
kernels, an MLP of "intermediate" and "output" Dense layers, and two LayerNorms per
block ("ln_1" around attention, "ln_2" around the MLP; HF calls them
layernorm_before/after in ViT and attention.output.LayerNorm/output.LayerNorm in BERT).

Numerics also follow HF: exact (erf) GELU, LayerNorm eps 1e-12, attention logits
scaled by 1/sqrt(head_dim) and masked keys removed before the softmax. The softmax is
taken in float32 whatever the compute dtype, because bfloat16 logits lose the small
differences that decide attention.
"""
import functools
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from gralign_jax import weights

# HF BERT and ViT both initialise with N(0, 0.02); matching it keeps a randomly
# initialised backbone at the scale the pretrained one has.
default_init = nn.initializers.normal(stddev=0.02)


def gelu(x: jax.Array) -> jax.Array:
  """Exact (erf) GELU, as HF's "gelu" activation (not the tanh approximation)."""
  return nn.gelu(x, approximate=False)


def check_hf_activation(hf_config: dict, model: str) -> None:
  """A HF checkpoint config must use exact "gelu", the only activation written here."""
  act = hf_config.get("hidden_act", "gelu")
  if act != "gelu":
    raise ValueError(f"{model} checkpoint uses hidden_act {act!r}; only exact 'gelu' "
                     "is implemented.")


class SelfAttention(nn.Module):
  """Multi-head self-attention over (B, L, C) with an optional key mask (B, L)."""
  num_heads: int
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    b, l, c = x.shape
    if c % self.num_heads:
      raise ValueError(f"width {c} is not divisible by num_heads {self.num_heads}")
    h, e = self.num_heads, c // self.num_heads
    dense = functools.partial(nn.Dense, c, dtype=self.dtype, kernel_init=default_init)
    q = dense(name="query")(x).reshape(b, l, h, e)
    k = dense(name="key")(x).reshape(b, l, h, e)
    v = dense(name="value")(x).reshape(b, l, h, e)
    logits = jnp.einsum("bqhe,bkhe->bhqk", q, k).astype(jnp.float32) / jnp.sqrt(e)
    if mask is not None:
      # Padding keys never receive attention; finite fill so an all-padding row stays
      # finite (its output is ignored downstream anyway).
      logits = jnp.where(mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
    probs = nn.Dropout(self.dropout)(probs, deterministic=not train)
    out = jnp.einsum("bhqk,bkhe->bqhe", probs, v).reshape(b, l, c)
    return dense(name="out")(out)


class Mlp(nn.Module):
  """Dense(mlp_dim) -> exact GELU -> Dense(C): HF's intermediate + output."""
  mlp_dim: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    y = nn.Dense(self.mlp_dim, dtype=self.dtype, kernel_init=default_init,
                 name="intermediate")(x)
    return nn.Dense(x.shape[-1], dtype=self.dtype, kernel_init=default_init,
                    name="output")(gelu(y))


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = 1e-6) -> jax.Array:
  """x / max(||x||, eps): a zero vector stays zero instead of becoming NaN."""
  sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x (B, L, d), mask (B, L) -> (B, d) float32 mean over valid tokens."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


def encoder_kwargs(config) -> dict:
  """The transformer-encoder fields ViT and BERT share, from their config.model part."""
  return dict(width=config.width, depth=config.depth, num_heads=config.num_heads,
              mlp_dim=config.mlp_dim, dropout=config.dropout,
              remat=config.get("remat", False))


def vocab_size(text_config) -> int:
  """config.model.text.vocab_size, which train.py sets from the tokenizer when 0."""
  if text_config.vocab_size <= 0:
    raise ValueError("config.model.text.vocab_size is %r: set it from the tokenizer "
                     "(len(tokenizer)) before building the model" % text_config.vocab_size)
  return text_config.vocab_size


def hf_leaf(leaf: str) -> tuple[str, Any]:
  """Flax leaf name -> (HF tensor suffix, transform) for Dense, LayerNorm and Embed."""
  return {"kernel": ("weight", weights.linear), "bias": ("bias", weights.identity),
          "scale": ("weight", weights.identity),
          "embedding": ("weight", weights.identity)}[leaf]


def hf_patch_embedding(leaf: str) -> tuple[str, Any]:
  """The patch embedding's leaf (a Conv's kernel or bias) -> (HF tensor name,
  transform): embeddings.patch_embeddings.projection, as ViT, DINOv2 and Swin name it."""
  return ("embeddings.patch_embeddings.projection."
          + ("weight" if leaf == "kernel" else "bias"),
          weights.conv if leaf == "kernel" else weights.identity)


def block_class(remat: bool) -> type[nn.Module]:
  """TransformerBlock, or its rematerialised twin (same parameter names) when `remat`:
  activations inside a block are recomputed in the backward pass instead of stored."""
  # static_argnums counts self: (x, mask, train) -> train is 3.
  return nn.remat(TransformerBlock, static_argnums=(3,)) if remat else TransformerBlock


class TransformerBlock(nn.Module):
  """One encoder block, pre-LN (ViT) or post-LN (BERT).

  pre:  x + Drop(Attn(LN1(x)));  then  x + Drop(MLP(LN2(x)))
  post: LN1(x + Drop(Attn(x)));  then  LN2(x + Drop(MLP(x)))

  `layer_scale` (DINOv2's LayerScale) multiplies each branch's output by a learned
  per-channel vector (C,) before the residual add: params "layer_scale_1" (attention)
  and "layer_scale_2" (MLP), initialised to ones.
  """
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  pre_norm: bool = True
  ln_eps: float = 1e-12
  layer_scale: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: Optional[jax.Array] = None,
               train: bool = False) -> jax.Array:
    """x (B, L, C), mask (B, L) bool or None -> (B, L, C)."""
    ln = functools.partial(nn.LayerNorm, epsilon=self.ln_eps, dtype=self.dtype)
    attn = SelfAttention(self.num_heads, self.dropout, self.dtype, name="attention")
    mlp = Mlp(self.mlp_dim, self.dtype, name="mlp")
    dropout = nn.Dropout(self.dropout, deterministic=not train)
    def drop(y, i):  # dropout of branch i's output, after its layer scale if any
      if self.layer_scale:
        y = y * self.param(f"layer_scale_{i}", nn.initializers.ones,
                           (y.shape[-1],)).astype(y.dtype)
      return dropout(y)
    if self.pre_norm:
      x = x + drop(attn(ln(name="ln_1")(x), mask, train), 1)
      return x + drop(mlp(ln(name="ln_2")(x)), 2)
    x = ln(name="ln_1")(x + drop(attn(x, mask, train), 1))
    return ln(name="ln_2")(x + drop(mlp(x), 2))
