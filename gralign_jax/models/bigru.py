"""Bidirectional GRU text encoder: the detector-era baseline (VSE++, SCAN, VSE-infinity).

Word embeddings (B, L) -> (B, L, E), a bidirectional GRU run over each caption's valid
tokens only (the backward direction starts at the caption's last real token, as
PyTorch's pack_padded_sequence does), and the two directions averaged per token, as
VSE-infinity's EncoderText does: (B, L, C). Padding positions come out as zeros.

The GRU equations are PyTorch's (r, z, n gates; the reset gate multiplies the hidden
projection including its bias), so torch.nn.GRU weights map exactly: flax's input
Dense of each gate carries b_i + b_h, its hidden Dense for n carries b_hn.
The token vocabulary is whatever tokenizer the data config names (a WordPiece one by
default); VSE-infinity's word-level vocabulary and GloVe vectors are not reproduced.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax.models import layers


class BiGRU(nn.Module):
  """ids (B, L) int32, mask (B, L) bool -> tokens (B, L, width)."""
  vocab_size: int
  max_len: int
  word_dim: int = 300
  width: int = 1024
  depth: int = 1
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict, dtype: Any,
                  **kwargs) -> "BiGRU":
    """Builds from config.model.text (name "bigru")."""
    return cls(vocab_size=layers.vocab_size(config), max_len=config.max_len,
               word_dim=config.get("word_dim", 300), width=config.width,
               depth=config.depth, dropout=config.dropout, dtype=dtype, **kwargs)

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array, train: bool = False) -> jax.Array:
    mask = mask.astype(bool)
    lengths = mask.sum(axis=1).astype(jnp.int32)
    x = nn.Embed(self.vocab_size, self.word_dim, embedding_init=layers.default_init,
                 name="word_embeddings")(ids)
    x = nn.Dropout(self.dropout)(x, deterministic=not train)
    for i in range(self.depth):
      last = i == self.depth - 1
      # parent=None: the cell belongs to its RNN; params forward_<i>/cell/{ir,hr,...}.
      gru = lambda d: nn.RNN(nn.GRUCell(self.width, dtype=self.dtype, parent=None),
                             name=f"{d}_{i}")
      x = nn.Bidirectional(
          gru("forward"), gru("backward"),
          # Inner layers feed both directions on (as torch's multi-layer GRU does);
          # the last one averages them, as VSE-infinity does.
          merge_fn=(lambda a, b: (a + b) / 2) if last else
          (lambda a, b: jnp.concatenate([a, b], axis=-1)))(
              x.astype(self.dtype), seq_lengths=lengths)
    return jnp.where(mask[..., None], x, 0).astype(self.dtype)
