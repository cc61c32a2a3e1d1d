"""BERT text backbone, laid out like Hugging Face's BertModel (without the pooler).

Word + position + token-type embeddings, LayerNorm (eps 1e-12), dropout, then post-LN
blocks with the padding mask on the attention keys and exact GELU. Parameters map
onto HF's (`hf_name`): word_embeddings, position_embeddings, token_type_embeddings,
ln_embed <- embeddings.LayerNorm, layer_i <- encoder.layer.i. The position table has
max_len rows; a 512-row HF table is cut to its first max_len rows when loading.

`dropout` stands for both of HF's hidden_dropout_prob and attention_probs_dropout_prob
(0.1 each in bert-base, and in the paper configs): it drops the embeddings, the
attention probabilities and both residual branches of every block, with train=True
only (the "dropout" rng, which the trainer folds with the step); train=False is
deterministic.
"""
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import weights
from gralign_jax.models import layers

_HF_BLOCK = {"attention/query": "attention.self.query",
             "attention/key": "attention.self.key",
             "attention/value": "attention.self.value",
             "attention/out": "attention.output.dense",
             "ln_1": "attention.output.LayerNorm",
             "mlp/intermediate": "intermediate.dense", "mlp/output": "output.dense",
             "ln_2": "output.LayerNorm"}


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
  ln_eps: float = 1e-12
  remat: bool = False
  dtype: Any = jnp.float32

  # Pre-training heads, the pooler and buffers are not part of the encoder.
  HF_IGNORED = (r"^pooler\.", r"^cls\.", r"position_ids$", r"token_type_ids$")

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "Bert":
    """Builds from config.model.text (models/backbones.py calls this)."""
    return cls(vocab_size=layers.vocab_size(config), max_len=config.max_len,
               **layers.encoder_kwargs(config), dtype=dtype, **kwargs)

  @classmethod
  def from_hf_config(cls, hf: dict, dtype: Any = jnp.float32, **overrides) -> "Bert":
    """From a HF BertConfig dict; overrides (e.g. max_len=32) win."""
    layers.check_hf_activation(hf, "BERT")
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise ValueError(f"BERT checkpoint uses position_embedding_type "
                       f"{hf['position_embedding_type']!r}; only 'absolute' is implemented.")
    kw = dict(vocab_size=hf["vocab_size"], max_len=hf.get("max_position_embeddings", 512),
              width=hf["hidden_size"], depth=hf["num_hidden_layers"],
              num_heads=hf["num_attention_heads"], mlp_dim=hf["intermediate_size"],
              type_vocab_size=hf.get("type_vocab_size", 2),
              ln_eps=hf.get("layer_norm_eps", 1e-12), dtype=dtype)
    kw.update(overrides)
    return cls(**kw)

  def example_inputs(self) -> tuple[jax.Array, jax.Array]:
    return jnp.zeros((1, self.max_len), jnp.int32), jnp.ones((1, self.max_len), bool)

  @staticmethod
  def hf_name(path: tuple[str, ...]) -> tuple[str, weights.Transform]:
    """Flax parameter path -> (HF BertModel tensor name, transform)."""
    suffix, transform = layers.hf_leaf(path[-1])
    if path[0] == "position_embeddings":
      return "embeddings.position_embeddings.weight", weights.leading_rows
    if path[0] in ("word_embeddings", "token_type_embeddings"):
      return f"embeddings.{path[0]}.weight", transform
    if path[0] == "ln_embed":
      return f"embeddings.LayerNorm.{suffix}", transform
    i = re.fullmatch(r"layer_(\d+)", path[0]).group(1)
    return f"encoder.layer.{i}.{_HF_BLOCK['/'.join(path[1:-1])]}.{suffix}", transform

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    _, l = ids.shape
    if l > self.max_len:
      raise ValueError(f"text length {l} exceeds config model.text.max_len "
                       f"{self.max_len}")
    mask = mask.astype(bool)
    embed = lambda n, name: nn.Embed(n, self.width, embedding_init=layers.default_init,
                                     name=name)
    # Embeddings are summed in float32 (as HF does in its default precision) and only
    # then cast: three bfloat16 additions would round each table separately.
    x = (embed(self.vocab_size, "word_embeddings")(ids)
         + embed(self.max_len, "position_embeddings")(jnp.arange(l))[None]
         + embed(self.type_vocab_size, "token_type_embeddings")(jnp.zeros_like(ids)))
    x = nn.LayerNorm(epsilon=self.ln_eps, dtype=self.dtype, name="ln_embed")(x)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    block = layers.block_class(self.remat)
    for i in range(self.depth):
      x = block(self.num_heads, self.mlp_dim, self.dropout, pre_norm=False,
                ln_eps=self.ln_eps, dtype=self.dtype, name=f"layer_{i}")(x, mask, train)
    return x
