"""DINOv2 backbone: parity with transformers' PyTorch Dinov2Model, its position-grid
resize, and a GRM config with model.vision.name="dinov2".

A small random Dinov2Model (patch 14, a 12 x 12 position grid) is written with
save_pretrained and read back by backbones.from_pretrained at run sizes that resize
its grid up (224 px: 16 x 16), down (112 px: 8 x 8) or not at all (168 px); its last
hidden state must match transformers' within 1e-4 (float32).
"""
import jax
import ml_collections
import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gralign_jax import configs  # pylint: disable=g-import-not-at-top
from gralign_jax.models import backbones  # pylint: disable=g-import-not-at-top
from gralign_jax.models import dinov2  # pylint: disable=g-import-not-at-top
from gralign_jax.models import grm  # pylint: disable=g-import-not-at-top

TOL = 1e-4
HF_SIZE = 168   # 12 x 12 patches of 14 px


def _config(**kw):
  base = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
              image_size=HF_SIZE, patch_size=14)
  base.update(kw)
  return transformers.Dinov2Config(**base)


def _randomised(model, seed=0):
  """Random LayerNorm, layer-scale and bias values too (init gives ones and zeros),
  so that a tensor mapped to the wrong place shows."""
  torch.manual_seed(seed)
  with torch.no_grad():
    for name, p in model.named_parameters():
      if "lambda1" in name or "norm" in name and name.endswith("weight"):
        p.normal_(1.0, 0.3)
      elif name.endswith("bias"):
        p.normal_(0.0, 0.1)
  return model.eval()


def _reference(model, pixels):
  with torch.no_grad():
    out = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
  return out.last_hidden_state.numpy()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """(folder written by save_pretrained, the torch Dinov2Model)."""
  torch.manual_seed(0)
  model = _randomised(transformers.Dinov2Model(_config()))
  folder = tmp_path_factory.mktemp("dinov2")
  model.save_pretrained(str(folder))
  return folder, model


@pytest.mark.parametrize("image_size", [224, 112, HF_SIZE])
def test_dinov2_matches_transformers_at_each_run_size(checkpoint, image_size):
  folder, model = checkpoint
  pixels = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype(
      np.float32)
  module, params = backbones.from_pretrained(str(folder), image_size=image_size)
  grid = image_size // 14
  assert isinstance(module, dinov2.Dinov2) and module.ln_eps == 1e-6
  assert params["pos_embedding"].shape == (1, 1 + grid * grid, 64)
  got = np.asarray(module.apply({"params": params}, pixels))
  want = _reference(model, pixels)
  assert got.shape == want.shape == (2, 1 + grid * grid, 64)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_classifier_checkpoint_loads_its_dinov2_part(tmp_path):
  """Dinov2ForImageClassification nests the backbone under "dinov2."; the head is
  left out."""
  torch.manual_seed(1)
  model = _randomised(transformers.Dinov2ForImageClassification(_config(num_labels=3)))
  model.save_pretrained(str(tmp_path))
  pixels = np.random.default_rng(1).normal(size=(1, 112, 112, 3)).astype(np.float32)
  module, params = backbones.from_pretrained(str(tmp_path), image_size=112)
  np.testing.assert_allclose(module.apply({"params": params}, pixels),
                             _reference(model.dinov2, pixels), atol=TOL, rtol=0)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("n_out", [16, 8, 37, 40])
def test_bicubic_matrix_matches_torch_interpolate(antialias, n_out):
  grid = torch.tensor(np.random.default_rng(2).normal(size=(1, 3, 37, 37)))
  want = torch.nn.functional.interpolate(grid, size=(n_out, n_out), mode="bicubic",
                                         align_corners=False, antialias=antialias)
  m = dinov2.bicubic_matrix(37, n_out, antialias)
  got = np.einsum("Hh,bchw,Ww->bcHW", m, grid.numpy(), m)
  np.testing.assert_allclose(got, want.numpy(), atol=1e-10)
  if n_out < 37:   # the two rules differ when shrinking: antialias must not be mixed up
    other = dinov2.bicubic_matrix(37, n_out, not antialias)
    assert np.abs(np.einsum("Hh,bchw,Ww->bcHW", other, grid.numpy(), other)
                  - want.numpy()).max() > 1e-3


def test_interpolate_positions_keeps_cls_and_resizes_the_grid():
  x = np.random.default_rng(3).normal(size=(1, 1 + 37 * 37, 5)).astype(np.float32)
  got = dinov2.interpolate_positions(x, (1, 1 + 16 * 16, 5))
  grid = torch.tensor(x[:, 1:].reshape(1, 37, 37, 5)).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(16, 16), mode="bicubic",
                                         align_corners=False, antialias=dinov2.ANTIALIAS)
  np.testing.assert_allclose(got[0, 1:], want.permute(0, 2, 3, 1).reshape(-1, 5).numpy(),
                             atol=1e-5)
  np.testing.assert_array_equal(got[:, :1], x[:, :1])
  assert dinov2.interpolate_positions(x, x.shape) is x


@pytest.mark.parametrize("change, message", [
    (dict(use_swiglu_ffn=True), "use_swiglu_ffn=True"),
    (dict(hidden_act="silu"), "hidden_act 'silu'"),
    (dict(qkv_bias=False), "qkv_bias=False"),
])
def test_unsupported_variants_are_refused(change, message):
  hf = _config(**change).to_dict()
  with pytest.raises(ValueError, match=message):
    dinov2.Dinov2.from_hf_config(hf)


def _grm_config(image_size, weights=""):
  config = configs.base_config()
  config.model.vision = ml_collections.ConfigDict(dict(
      name="dinov2", image_size=image_size, patch_size=14, width=64, depth=2,
      num_heads=4, mlp_dim=256, dropout=0.0, remat=False, weights=weights))
  return config


def test_grm_config_with_a_dinov2_backbone_builds_and_loads_its_weights(checkpoint):
  folder, _ = checkpoint
  config = configs.finalize(_grm_config(28, str(folder)), vocab_size=100)
  assert config.data.image_size == 28
  assert backbones.loads_pretrained(config.model, "vision")
  model = grm.build_model(config.model)
  inputs = grm.example_inputs(config.model, config.data.max_len)
  params = model.init(jax.random.key(0), *inputs)["params"]
  params = grm.load_pretrained(params, config.model, log=lambda *_: None)
  _, want = backbones.from_pretrained(str(folder), image_size=28)
  jax.tree.map(np.testing.assert_array_equal, params["vision"], want)
  img, _ = model.apply({"params": params}, *inputs)
  assert img["tokens"].shape[:2] == (1, 1 + 2 * 2)
  assert np.isfinite(np.asarray(img["tokens"])).all()
  with pytest.raises(configs.ConfigError, match="multiple of model.vision.patch_size=14"):
    configs.finalize(_grm_config(30), vocab_size=100)
