"""Optimiser: step-decay schedule, warm-up, backbone lr multiplier, clipping."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import common
from gralign_jax import configs
from gralign_jax import optim


def config(**train):
  c = configs.base_config()
  c.train.update(lr=1e-3, lr_decay_epochs=(2, 3), lr_decay_factor=0.5, warmup_steps=0,
                 weight_decay=0.0, grad_clip=1e9)
  c.train.update(train)
  return c


def test_schedule_decays_at_epoch_boundaries():
  lr = optim.schedule(config(), steps_per_epoch=10)
  assert [float(lr(s)) for s in (0, 19, 20, 29, 30, 100)] == pytest.approx(
      [1e-3, 1e-3, 5e-4, 5e-4, 2.5e-4, 2.5e-4])


def test_warmup_is_linear_then_joins_the_decay():
  lr = optim.schedule(config(warmup_steps=10), steps_per_epoch=10)
  assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(5e-4)
  assert float(lr(15)) == pytest.approx(1e-3) and float(lr(25)) == pytest.approx(5e-4)


def params():
  return {"vision": {"w": jnp.ones(3)}, "text": {"w": jnp.ones(2)},
          "img_proj": {"w": jnp.ones(4)}}


def test_backbones_get_their_own_learning_rate():
  assert optim.param_groups(params(), ("vision", "text")) == {
      "vision": {"w": "backbone"}, "text": {"w": "backbone"}, "img_proj": {"w": "head"}}
  p = params()
  grads = jax.tree.map(jnp.ones_like, p)
  steps = {}
  for mult in (0.0, 0.1, 1.0):
    tx = optim.make_optimizer(config(backbone_lr_mult=mult), steps_per_epoch=10)
    updates, _ = tx.update(grads, tx.init(p), p)
    steps[mult] = updates
  # Adam's first step moves every parameter by lr (x mult for backbones), against g.
  for mult, u in steps.items():
    np.testing.assert_allclose(u["vision"]["w"], -1e-3 * mult, rtol=1e-4)
    np.testing.assert_allclose(u["text"]["w"], -1e-3 * mult, rtol=1e-4)
    np.testing.assert_allclose(u["img_proj"]["w"], -1e-3, rtol=1e-4)


def test_gradients_are_clipped_by_global_norm():
  """A huge first gradient, clipped to norm 2, must not swamp Adam's second moment."""
  p = params()
  g1 = jax.tree.map(lambda x: 1e4 * jnp.ones_like(x), p)
  g2 = jax.tree.map(lambda x: 0.1 * jnp.ones_like(x), p)

  def two_steps(tx):
    state = tx.init(p)
    _, state = tx.update(g1, state, p)
    return tx.update(g2, state, p)[0]

  ours = two_steps(optim.make_optimizer(config(grad_clip=2.0, backbone_lr_mult=1.0),
                                       steps_per_epoch=10))
  adamw = optax.adamw(1e-3, weight_decay=0.0)
  clipped = two_steps(optax.chain(optax.clip_by_global_norm(2.0), adamw))
  unclipped = two_steps(adamw)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5), ours, clipped)
  assert not np.allclose(ours["img_proj"]["w"], unclipped["img_proj"]["w"], rtol=1e-2)


def test_only_backbones_that_load_weights_get_the_multiplier():
  """ViT / Swin / BERT learn at backbone_lr_mult x lr; the BUTD feature MLP and the
  BiGRU (which never load weights) at lr, like the heads."""
  assert optim.pretrained_parts(config()) == ("vision", "text")  # ViT + BERT
  c = config(backbone_lr_mult=0.1)
  c.model.text = configs.ml_collections.ConfigDict(common.bigru())
  assert optim.pretrained_parts(c) == ("vision",)
  c.model.vision = configs.ml_collections.ConfigDict(common.butd())
  assert optim.pretrained_parts(c) == ()
  p = params()
  assert optim.param_groups(p, ("vision",)) == {
      "vision": {"w": "backbone"}, "text": {"w": "head"}, "img_proj": {"w": "head"}}
  c = config(backbone_lr_mult=0.1)
  c.model.vision = configs.ml_collections.ConfigDict(common.butd())
  tx = optim.make_optimizer(c, steps_per_epoch=10)
  u, _ = tx.update(jax.tree.map(jnp.ones_like, p), tx.init(p), p)
  np.testing.assert_allclose(u["vision"]["w"], -1e-3, rtol=1e-4)   # BUTD MLP: lr
  np.testing.assert_allclose(u["text"]["w"], -1e-4, rtol=1e-4)     # BERT: 0.1 x lr
