"""Look at a data set before training on it: per-split counts, caption lengths (words
and tokens, with how many max_len cuts), and a PNG grid of sample images with captions.

  python -m experiments.inspect_data --config=experiments/configs/demo.py
  python -m experiments.inspect_data --config=experiments/configs/flickr30k.py \
      --config.data.root=/data/f30k --out=f30k_samples.png --check_images
Any experiment config works, with the same --config.x=y overrides as training; the
grid shows the first split read, train by default (region-feature heat maps for
format "precomp").

A data fault (a missing or unreadable file, bad content, an empty split) is one line on
stderr naming the split, and the other splits are still read. The last line is a
summary; the exit code is 1 when any fault or unreadable image was found, else 0.
"""
import os
import re
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import entry_point

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config, e.g. experiments/configs/flickr30k.py:smoke",
    lock_config=True)
_OUT = flags.DEFINE_string("out", "data_samples.png", "Where the sample grid goes.")
_SAMPLES = flags.DEFINE_integer("samples", 12, "Images in the grid.")
_SPLITS = flags.DEFINE_list("splits", None, "Splits to report (default: the config's "
                            "train, dev and test splits).")
_CHECK = flags.DEFINE_bool("check_images", False, "Decode every image of every split "
                           "and list every unreadable one (slow on a full data set).")


def _one_line(e: Exception) -> str:
  """An error as one line; types other than the data errors keep their name."""
  from gralign_jax.data import images, split  # pylint: disable=g-import-not-at-top
  text = re.sub(r"\s*\n\s*", " ", str(e)).strip()
  if isinstance(e, (OSError, split.DataFormatError, images.ImageDecodeError)):
    return text
  return f"{type(e).__name__}: {text}"


def main(argv):
  del argv
  config = entry_point.config_value(_CONFIG)
  if _SAMPLES.value < 1:
    sys.exit(f"Error: --samples={_SAMPLES.value}: expected 1 or more images in the grid.")
  if os.path.splitext(_OUT.value)[1].lower() not in (".png", ".jpg", ".jpeg"):
    sys.exit(f"Error: --out={_OUT.value!r}: the grid is a picture; expected a .png or .jpg "
             "file name.")
  from gralign_jax import configs  # pylint: disable=g-import-not-at-top
  try:
    configs.finalize(config)  # the image size and lengths the run would use
  except configs.ConfigError as e:
    sys.exit(f"Error: {e}")
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import inspect  # pylint: disable=g-import-not-at-top
  # What a data set can get wrong (missing or unreadable files, bad content, a reader
  # that is not installed): each is one line, and the other splits are still looked at.
  data_errors = (OSError, ValueError, ImportError)
  faults = []

  def fault(where: str, e: Exception) -> None:
    faults.append(where)
    sys.stdout.flush()  # keep the report's order where both streams go to one terminal
    print(f"Error in {where}: {_one_line(e)}", file=sys.stderr, flush=True)

  print(f"Data set {config.data.name!r}, format {config.data.format!r}, "
        f"root {os.path.abspath(config.data.root)}")
  names = _SPLITS.value or [config.data[f"{s}_split"] for s in ("train", "dev", "test")]
  try:
    datasets.prepare(config)
  except data_errors as e:
    fault("the data root", e)
    names = []  # every split would fail the same way
  tokenizer = None
  if names:
    try:
      tokenizer = datasets.load_tokenizer(config)
    except (OSError, ValueError) as e:
      print(f"(No token statistics: the tokenizer did not load: {_one_line(e)})")
  splits, stats = {}, {}
  for name in names:
    try:
      splits[name] = datasets.read_split(config, name)
    except data_errors as e:
      fault(f"split {name!r}", e)
      continue
    stats[name] = inspect.split_stats(splits[name], tokenizer, config.data.max_len)
  if stats:
    print(inspect.format_report(stats, config.data.max_len))
  unreadable = {}
  if _CHECK.value:
    for name, split in splits.items():
      messages = inspect.check_images(split)
      print(f"{name}: {len(messages)} of {split.num_images} images unreadable")
      for m in messages:  # all of them: a user fixes or removes each one
        print("  " + m)
      if messages:
        unreadable[name] = len(messages)
  if splits:
    first = next(iter(splits))
    grid = inspect.sample_grid(splits[first], _SAMPLES.value)
    os.makedirs(os.path.dirname(os.path.abspath(_OUT.value)), exist_ok=True)
    grid.save(_OUT.value)
    print(f"Wrote {_OUT.value}: {min(_SAMPLES.value, splits[first].num_images)} "
          f"{first} images with their first captions.")
  sys.stdout.flush()
  if faults or unreadable:
    parts = []
    if faults:
      parts.append(f"{len(faults)} data fault(s) ({', '.join(faults)})")
    if unreadable:
      parts.append(f"{sum(unreadable.values())} unreadable image(s) (" + ", ".join(
          f"{n} in {k}" for k, n in unreadable.items()) + ")")
    sys.exit(f"inspect_data FAILED: {' and '.join(parts)}; each is listed above.")
  checked = ("every image decoded" if _CHECK.value
             else "images not decoded (--check_images decodes them all)")
  print(f"inspect_data OK: {len(splits)} split(s) read without a fault; {checked}.")


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
