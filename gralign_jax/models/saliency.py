"""Saliency adapters (method.md section 2): one keep gate per token.

h = W2 . GELU(W1 . LayerNorm(X)) in R^{L x 2} are (keep, drop) logits. In training the
gate is the keep entry of a Gumbel-softmax sample (temperature tau; optionally
straight-through hard, i.e. exactly 0 or 1 forward with the soft gradient), drawn with
the "gumbel" rng. tau may be annealed over training (`gumbel_tau_at`: model.gumbel_tau
down to model.gumbel_tau_final; equal, the default, is a constant tau). In evaluation
the gate is the deterministic form of what training ended with: softmax(h / tau_final)
[keep] for soft gates; for hard gates the argmax gate, 1 iff the keep logit beats the
drop logit (the noise-free Gumbel-max), so a token dropped in training is dropped in
evaluation too. Padding gets 0.

The same module serves both modalities with separate weights (the visual
"significance-aware" and the textual "granularity-aware" adapter); neither sees the
other modality. How the gates enter the score ("weight" the aggregation or only
"scale" the tokens) is similarity.py's business: the adapter only produces them.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gralign_jax.models import layers


def gumbel_tau_at(step: jax.Array, tau: float, tau_final: float,
                  num_steps: int) -> jax.Array:
  """The training temperature at `step`: tau * (tau_final / tau) ** (step / num_steps),
  geometric from tau at step 0 to tau_final at num_steps and held there (float32)."""
  frac = jnp.clip(jnp.asarray(step, jnp.float32) / max(num_steps, 1), 0.0, 1.0)
  return jnp.float32(tau) * jnp.float32(tau_final / tau) ** frac


def gumbel_softmax_keep(rng: jax.Array, logits: jax.Array, tau: float | jax.Array,
                        hard: bool) -> jax.Array:
  """logits (..., 2) -> keep probability (...) of one Gumbel-softmax draw."""
  u = jax.random.uniform(rng, logits.shape, jnp.float32, minval=1e-10, maxval=1.0)
  g = -jnp.log(-jnp.log(u))
  y = jax.nn.softmax((logits + g) / tau, axis=-1)
  if hard:
    one_hot = jax.nn.one_hot(jnp.argmax(y, axis=-1), 2, dtype=y.dtype)
    # Straight-through: (hard - soft) + soft is exactly the one-hot forward (x - x == 0
    # in floating point for the dropped entry) and has the soft gradient.
    y = (one_hot - jax.lax.stop_gradient(y)) + y
  return y[..., 0]


class SaliencyAdapter(nn.Module):
  """X (B, L, d), mask (B, L) bool -> gates a (B, L) float32 in [0, 1], 0 at padding.

  `tau` is the temperature training ends at (the one evaluation's soft gate uses); a
  training call may pass the scheduled temperature of its step as `tau`.
  """
  hidden: int
  tau: float = 1.0
  hard: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, train: bool = False,
               tau: jax.Array | None = None) -> jax.Array:
    y = nn.LayerNorm(dtype=self.dtype, name="ln")(x)
    y = layers.gelu(nn.Dense(self.hidden, dtype=self.dtype, name="fc1")(y))
    # The logits go to float32: the Gumbel noise and a low temperature would swamp
    # bfloat16's 8 mantissa bits.
    h = nn.Dense(2, dtype=self.dtype, name="fc2")(y).astype(jnp.float32)
    if train:
      a = gumbel_softmax_keep(self.make_rng("gumbel"), h,
                              self.tau if tau is None else tau, self.hard)
    elif self.hard:
      # Soft gates here would never reach 0: with gate_mode "scale" no token would be
      # dropped and S_key would equal S_ori at evaluation, unlike in training.
      a = (h[..., 0] > h[..., 1]).astype(jnp.float32)
    else:
      a = jax.nn.softmax(h / self.tau, axis=-1)[..., 0]
    return jnp.where(mask, a, 0.0)
