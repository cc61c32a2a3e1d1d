"""From a config to the data of a run: the splits on disk and the tokenizer.

The one place that knows where things live under `config.data.root`; the synthetic
scenes set is generated here when the config asks for it and the folder has none.
"""
import os
import time

import ml_collections

from gralign_jax import weights
from gralign_jax.data import readers
from gralign_jax.data import synthetic_scenes
from gralign_jax.data import text


def prepare(config: ml_collections.ConfigDict, log=print) -> None:
  """Generates the synthetic scenes set under data.root when asked to and absent."""
  data = config.data
  if not data.root:
    raise ValueError("config.data.root is empty: set it to the data set folder, e.g. "
                     "--config.data.root=/path/to/flickr30k")
  syn = data.synthetic
  # The synthetic set is written in the laps and karpathy layouts only; a root in another
  # format is never a place to generate it.
  if (data.name == "synthetic" and syn.generate and data.format in ("laps", "karpathy")
      and not synthetic_scenes.is_complete(data.root)):
    log(f"Generating the synthetic scenes set in {data.root} "
        f"({syn.num_train}/{syn.num_dev}/{syn.num_test} images, {data.image_size} px)...")
    t0 = time.time()
    synthetic_scenes.generate(data.root, num_train=syn.num_train, num_dev=syn.num_dev,
                              num_test=syn.num_test, image_size=data.image_size,
                              seed=syn.seed, vocab_size=syn.vocab_size)
    log(f"  done in {time.time() - t0:.0f} s")
  if not os.path.isdir(data.root):
    raise FileNotFoundError(
        f"config.data.root={data.root!r} does not exist. Expected the {data.name} data set "
        f"in the {data.format!r} layout there (see README, 'Data').")


def read_split(config: ml_collections.ConfigDict, split: str) -> readers.Split:
  data = config.data
  return readers.read_split(data.root, split, format=data.format, image_dir=data.image_dir,
                            karpathy_json=data.karpathy_json,
                            feature_shape=tuple(data.feature_shape),
                            tfds_name=data.tfds_name)


def tokenizer_path(config: ml_collections.ConfigDict) -> str:
  """data.tokenizer (a folder, or a model id in the local HF cache such as
  "google-bert/bert-base-uncased"), or <root>/tokenizer when it is empty."""
  if not config.data.tokenizer:
    return os.path.join(config.data.root, "tokenizer")
  if os.path.isdir(config.data.tokenizer):
    return config.data.tokenizer
  return weights.resolve(config.data.tokenizer)


def load_tokenizer(config: ml_collections.ConfigDict):
  return text.load_tokenizer(tokenizer_path(config))
