"""Gradient caching (issue 23): the whole batch's loss and gradients from chunks."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax import grad_cache
from gralign_jax import losses
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.models import grm
from gralign_jax.scores import similarity

BATCH = 16


def test_chunks_are_strided_and_unchunked_exactly():
  x = np.arange(24 * 3).reshape(24, 3)
  for n in (1, 2, 3, 4, 8):
    chunks = np.asarray(grad_cache.chunked(jnp.asarray(x), n))
    assert chunks.shape == (n, 24 // n, 3)
    for c in range(n):
      np.testing.assert_array_equal(chunks[c], x[c::n])
    np.testing.assert_array_equal(grad_cache.unchunked(jnp.asarray(chunks)), x)


def test_chunk_counts_that_do_not_split_every_device_share_are_refused():
  grad_cache.check(128, 4, 8)
  with pytest.raises(configs.ConfigError, match=r"grad_cache_chunks=3: expected a divisor "
                     r"of each device's share of train.batch_size=128 \(8 device"):
    grad_cache.check(128, 3, 8)
  with pytest.raises(configs.ConfigError, match="grad_cache_chunks=32"):
    grad_cache.check(128, 32, 8)  # 16 rows per device
  config = demo.get_config("smoke")
  config.train.grad_cache_chunks = 5
  with pytest.raises(configs.ConfigError, match=r"train.grad_cache_chunks=5: expected a "
                     r"whole number >= 1 that divides train.batch_size="):
    configs.validate(config)


@pytest.fixture(scope="module")
def setting(smoke_root):
  """The smoke model, its params and one batch of BATCH pairs."""
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  config.train.batch_size = BATCH
  tokenizer = datasets.load_tokenizer(config)
  configs.finalize(config, vocab_size=len(tokenizer))
  split = datasets.read_split(config, "train")
  caps = pipeline.encode_captions(split.captions, tokenizer, config.data.max_len)
  batch = next(pipeline.train_iterator(split, caps, config, seed=0))
  batch.pop("bad_images", None)
  model = grm.build_model(config.model)
  params = jax.jit(train_state.init_params(model, config))(jax.random.PRNGKey(3))
  return config, model, params, batch


def _encoder(model, config, batch, train_mode):
  pixels = images_lib.model_input(jnp.asarray(batch["image"]), config.data.pixel_mean,
                                  config.data.pixel_std)
  inputs = {"pixels": pixels, "ids": jnp.asarray(batch["ids"]),
            "mask": jnp.asarray(batch["mask"])}
  rngs = dict(zip(("gumbel", "sample", "dropout"),
                  jax.random.split(jax.random.PRNGKey(7), 3)))

  def encode(params, x, chunk=None):
    keys = rngs if chunk is None else grad_cache.fold_chunk(rngs, chunk)
    return model.apply({"params": params}, x["pixels"], x["ids"], x["mask"],
                       train=train_mode, gumbel_tau=1.0, rngs=keys)
  return encode, inputs


def _loss(config, batch, kind, hardest):
  loss_config = config.loss.copy_and_resolve_references()
  loss_config.kind = kind
  image_ids = jnp.asarray(batch["image_id"])

  def loss_of(outputs):
    img, txt = outputs
    scores = similarity.pair_scores(img, txt, config.model)
    return losses.grm_loss(scores, img, image_ids, loss_config, hardest=jnp.bool_(hardest),
                           txt=txt)
  return loss_of


def _reference(encode, loss_of, inputs, n=4):
  """jax.value_and_grad, as one graph, of the loss over the whole batch encoded chunk by
  chunk (rows c, c + n, ...): what gradient caching must equal. The encoders see the
  chunks' shapes, as in gradient caching, because a one-batch encode rounds differently
  (other matmul blocking) and the max-pooled scores route gradients through an argmax
  that such rounding can flip: measured on an AMD EPYC host, the summed triplet's
  gradients then differed by 1.5e-4 relative, InfoNCE's by 4e-5; the hardest triplet's
  by 6e-7."""
  def whole(p):
    parts = [encode(p, jax.tree.map(lambda x, c=c: x[c::n], inputs), c) for c in range(n)]
    outputs = jax.tree.map(lambda *xs: jnp.stack(xs), *parts)
    return loss_of(jax.tree.map(grad_cache.unchunked, outputs))
  return jax.jit(jax.value_and_grad(whole, has_aux=True))


def _close(got, want, what):
  (loss, aux), grads = got
  (loss_ref, aux_ref), grads_ref = want
  np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-6, err_msg=what)
  for key in aux_ref:
    np.testing.assert_allclose(aux[key], aux_ref[key], rtol=1e-5, atol=1e-6,
                               err_msg=f"{what}: aux {key}")
  scale = max(float(jnp.max(jnp.abs(g))) for g in jax.tree.leaves(grads_ref))
  for (path, g), g_ref in zip(jax.tree_util.tree_flatten_with_path(grads)[0],
                              jax.tree.leaves(grads_ref)):
    np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5 * scale,
                               err_msg=f"{what}: grad {jax.tree_util.keystr(path)}")


@pytest.mark.parametrize("kind, hardest", [("triplet", True), ("triplet", False),
                                           ("infonce", False)])
def test_chunked_gradients_equal_the_whole_batch(setting, kind, hardest):
  """Deterministic encoders (no random draws): 4 chunks == jax.grad of the whole batch's
  loss in one graph (_reference), for each loss."""
  config, model, params, batch = setting
  loss_of = _loss(config, batch, kind, hardest)
  encode, inputs = _encoder(model, config, batch, train_mode=False)
  want = _reference(lambda q, x, c: encode(q, x), loss_of, inputs)(params)
  got = jax.jit(lambda p: grad_cache.value_and_grad(
      lambda q, x, c: encode(q, x), loss_of, p, inputs, 4))(params)
  _close(got, want, f"{kind} hardest={hardest}")


def test_chunked_gradients_with_the_training_draws(setting):
  """Gumbel gates, region samples, dropout: each chunk's draws from its own folded keys,
  the same when it is encoded again; == those draws differentiated as one graph."""
  config, model, params, batch = setting
  loss_of = _loss(config, batch, "triplet", True)
  encode, inputs = _encoder(model, config, batch, train_mode=True)
  want = _reference(encode, loss_of, inputs)(params)
  got = jax.jit(lambda p: grad_cache.value_and_grad(encode, loss_of, p, inputs, 4))(params)
  _close(got, want, "training draws")


def _steps_on_one_device_and_eight(setting, batch, steps=2, **loss_changes):
  """The cached train step (2 chunks) `steps` times on 1 and on 8 devices -> the two
  (params, aux)."""
  config, model, _, _ = setting
  config = config.copy_and_resolve_references()
  config.train.grad_cache_chunks = 2
  config.loss.update(loss_changes)
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  objective = losses.Objective.from_config(config, steps_per_epoch=1)
  out = []
  for n in (1, 8):
    mesh = sharding.make_mesh(jax.devices()[:n])
    state = train_state.create_state(model, tx, config, mesh, log=lambda *a: None)
    step = train.make_train_step(model, tx, config, mesh, objective)
    for _ in range(steps):
      state, aux = step(state, sharding.global_batch(batch, mesh))
    out.append(jax.device_get((state["params"], aux)))
  (params_1, aux_1), (params_8, aux_8) = out
  np.testing.assert_allclose(aux_1["loss"], aux_8["loss"], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               params_1, params_8)
  return aux_1, aux_8


def test_a_cached_train_step_is_the_same_on_one_device_and_eight(setting):
  """Strided chunks are the same rows whatever the number of devices."""
  _steps_on_one_device_and_eight(setting, setting[3])


@pytest.fixture(scope="module")
def false_batch(setting, smoke_root):
  """setting's batch with loss.hard_negatives' keys: each row's caption made false in
  two ways (loss.hard_negatives_per_caption=2)."""
  from gralign_jax.data import false_captions  # pylint: disable=g-import-not-at-top
  config, _, _, _ = setting
  tokenizer = datasets.load_tokenizer(config)
  split = datasets.read_split(config, "train")
  made, info = false_captions.build(config, split, seed=0)
  false = pipeline.encode_false_captions(made, split.num_captions, info["kinds"],
                                         tokenizer, config.data.max_len, per_caption=2)
  caps = pipeline.encode_captions(split.captions, tokenizer, config.data.max_len)
  batch = next(pipeline.train_iterator(split, caps, config, seed=0, false=false))
  batch.pop("bad_images", None)
  assert batch["false_valid"][:, 1].any()
  return batch


def test_chunked_gradients_with_false_captions_equal_the_whole_batch(setting,
                                                                      false_batch):
  """The false captions are a third encoder output: chunked like the rest, their scores
  with their own image (similarity.own_captions_scores) join the loss over the whole
  batch."""
  config, model, params, _ = setting
  batch = false_batch
  encode2, inputs = _encoder(model, config, batch, train_mode=False)
  inputs.update(false_ids=jnp.asarray(batch["false_ids"]),
                false_mask=jnp.asarray(batch["false_mask"]))

  def encode(p, x, chunk=None):
    b, n, length = x["false_ids"].shape
    false = model.apply({"params": p}, x["false_ids"].reshape(b * n, length),
                        x["false_mask"].reshape(b * n, length), train=False,
                        gumbel_tau=1.0, method=grm.GRM.encode_text)
    return encode2(p, x, chunk) + (jax.tree.map(
        lambda v: v.reshape(b, n, *v.shape[1:]), false),)

  loss_config = config.loss.copy_and_resolve_references()
  valid = jnp.asarray(batch["false_valid"])

  def loss_of(outputs):
    img, txt, false = outputs
    return losses.grm_loss(
        similarity.pair_scores(img, txt, config.model), img,
        jnp.asarray(batch["image_id"]), loss_config, hardest=jnp.bool_(True), txt=txt,
        false_scores=similarity.own_captions_scores(img, false, config.model),
        false_valid=valid)

  want = _reference(lambda q, x, c: encode(q, x), loss_of, inputs)(params)
  got = jax.jit(lambda p: grad_cache.value_and_grad(
      lambda q, x, c: encode(q, x), loss_of, p, inputs, 4))(params)
  assert 0 <= float(want[0][1]["false_win"]) <= 1
  _close(got, want, "false captions")


def test_a_train_step_with_false_captions_is_the_same_on_one_device_and_eight(
    setting, false_batch):
  """make_train_step with loss.hard_negatives' batch keys, gradient caching on."""
  aux_1, aux_8 = _steps_on_one_device_and_eight(setting, false_batch, steps=1,
                                                hard_negatives="all")
  assert aux_1["false_win"] == aux_8["false_win"]
