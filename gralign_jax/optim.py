"""AdamW with gradient clipping, a step-decay schedule and a backbone lr multiplier.

Parameters under the top-level names in BACKBONES (the pretrained encoders) learn at
`train.backbone_lr_mult` x lr; everything else (projections, adapters, prompts) at lr.
"""
import jax
import jax.numpy as jnp
import ml_collections
import optax

BACKBONES = ("vision", "text")


def schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """lr x decay_factor at each epoch in train.lr_decay_epochs, optional linear warm-up."""
  t = config.train
  boundaries = {int(round(e * steps_per_epoch)): t.lr_decay_factor
                for e in t.lr_decay_epochs}
  decay = optax.piecewise_constant_schedule(t.lr, {k: v for k, v in boundaries.items()
                                                   if k > 0})
  if t.warmup_steps <= 0:
    return decay
  # A multiplier, not optax.join_schedules: that would restart the decay's step count
  # at the end of the warm-up and shift every decay epoch by warmup_steps.
  return lambda step: decay(step) * jnp.minimum(1.0, step / t.warmup_steps)

def param_groups(params) -> dict:
  """Top-level name -> 'backbone' or 'head', the labels multi_transform needs."""
  return {k: jax.tree.map(lambda _: "backbone" if k in BACKBONES else "head", v)
          for k, v in params.items()}


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  t = config.train
  lr = schedule(config, steps_per_epoch)
  adamw = lambda mult: optax.adamw(lambda s: lr(s) * mult, weight_decay=t.weight_decay)
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.multi_transform({"head": adamw(1.0), "backbone": adamw(t.backbone_lr_mult)},
                            param_groups))
