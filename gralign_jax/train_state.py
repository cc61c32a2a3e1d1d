"""The train state and its shapes, apart from the trainer: training builds it, every
reader of a checkpoint (inference/, export_check) restores onto its shapes.

  state = create_state(model, tx, config, mesh)      # arrays, replicated over the mesh
  like = abstract_state(model, tx, config, mesh)     # its shapes (a restore target)
  params = abstract_params(model, config, mesh)      # the parameters' shapes alone

The state is a plain pytree: {params, opt_state, step: int32 (), rng: the run's base key
(folded with the step)}.
"""
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import logs
from gralign_jax import sharding
from gralign_jax.models import grm


def init_params(model, config: ml_collections.ConfigDict):
  """-> rng -> freshly initialised params (random backbones)."""
  inputs = grm.example_inputs(config.model, config.data.max_len)
  return lambda rng: model.init({"params": rng, "gumbel": rng, "sample": rng,
                                 "dropout": rng}, *inputs, train=False)["params"]


def _state(params, tx, rng) -> dict:
  return {"params": params, "opt_state": tx.init(params),
          "step": jnp.zeros((), jnp.int32), "rng": jax.random.fold_in(rng, 1)}


def create_state(model, tx, config: ml_collections.ConfigDict, mesh,
                 log: logs.Log = logs.info) -> dict:
  """The train state, replicated over the mesh. Backbones whose config names `weights`
  start from that checkpoint."""
  rng = jax.random.PRNGKey(config.seed)
  params = jax.jit(init_params(model, config))(rng)
  params = grm.load_pretrained(params, config.model, log)
  return jax.jit(lambda p: _state(p, tx, rng),
                 out_shardings=sharding.replicated(mesh))(params)


def _shapes(init, config, mesh):
  rep = sharding.replicated(mesh)
  return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=rep),
                      jax.eval_shape(init, jax.random.PRNGKey(config.seed)))


def abstract_state(model, tx, config: ml_collections.ConfigDict, mesh) -> dict:
  """create_state's shapes, dtypes and shardings, computed without any arrays."""
  return _shapes(lambda rng: _state(init_params(model, config)(rng), tx, rng),
                 config, mesh)


def abstract_params(model, config: ml_collections.ConfigDict, mesh) -> dict:
  """The parameters' shapes, dtypes and shardings alone: what a trained model is
  restored onto without an optimiser (checkpoint.Checkpointer.restore_params)."""
  return _shapes(init_params(model, config), config, mesh)
