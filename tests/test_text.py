"""Tests of WordPiece training, tokenizer loading and padding to arrays."""
import json
import os

import numpy as np
import pytest
import transformers

from gralign_jax.data import text

CAPTIONS = [
    "a large red circle and a small blue square",
    "there is a green triangle",
    "a red circle to the left of a blue star",
    "two shapes: a big yellow hexagon and a little pink ring",
    "a photo of a purple diamond above an orange cross",
] * 10


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
  d = str(tmp_path_factory.mktemp("tok"))
  text.train_wordpiece(CAPTIONS, d, vocab_size=1000)
  return d


@pytest.fixture(scope="module")
def tok(tok_dir):
  return text.load_tokenizer(tok_dir)


def test_files_and_special_ids(tok_dir, tok):
  for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
    assert os.path.isfile(os.path.join(tok_dir, f)), f
  assert tok.pad_token_id == 0
  assert [tok.convert_tokens_to_ids(t) for t in text.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]


def test_autotokenizer_loads_trained_vocab(tok_dir):
  with open(os.path.join(tok_dir, "vocab.txt"), encoding="utf-8") as f:
    trained = {t: i for i, t in enumerate(f.read().splitlines())}
  with open(os.path.join(tok_dir, "tokenizer.json"), encoding="utf-8") as f:
    assert json.load(f)["model"]["vocab"] == trained
  loaded = transformers.AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
  # Not BERT's 30522-token vocabulary nor a 5-token stub: the one trained here.
  assert loaded.get_vocab() == trained
  assert "hexagon" in trained and len(trained) < 200


def test_deterministic(tmp_path, tok_dir):
  text.train_wordpiece(CAPTIONS, str(tmp_path), vocab_size=1000)
  for f in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
    with open(os.path.join(tok_dir, f), "rb") as a, open(tmp_path / f, "rb") as b:
      assert a.read() == b.read(), f


def test_small_budget_uses_word_pieces(tmp_path):
  text.train_wordpiece(CAPTIONS, str(tmp_path), vocab_size=70)
  t = text.load_tokenizer(str(tmp_path))
  assert len(t.get_vocab()) <= 70
  ids = t("a large red hexagon")["input_ids"]
  assert t.decode(ids, skip_special_tokens=True) == "a large red hexagon"


def test_round_trip(tok):
  cap = "A Large RED circle to the left of a small blue square"
  ids, mask, trunc = text.tokenize(tok, [cap], 32)
  assert ids[0, 0] == tok.cls_token_id
  n = int(mask[0].sum())
  assert ids[0, n - 1] == tok.sep_token_id
  assert tok.decode(ids[0, :n], skip_special_tokens=True) == cap.lower()
  assert tok.convert_ids_to_tokens(ids[0, 1:4].tolist()) == ["a", "large", "red"]
  assert not trunc[0]
  # An unseen word falls back to characters, not [UNK].
  assert tok.unk_token_id not in tok("magenta")["input_ids"]


def test_padding_and_mask(tok):
  caps = ["a red circle", "there is a green triangle", "a big pink ring above a star"]
  ids, mask, trunc = text.tokenize(tok, caps, 12)
  assert ids.dtype == np.int32 and ids.shape == (3, 12)
  assert mask.dtype == bool and trunc.dtype == bool and trunc.shape == (3,)
  assert (ids[~mask] == tok.pad_token_id).all()
  assert (ids[mask] != tok.pad_token_id).all()
  # The mask is a prefix: no real token after padding starts.
  lengths = mask.sum(1)
  assert (mask == (np.arange(12) < lengths[:, None])).all()
  assert list(lengths) == [5, 7, 9]


def test_truncation_flagged(tok):
  long = "a red circle and a blue square and a green star and a pink ring"
  ids, mask, trunc = text.tokenize(tok, ["a red circle", long], 6)
  assert list(trunc) == [False, True]
  assert mask[1].all() and ids[1, -1] == tok.sep_token_id and ids[1, 0] == tok.cls_token_id
  assert tok.convert_ids_to_tokens(ids[1, 1:5].tolist()) == ["a", "red", "circle", "and"]
  # Exactly max_len tokens is not truncation.
  ids, mask, trunc = text.tokenize(tok, ["a red circle and"], 6)
  assert not trunc[0] and mask[0].all()


def test_bad_max_len_and_empty(tok):
  with pytest.raises(ValueError, match="max_len"):
    text.tokenize(tok, ["a"], 1)
  ids, mask, trunc = text.tokenize(tok, [], 8)
  assert ids.shape == (0, 8) and mask.shape == (0, 8) and trunc.shape == (0,)


def test_missing_tokenizer_folder(tmp_path):
  missing = str(tmp_path / "nope")
  with pytest.raises(FileNotFoundError, match=r"nope.*does not exist.*tokenizer\.json"):
    text.load_tokenizer(missing)
  (tmp_path / "empty").mkdir()
  (tmp_path / "empty" / "notes.txt").write_text("x")
  with pytest.raises(FileNotFoundError, match=r"empty.*holds no tokenizer.*notes\.txt"):
    text.load_tokenizer(str(tmp_path / "empty"))
