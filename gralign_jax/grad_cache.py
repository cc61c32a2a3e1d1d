"""Gradient caching: a contrastive batch larger than memory, with exact gradients.

Gao et al., 2021, "Scaling Deep Contrastive Learning Batch Size under Memory Limited
Setup". The loss couples every image with every caption of the batch (the hardest
negative is taken over all B), so the batch cannot simply be split into accumulated
micro-batches. Instead, in three stages:
  1. encode the batch in N chunks, keeping only the encoders' outputs (the token sets,
     small), not their activations;
  2. compute the loss over the whole batch from those outputs, and its gradient with
     respect to them;
  3. encode each chunk again, now with its vjp, and pull that chunk's output gradient
     back to the parameters; sum over chunks.
Peak activation memory is one chunk's forward and backward; the price is a second
forward pass. The loss, its aux and the gradients are the whole batch's.

Chunks keep the batch's sharding: chunk c holds rows c, c + N, c + 2N, ..., so with
the batch split over D devices in contiguous shares each device encodes its own rows of
every chunk, and the chunks (hence the results) do not depend on D. The encoder's
random draws (Gumbel gates, region samples, dropout) come from keys folded with the
chunk's index, the same in stages 1 and 3.
"""
from typing import Any, Callable

import jax
import jax.numpy as jnp

from gralign_jax import configs


def chunked(x: jax.Array, num_chunks: int) -> jax.Array:
  """(B, ...) -> (N, B/N, ...): chunk c holds rows c, c + N, c + 2N, ... Each device's
  contiguous share of the batch then holds its own rows of every chunk (when N divides
  it), and the chunks are the same whatever the number of devices."""
  x = x.reshape(x.shape[0] // num_chunks, num_chunks, *x.shape[1:])
  return x.swapaxes(0, 1)


def unchunked(x: jax.Array) -> jax.Array:
  """chunked's inverse: (N, B/N, ...) -> (B, ...), in the batch's own order."""
  return x.swapaxes(0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:])


def check(batch_size: int, num_chunks: int, devices: int) -> None:
  """Raises ConfigError unless every device's share splits into `num_chunks` chunks."""
  if num_chunks < 1 or batch_size % (devices * num_chunks):
    raise configs.ConfigError(
        f"train.grad_cache_chunks={num_chunks}: expected a divisor of each device's "
        f"share of train.batch_size={batch_size} ({devices} device(s), "
        f"{batch_size // max(devices, 1)} rows each), 1 for no gradient caching.")


def _differentiable(x) -> bool:
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


def value_and_grad(encode: Callable[[Any, Any, jax.Array], Any],
                   loss_fn: Callable[[Any], tuple[jax.Array, dict]], params: Any,
                   inputs: Any, num_chunks: int):
  """The whole batch's ((loss, aux), grads) with one chunk's activations alive at a time.

  Args:
    encode: (params, chunk_inputs, chunk_index) -> outputs, a pytree of arrays whose
      leading axis is the chunk's rows (B/N); its random keys should fold in the index.
    loss_fn: outputs of the whole batch (leading axis B) -> (loss, aux).
    params: what the gradients are taken with respect to.
    inputs: a pytree of (B, ...) arrays.
    num_chunks: N; every device's share of B must split into N (check()).
  Returns:
    ((loss, aux), grads), as jax.value_and_grad(has_aux=True) of
    loss_fn(encode(params, inputs)) would give them, up to float rounding.
  """
  chunks = jax.tree.map(lambda x: chunked(x, num_chunks), inputs)
  index = jnp.arange(num_chunks)
  # 1. outputs of every chunk, no activations kept
  outputs = jax.lax.map(lambda args: encode(params, *args), (chunks, index))
  whole = jax.tree.map(unchunked, outputs)
  # 2. the loss over the whole batch, and its gradient w.r.t. the float outputs
  leaves, treedef = jax.tree.flatten(whole)
  floats = [i for i, x in enumerate(leaves) if _differentiable(x)]

  def loss_of(float_leaves):
    merged = list(leaves)
    for i, x in zip(floats, float_leaves):
      merged[i] = x
    return loss_fn(jax.tree.unflatten(treedef, merged))

  (loss, aux), output_grads = jax.value_and_grad(loss_of, has_aux=True)(
      [leaves[i] for i in floats])
  output_grads = [chunked(g, num_chunks) for g in output_grads]

  # 3. each chunk again, its output gradient pulled back to the parameters
  def pull_back(total, args):
    chunk, c, grads_c = args
    encode_floats = lambda p: [jax.tree.leaves(encode(p, chunk, c))[i] for i in floats]
    _, vjp = jax.vjp(encode_floats, params)
    (grad,) = vjp(grads_c)
    return jax.tree.map(jnp.add, total, grad), None

  zeros = jax.tree.map(jnp.zeros_like, params)
  grads, _ = jax.lax.scan(pull_back, zeros, (chunks, index, output_grads))
  return (loss, aux), grads


def fold_chunk(rngs: dict, chunk: jax.Array) -> dict:
  """A chunk's random keys: each stream folded with the chunk's index."""
  return {name: jax.random.fold_in(key, chunk) for name, key in rngs.items()}

