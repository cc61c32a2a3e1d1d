"""Tokenisation: train a small WordPiece, load any Hugging Face tokenizer, pad to arrays.

Every tokenizer goes through `transformers.AutoTokenizer.from_pretrained(local_dir)`, so
the WordPiece trained here for the synthetic set and bert-base-uncased take the same code
path. The trained tokenizer is saved as `tokenizer.json` + `tokenizer_config.json` (what
AutoTokenizer reads) plus a `vocab.txt` for people and tools that expect one.
"""
import os

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from tokenizers import trainers
import transformers

# BERT's special tokens; [PAD] first so that padding is id 0 as in bert-base-uncased.
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def train_wordpiece(captions: list[str], out_dir: str, vocab_size: int = 1000) -> None:
  """Trains an uncased BERT-style WordPiece on `captions`, saved in Hugging Face format.

  Args:
    captions: training text, one caption per item.
    out_dir: folder to write (created if missing): tokenizer.json, tokenizer_config.json,
      special_tokens_map-style fields inside tokenizer_config.json, and vocab.txt.
    vocab_size: upper bound; a small closed vocabulary gives fewer tokens.
  """
  if not captions:
    raise ValueError("train_wordpiece needs at least one caption, got none.")
  tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
  tok.normalizer = normalizers.BertNormalizer(lowercase=True)
  tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
  trainer = trainers.WordPieceTrainer(
      vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS), show_progress=False)
  tok.train_from_iterator(captions, trainer)
  vocab = tok.get_vocab()
  # The trainer puts the special tokens first, in the order given; later code relies on it.
  for i, t in enumerate(SPECIAL_TOKENS):
    if vocab.get(t) != i:
      raise RuntimeError(f"WordPiece training gave {t} id {vocab.get(t)}, expected {i}.")
  tok.post_processor = processors.BertProcessing(
      ("[SEP]", vocab["[SEP]"]), ("[CLS]", vocab["[CLS]"]))
  tok.decoder = decoders.WordPiece(prefix="##")
  # BertTokenizer(vocab=...) rebuilds the same pipeline around our vocabulary and records
  # tokenizer_class "BertTokenizer", so AutoTokenizer restores a BERT tokenizer. (Passing
  # vocab_file= would be silently ignored in transformers 5.)
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
        "<data root>/tokenizer written by gralign_jax.data.synthetic_scenes, or a "
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
