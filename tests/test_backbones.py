"""The backbones of the paper's grid: BiGRU and BUTD inputs, remat, and every grid
config running a training step (smoke size) and a real-size forward pass (slow)."""
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.configs import common
from gralign_jax import configs
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.models import bert
from gralign_jax.models import backbones
from gralign_jax.models import bigru
from gralign_jax.models import grm
from gralign_jax.models import region_features
from gralign_jax.models import vit


def test_bigru_matches_torch_gru_over_packed_sequences():
  """Same weights as torch.nn.GRU(bidirectional) run on pack_padded_sequence."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  vocab, word, hidden = 50, 6, 5
  emb = torch.nn.Embedding(vocab, word)
  gru = torch.nn.GRU(word, hidden, batch_first=True, bidirectional=True)
  ids = np.random.default_rng(0).integers(1, vocab, (3, 7)).astype(np.int32)
  lengths = np.array([7, 4, 1])
  mask = np.arange(7)[None] < lengths[:, None]
  with torch.no_grad():
    packed = torch.nn.utils.rnn.pack_padded_sequence(
        emb(torch.tensor(ids, dtype=torch.long)), torch.tensor(lengths),
        batch_first=True, enforce_sorted=False)
    out, _ = gru(packed)
    out, _ = torch.nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=7)
    want = ((out[..., :hidden] + out[..., hidden:]) / 2).numpy()

  def cell(suffix):
    w_ih, w_hh = (getattr(gru, f"weight_{k}_l0{suffix}").detach().numpy() for k in ("ih", "hh"))
    b_ih, b_hh = (getattr(gru, f"bias_{k}_l0{suffix}").detach().numpy() for k in ("ih", "hh"))
    p = {}
    for g, gate in enumerate("rzn"):
      rows = slice(g * hidden, (g + 1) * hidden)
      # torch adds both biases for r and z; n keeps b_hn inside the reset product.
      b_in = b_ih[rows] + (b_hh[rows] if gate != "n" else 0)
      p[f"i{gate}"] = {"kernel": w_ih[rows].T, "bias": b_in}
      p[f"h{gate}"] = {"kernel": w_hh[rows].T}
    p["hn"]["bias"] = b_hh[2 * hidden:]
    return {"cell": p}

  module = bigru.BiGRU(vocab_size=vocab, max_len=7, word_dim=word, width=hidden)
  params = {"word_embeddings": {"embedding": emb.weight.detach().numpy()},
            "forward_0": cell(""), "backward_0": cell("_reverse")}
  got = np.asarray(module.apply({"params": params}, ids, mask))
  shapes = jax.tree.map(np.shape, module.init(jax.random.key(0), ids, mask)["params"])
  assert shapes == jax.tree.map(np.shape, params)
  np.testing.assert_allclose(got[mask], want[mask], atol=1e-5)
  np.testing.assert_array_equal(got[~mask], 0)


def test_region_features_map_each_region_and_check_the_feature_size():
  module = region_features.RegionFeatures(feature_dim=10, width=8)
  x = np.random.default_rng(0).normal(size=(2, 3, 10)).astype(np.float32)
  params = module.init(jax.random.key(0), x)["params"]
  y = module.apply({"params": params}, x)
  assert y.shape == (2, 3, 8)
  # Each region is mapped on its own: permuting regions permutes the tokens.
  np.testing.assert_allclose(module.apply({"params": params}, x[:, ::-1]), y[:, ::-1],
                             atol=1e-6)
  with pytest.raises(ValueError, match=r"\(batch, regions, 10\).*got \(2, 3, 9\)"):
    module.apply({"params": params}, x[..., :9])


@pytest.mark.parametrize("name", ["vit", "bert"])
def test_remat_gives_the_same_outputs_and_gradients(name):
  if name == "vit":
    make = lambda remat: vit.ViT(image_size=16, patch_size=8, width=16, depth=2,
                                 num_heads=2, mlp_dim=32, remat=remat)
    inputs = (np.random.default_rng(0).normal(size=(2, 16, 16, 3)).astype(np.float32),)
  else:
    make = lambda remat: bert.Bert(vocab_size=30, max_len=8, width=16, depth=2,
                                   num_heads=2, mlp_dim=32, remat=remat)
    inputs = (np.arange(16, dtype=np.int32).reshape(2, 8) % 30,
              np.arange(8)[None] < np.array([[8], [5]]))
  params = make(False).init(jax.random.key(0), *inputs)["params"]
  outs = []
  for remat in (False, True):
    loss = lambda p, m=make(remat): jnp.sum(jnp.sin(m.apply({"params": p}, *inputs)))
    outs.append(jax.value_and_grad(loss)(params))
  np.testing.assert_allclose(outs[0][0], outs[1][0], rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               outs[0][1], outs[1][1])


@pytest.mark.parametrize("backbone", common.BACKBONES)
def test_coco_and_flickr30k_configs_differ_only_in_data_and_protocol(backbone):
  """So the training step below, run on the Flickr30K form, covers the COCO one too."""
  for arg in (backbone, f"{backbone},smoke"):
    f30k, coco = (common.paper_config(d, arg) for d in ("flickr30k", "coco"))
    assert f30k.model.to_dict() == coco.model.to_dict()
    assert f30k.train.to_dict() == coco.train.to_dict()
    assert (f30k.eval.protocol, coco.eval.protocol) == ("1k", "coco")


def _random_batch(config, image_input, batch_size):
  rng = np.random.default_rng(0)
  if image_input.ndim == 4:   # pixels, as the pipeline hands them over
    image = rng.integers(0, 256, (batch_size,) + image_input.shape[1:], dtype=np.uint8)
  else:                       # precomputed region features
    image = rng.normal(size=(batch_size,) + image_input.shape[1:]).astype(np.float32)
  L = config.data.max_len
  return {"image": image, "ids": rng.integers(1, 100, (batch_size, L)).astype(np.int32),
          "mask": np.arange(L)[None] < rng.integers(3, L + 1, (batch_size, 1)),
          "image_id": np.arange(batch_size, dtype=np.int32)}


@pytest.mark.parametrize("backbone", common.BACKBONES)
def test_every_grid_config_runs_a_training_step_at_smoke_size(backbone):
  dataset = "flickr30k"
  config = common.paper_config(dataset, f"{backbone},smoke")
  assert config.model.vision.weights == "" and config.model.text.weights == ""
  full = common.paper_config(dataset, backbone)
  assert full.model.num_regions == (50 if backbone.startswith("swin") else 5)
  assert (full.train.batch_size, full.train.num_epochs, full.train.backbone_lr_mult) == (
      128, 30.0, 0.1)
  configs.finalize(config, vocab_size=100)
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train_state.create_state(model, tx, config, mesh, log=lambda *_: None)
  before = jax.device_get(state["params"])
  image_input = grm.example_inputs(config.model, config.data.max_len)[0]
  batch = _random_batch(config, image_input, config.train.batch_size)
  step = train.make_train_step(model, tx, config, mesh)
  state, aux = step(state, sharding.global_batch(batch, mesh))
  assert np.isfinite(float(aux["loss"])) and float(aux["loss"]) > 0
  after = jax.device_get(state["params"])
  for part in ("vision", "text", "img_proj"):
    moved = jax.tree.leaves(jax.tree.map(lambda a, b: np.abs(a - b).max(),
                                         before[part], after[part]))
    assert max(moved) > 0, f"{part} did not train"


# ---------------------------------------------------------------------------
# Real sizes (slow): the paper's backbone shapes take the real checkpoint layout.
# ---------------------------------------------------------------------------
def _hf_model(backbone):
  transformers = pytest.importorskip("transformers")
  if backbone.startswith("vit"):
    size = int(backbone[3:])
    return transformers.ViTModel(transformers.ViTConfig(image_size=size))
  if backbone.startswith("swin"):
    size = int(backbone[4:])
    return transformers.SwinModel(transformers.SwinConfig(
        image_size=size, embed_dim=128, depths=[2, 2, 18, 2], num_heads=[4, 8, 16, 32],
        window_size=12 if size == 384 else 7))
  return transformers.BertModel(transformers.BertConfig())


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["vit224", "vit384", "swin224", "swin384", "bert"])
def test_real_size_backbone_loads_the_hf_layout_and_matches_it(backbone, tmp_path):
  """Random-init transformers models of the real configs, saved and loaded through the
  paper config's own backbone: shapes fit, and one forward pass agrees."""
  torch = pytest.importorskip("torch")
  torch.manual_seed(0)
  hf = _hf_model(backbone).eval()
  hf.save_pretrained(str(tmp_path))
  config = common.paper_config("coco", "vit224" if backbone == "bert" else backbone)
  part = "text" if backbone == "bert" else "vision"
  config.model.vision.weights = config.model.text.weights = ""
  config.model[part].weights = str(tmp_path)
  configs.finalize(config, vocab_size=30522)
  module = backbones.build(config.model, part)
  params = grm.load_pretrained({}, config.model.lock(), log=lambda *_: None)[part]
  n_ours = sum(x.size for x in jax.tree.leaves(params))
  n_hf = sum(p.numel() for n, p in hf.named_parameters() if not n.startswith("pooler"))
  if part == "text":  # our position table keeps the first max_len of HF's 512 rows
    n_hf -= (512 - config.model.text.max_len) * 768
  assert n_ours == n_hf
  rng = np.random.default_rng(0)
  if part == "text":
    inputs = (rng.integers(1, 30522, (1, 90)).astype(np.int32), np.ones((1, 90), bool))
    with torch.no_grad():
      want = hf(input_ids=torch.tensor(inputs[0], dtype=torch.long)).last_hidden_state
  else:
    size = config.model.vision.image_size
    inputs = (rng.normal(size=(1, size, size, 3)).astype(np.float32),)
    with torch.no_grad():
      want = hf(pixel_values=torch.tensor(inputs[0].transpose(0, 3, 1, 2))).last_hidden_state
  got = module.apply({"params": params}, *inputs)
  assert got.shape == tuple(want.shape)
  np.testing.assert_allclose(np.asarray(got), want.numpy(), atol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["butd_bigru"])
def test_real_size_detector_baseline_forward(backbone):
  config = common.paper_config("flickr30k", backbone)
  configs.finalize(config, vocab_size=30522)
  model = grm.build_model(config.model)
  inputs = grm.example_inputs(config.model, config.data.max_len)
  variables = jax.jit(model.init)(jax.random.key(0), *inputs)
  img, txt = jax.jit(model.apply)(variables, *inputs)
  assert img["tokens"].shape == (1, 36, config.model.embed_dim)
  assert txt["tokens"].shape == (1, 90, config.model.embed_dim)
  assert flax.traverse_util.flatten_dict(variables["params"]["text"])[
      ("forward_0", "cell", "ir", "kernel")].shape == (300, 1024)
