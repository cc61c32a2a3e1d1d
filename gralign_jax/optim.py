"""AdamW with gradient clipping, a step-decay schedule and a backbone lr multiplier.

The multiplier belongs to the backbones made to start from pretrained weights: a
top-level "vision" or "text" backbone of a kind that loads Hugging Face checkpoints
(backbones.loads_pretrained: ViT, Swin, BERT) learns at `train.backbone_lr_mult` x lr.
Everything trained from scratch learns at lr: projections, adapters, prompts, and
the backbones that never load weights (the BUTD feature MLP, the BiGRU with its word
embeddings), as VSE-infinity trains them at full rate.

The groups follow the backbone's kind, not whether `weights` is set, so a run's
optimiser state has one layout whether it starts from a checkpoint or from random
init (smoke runs, the demo, which sets backbone_lr_mult = 1.0, and the run
directories written before this rule, whose ViT and BERT were in the backbone group).
"""
import functools
from typing import Iterable

import jax
import jax.numpy as jnp
import ml_collections
import optax

from gralign_jax.models import backbones

PARTS = ("vision", "text")


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


def pretrained_parts(config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The top-level parameter names that learn at backbone_lr_mult x lr: the backbones
  among PARTS of a kind that loads pretrained checkpoints."""
  return tuple(p for p in PARTS if backbones.loads_pretrained(config.model, p))


def param_groups(params, pretrained: Iterable[str]) -> dict:
  """Top-level name -> 'backbone' (a part in `pretrained`) or 'head' for every leaf:
  the labels multi_transform needs."""
  pretrained = frozenset(pretrained)
  return {k: jax.tree.map(lambda _, k=k: "backbone" if k in pretrained else "head", v)
          for k, v in params.items()}


def make_optimizer(config: ml_collections.ConfigDict,
                   steps_per_epoch: int) -> optax.GradientTransformation:
  t = config.train
  lr = schedule(config, steps_per_epoch)
  adamw = lambda mult: optax.adamw(lambda s: lr(s) * mult, weight_decay=t.weight_decay)
  return optax.chain(
      optax.clip_by_global_norm(t.grad_clip),
      optax.multi_transform({"head": adamw(1.0), "backbone": adamw(t.backbone_lr_mult)},
                            functools.partial(param_groups,
                                              pretrained=pretrained_parts(config))))
