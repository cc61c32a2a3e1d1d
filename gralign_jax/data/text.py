"""Tokenisation: train a small WordPiece, load any Hugging Face tokenizer, pad to arrays.

Every tokenizer goes through `transformers.AutoTokenizer.from_pretrained(local_dir)`, so
the WordPiece trained here for the synthetic set and bert-base-uncased take the same code
path. The trained tokenizer is saved as `tokenizer.json` + `tokenizer_config.json` (what
AutoTokenizer reads) plus a `vocab.txt` for people and tools that expect one.
"""
import collections
import os

import numpy as np
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

# Tokenizers need no PyTorch; keep transformers from announcing that it is absent.
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
import transformers  # pylint: disable=g-import-not-at-top

# BERT's special tokens; [PAD] first so that padding is id 0 as in bert-base-uncased.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def _closed_vocab(captions, normalizer, pre_tokenizer, vocab_size):
  """Specials, characters and every whole word, or None if they exceed vocab_size.

  This is where WordPiece training ends when the budget covers every word (each word is
  one piece; characters stay for unseen words), built here in a fixed order because the
  `tokenizers` trainer breaks ties by hash order and so differs from run to run.
  """
  counts = collections.Counter()
  for c in captions:
    for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(c)):
      counts[w] += 1
  chars = sorted({ch for w in counts for ch in w})
  words = sorted((w for w in counts if len(w) > 1), key=lambda w: (-counts[w], w))
  tokens = list(SPECIAL_TOKENS) + chars + ["##" + ch for ch in chars] + words
  if len(tokens) > vocab_size:
    return None
  return {t: i for i, t in enumerate(tokens)}


def train_wordpiece(captions: list[str], out_dir: str, vocab_size: int = 1000) -> None:
  """Trains an uncased BERT-style WordPiece on `captions`, saved in Hugging Face format.

  When vocab_size covers every distinct word (the synthetic set: ~70 words), the
  vocabulary is specials + characters + ##characters + whole words by frequency, in a
  fixed order, so the same captions give the same bytes. Otherwise the `tokenizers`
  WordPieceTrainer picks the word pieces; its ties are broken by hash order, so that
  vocabulary is valid but not byte-reproducible across processes.

  Args:
    captions: training text, one caption per item.
    out_dir: folder to write (created if missing): tokenizer.json,
      tokenizer_config.json and vocab.txt.
    vocab_size: upper bound on the number of tokens.
  """
  if not captions:
    raise ValueError("train_wordpiece needs at least one caption, got none.")
  normalizer = normalizers.BertNormalizer(lowercase=True)
  pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  vocab = _closed_vocab(captions, normalizer, pre_tokenizer, vocab_size)
  if vocab is None:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
    tok.train_from_iterator(captions, trainer)
    vocab = tok.get_vocab()
  # The special tokens come first, in the order given; [PAD] = 0 is relied on later.
  for i, t in enumerate(SPECIAL_TOKENS):
    if vocab.get(t) != i:
      raise RuntimeError(f"WordPiece vocabulary gave {t} id {vocab.get(t)}, expected {i}.")
  # BertTokenizer(vocab=...) builds the BERT pipeline (BertNormalizer lowercase,
  # BertPreTokenizer, WordPiece, [CLS] $A [SEP] template, WordPiece decoder) around our
  # vocabulary and records tokenizer_class "BertTokenizer", so AutoTokenizer restores a
  # BERT tokenizer. (BertTokenizerFast(vocab_file=...) is silently ignored in
  # transformers 5.)
  hf = transformers.BertTokenizer(vocab=vocab, do_lower_case=True)
  if hf.get_vocab() != vocab:
    raise RuntimeError("transformers.BertTokenizer did not keep the trained vocabulary.")
  os.makedirs(out_dir, exist_ok=True)
  hf.save_pretrained(out_dir)
  # transformers 5 writes no vocab.txt for tokenizers-backed classes; write it ourselves,
  # one token per line in id order, the layout of bert-base-uncased's vocab.txt.
  by_id = sorted(vocab.items(), key=lambda kv: kv[1])
  with open(os.path.join(out_dir, "vocab.txt"), "w", encoding="utf-8") as f:
    f.write("".join(t + "\n" for t, _ in by_id))


def load_tokenizer(path: str):
  """Loads a Hugging Face tokenizer from a local folder (never from the network).

  Raises:
    FileNotFoundError: the folder is missing or holds no tokenizer files.
  """
  if not os.path.isdir(path):
    raise FileNotFoundError(
        f"Tokenizer folder {path!r} does not exist. Expected a Hugging Face tokenizer "
        "folder with tokenizer.json and tokenizer_config.json (or vocab.txt), e.g. "
        "<data root>/tokenizer written by gralign_jax.data.synthetic, or a "
        "downloaded bert-base-uncased.")
  present = sorted(os.listdir(path))
  if not any(f in present for f in ("tokenizer.json", "vocab.txt")):
    raise FileNotFoundError(
        f"Tokenizer folder {path!r} holds no tokenizer: expected tokenizer.json and "
        f"tokenizer_config.json (or vocab.txt), found {present or 'nothing'}.")
  try:
    return transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
  except (OSError, ValueError) as e:
    raise FileNotFoundError(
        f"Could not load a tokenizer from {path!r} (it holds {present}): {e}") from e


def tokenize(tokenizer, captions: list[str], max_len: int
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Tokenises captions to fixed-length arrays with [CLS] ... [SEP] and padding.

  Args:
    tokenizer: a Hugging Face tokenizer (from `load_tokenizer`).
    captions: N strings.
    max_len: tokens per caption including [CLS] and [SEP].

  Returns:
    ids: int32 (N, max_len), padded with the tokenizer's pad id.
    mask: bool (N, max_len), True on real tokens (special tokens included).
    truncated: bool (N,), True where the caption had more than max_len tokens; such
      captions keep their first max_len - 2 word pieces and still end in [SEP].
  """
  if max_len < 2:
    raise ValueError(f"max_len must leave room for [CLS] and [SEP] (>= 2), got {max_len}.")
  captions = list(captions)
  if not captions:
    return (np.zeros((0, max_len), np.int32), np.zeros((0, max_len), bool),
            np.zeros((0,), bool))
  # Full lengths first, so truncation is counted rather than silently applied.
  full = tokenizer(captions, add_special_tokens=True, truncation=False)["input_ids"]
  truncated = np.array([len(x) > max_len for x in full], bool)
  enc = tokenizer(captions, add_special_tokens=True, truncation=True, max_length=max_len,
                  padding="max_length", return_attention_mask=True)
  ids = np.asarray(enc["input_ids"], np.int32)
  mask = np.asarray(enc["attention_mask"], bool)
  if ids.shape != (len(captions), max_len):
    raise RuntimeError(f"Tokenizer gave shape {ids.shape}, expected {(len(captions), max_len)}.")
  return ids, mask, truncated
