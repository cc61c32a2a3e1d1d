"""Look at a data set before training on it: per-split counts, caption lengths (words
and tokens, with how many max_len cuts), and a PNG grid of sample images with captions.

  python -m experiments.inspect_data --config=experiments/configs/demo.py
  python -m experiments.inspect_data --config=experiments/configs/flickr30k.py \
      --config.data.root=/data/f30k --out=f30k_samples.png --check_images
Any experiment config works, with the same --config.x=y overrides as training; the
grid shows the train split (region-feature heat maps for format "precomp").
"""
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. experiments/configs/flickr30k.py:smoke",
    lock_config=True)
_OUT = flags.DEFINE_string("out", "data_samples.png", "Where the sample grid goes.")
_SAMPLES = flags.DEFINE_integer("samples", 12, "Images in the grid.")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to report (default: the config's "
                            "train, dev and test splits).")
_CHECK = flags.DEFINE_bool("check_images", False, "Decode every image of every split "
                           "and list the unreadable ones (slow on a full data set).")


def main(argv):
  del argv
  config = _CONFIG.value
  if config is None:
    sys.exit("--config is required, e.g. --config=experiments/configs/flickr30k.py")
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import inspect  # pylint: disable=g-import-not-at-top
  datasets.prepare(config)
  names = _SPLITS.value or [config.data[f"{s}_split"] for s in ("train", "dev", "test")]
  print(f"Data set {config.data.name!r}, format {config.data.format!r}, "
        f"root {os.path.abspath(config.data.root)}")
  try:
    tokenizer = datasets.load_tokenizer(config)
  except (OSError, ValueError) as e:
    tokenizer = None
    print(f"(No token statistics: the tokenizer did not load: {e})")
  splits, stats = {}, {}
  for name in names:
    splits[name] = datasets.read_split(config, name)
    stats[name] = inspect.split_stats(splits[name], tokenizer, config.data.max_len)
  print(inspect.format_report(stats, config.data.max_len))
  if _CHECK.value:
    for name, split in splits.items():
      bad, messages = inspect.check_images(split)
      print(f"{name}: {bad} of {split.num_images} images unreadable")
      for m in messages:
        print("  " + m)
  grid = inspect.sample_grid(splits[names[0]], _SAMPLES.value)
  os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
  grid.save(_OUT.value)
  print(f"Wrote {_OUT.value}: {min(_SAMPLES.value, splits[names[0]].num_images)} "
        f"{names[0]} images with their first captions.")


def run() -> None:
  """app.run(main), with an unknown --config.x key said in one line, as training does."""
  started = []

  def guarded_main(argv):
    started.append(True)
    main(argv)

  try:
    app.run(guarded_main)
  except (AttributeError, KeyError) as e:
    if started:  # raised while inspecting, not by flag parsing
      raise
    message = str(e).encode().decode("unicode_escape")
    name = re.search(r"'(\w+)'", message)
    name = name.group(1) if name else message
    bad = [a.split("=")[0] for a in sys.argv[1:] if a.startswith("--config.")
           and name in a.split("=")[0].split(".")]
    hint = re.search(r'Did you mean "(\w+)"', message)
    hint = f"; did you mean {hint.group(1)!r}?" if hint else "."
    sys.exit(f"Unknown config key {name!r} in {bad or 'the overrides'}: the config has "
             f"no such field (gralign_jax/configs.py lists them all){hint}")


if __name__ == "__main__":
  run()
