"""BERT text backbone, laid out like Hugging Face's BertModel (without the pooler).

Word + position + token-type embeddings, LayerNorm (eps 1e-12), dropout, then post-LN
blocks with the padding mask on the attention keys and exact GELU. Parameter names map
onto HF's (weights.py): word_embeddings, position_embeddings, token_type_embeddings,
ln_embed <- embeddings.LayerNorm, layer_i <- encoder.layer.i. The position table has
max_len rows; a 512-row HF table is sliced to it when loading.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax.models import layers


class Bert(nn.Module):
  """ids (B, L) int32, mask (B, L) bool -> tokens (B, L, C)."""
  vocab_size: int
  max_len: int
  width: int
  depth: int
  num_heads: int
  mlp_dim: int
  dropout: float = 0.0
  type_vocab_size: int = 2
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "Bert":
    """Builds from config.model.text (the registry in grm.py calls this)."""
    if config.vocab_size <= 0:
      raise ValueError("config.model.text.vocab_size is %r: set it from the tokenizer "
                       "(len(tokenizer)) before building the model" % config.vocab_size)
    return cls(vocab_size=config.vocab_size, max_len=config.max_len,
               width=config.width, depth=config.depth, num_heads=config.num_heads,
               mlp_dim=config.mlp_dim, dropout=config.dropout, dtype=dtype, **kwargs)

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    _, l = ids.shape
    if l > self.max_len:
      raise ValueError(f"text length {l} exceeds config model.text.max_len "
                       f"{self.max_len}")
    embed = lambda n, name: nn.Embed(n, self.width, embedding_init=layers.default_init,
                                     name=name)
    # Embeddings are summed in float32 (as HF does in its default precision) and only
    # then cast: three bfloat16 additions would round each table separately.
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_len, "position_embeddings")(jnp.arange(l))[None]
         + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(epsilon=1e-12, dtype=self.dtype, name="ln_embed")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    for i in range(self.depth):
      x = layers.TransformerBlock(self.num_heads, self.mlp_dim, self.dropout,
                                  pre_norm=False, dtype=self.dtype, name=f"layer_{i}")(
                                      x, mask, train)
    return x
