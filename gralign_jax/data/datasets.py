"""From a config to the data of a run: the splits on disk and the tokenizer.

The one place that knows where things live under `config.data.root`; the synthetic
scenes set is generated here when the config asks for it and the folder does not exist
or is empty (a folder with anything in it is read as it is).
"""
import os
import time

import ml_collections

from gralign_jax import configs
from gralign_jax import logs
from gralign_jax import weights
from gralign_jax.data import image_check
from gralign_jax.data import images
from gralign_jax.data import readers
from gralign_jax.data import synthetic
from gralign_jax.data import text


def _root_state(data) -> str:
  """"absent", "empty" or "full": what data.root holds, if it is a readable folder."""
  root = data.root
  if not os.path.exists(root):
    return "absent"
  where = f"the {data.name} data set in the {data.format!r} layout (see docs/data.md)"
  if not os.path.isdir(root):
    raise NotADirectoryError(f"config.data.root={root!r} is a file; expected a folder "
                             f"holding {where}.")
  try:
    return "full" if os.listdir(root) else "empty"
  except PermissionError as e:
    raise PermissionError(f"config.data.root={root!r} cannot be read (permission "
                          f"denied); expected a readable folder holding {where}.") from e


def prepare(config: ml_collections.ConfigDict, log: logs.Log = logs.info) -> None:
  """Checks data.root and, when the config asks for it, generates the synthetic set there.

  The set is generated only into a root that does not exist or is an empty folder. A
  complete synthetic set is used; anything else (a user's data set, a copy of the set
  without its marker) is read as it is: generating there could delete it.

  Raises:
    ValueError: data.root is empty.
    NotADirectoryError: data.root is a file.
    ConfigError: the config is not finalized (configs.finalize).
    PermissionError: data.root cannot be listed.
    FileNotFoundError: data.root does not exist and is not to be generated.
    FileExistsError: another process is generating the synthetic set into data.root.
  """
  configs.require_final(config, "datasets.prepare")
  data = config.data
  if not data.root:
    raise ValueError("config.data.root is empty: set it to the data set folder, e.g. "
                     "--config.data.root=/path/to/flickr30k")
  state = _root_state(data)
  syn = data.synthetic
  # The synthetic set is written in the laps and karpathy layouts only; a root in another
  # format is never a place to generate it.
  if data.name == "synthetic" and syn.generate and data.format in ("laps", "karpathy"):
    if state in ("absent", "empty"):
      log(f"Generating the synthetic scenes set in {data.root} ({syn.num_train}/"
          f"{syn.num_dev}/{syn.num_test} images, {data.image_size} px)...")
      t0 = time.time()
      synthetic.generate(data.root, num_train=syn.num_train, num_dev=syn.num_dev,
                                num_test=syn.num_test, image_size=data.image_size,
                                seed=syn.seed, vocab_size=syn.vocab_size)
      log(f"  done in {time.time() - t0:.0f} s")
      return
    if not synthetic.is_complete(data.root):
      log(f"{data.root} is not empty and holds no complete synthetic set (no "
          f"{synthetic.MARKER} marker): reading it as it is, without generating.")
  if state == "absent":
    raise FileNotFoundError(
        f"config.data.root={data.root!r} does not exist. Expected the {data.name} data "
        f"set in the {data.format!r} layout there (see docs/data.md).")


def read_split(config: ml_collections.ConfigDict, split: str) -> readers.Split:
  """One split of the configured data set. Image files that are missing or unreadable
  stop it here, unless data.skip_bad_images (then they are logged and passed over)."""
  data = config.data
  return readers.read_split(data.root, split, format=data.format, image_dir=data.image_dir,
                            karpathy_json=data.karpathy_json,
                            feature_shape=tuple(data.feature_shape),
                            tfds_name=data.tfds_name,
                            check_images="warn" if data.skip_bad_images else True)


def check_images(config: ml_collections.ConfigDict, splits: dict,
                 log: logs.Log = logs.info) -> None:
  """data.check_images: the header and end of every image file, before training.

  Raises:
    images.ImageDecodeError: some files are unreadable and data.skip_bad_images is off,
      listing the first of them and the count.
  """
  if not config.data.check_images:
    return
  reports = [image_check.check_split(sp) for sp in splits.values()]
  checked = sum(r.checked for r in reports)
  if checked:
    seconds = sum(r.seconds for r in reports)
    log(f"  checked {checked} image files (header and end) in {seconds:.1f} s "
        "(data.check_images)")
  bad = [r for r in reports if r.bad]
  if bad and not config.data.skip_bad_images:
    raise images.ImageDecodeError(
        " ".join(r.summary() for r in bad) + " Replace them, or set "
        "--config.data.skip_bad_images=true to train without them.")
  for r in bad:
    log(f"  {r.summary(limit=len(r.bad))} Passed over (data.skip_bad_images).")


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
