"""A frozen vision backbone's tokens, extracted once into SCAN's precomp layout.

  python -m experiments.extract_features --config=experiments/configs/flickr8k.py \
      --config.data.root=../shared/data/flickr8k-1k --out=features/f8k_dinov2
  python -m experiments.flickr8k --config=experiments/configs/flickr8k.py:frozen \
      --config.data.root=features/f8k_dinov2 --workdir=runs/f8k_frozen

Any config with a pixel backbone (vit, swin, dinov2) and any data set in a supported
format: each split's images are resized as for evaluation, run through
config.model.vision with its weights, and written as {split}_ims.npy (N, L, C) float32,
{split}_caps.txt and {split}_ids.txt, with features.json saying what made them
(gralign_jax/inference/features.py). --out must be a new or empty folder.
"""
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from experiments import entry_point

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The run config whose vision backbone and data to use.",
    lock_config=True)
_OUT = flags.DEFINE_string("out", None, "New (or empty) folder for the feature files.")
_SPLITS = flags.DEFINE_list("splits", ["train", "dev"], "Splits to extract (config "
                            "names: train / dev / test map to data.<name>_split).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Images per forward pass.")


_STARTED = []


def main(argv):
  del argv
  _STARTED.append(True)
  logging.set_verbosity(logging.WARNING)
  config = entry_point.config_value(_CONFIG)
  if not _OUT.value:
    sys.exit("Error: --out is required: a new folder for the feature files.")
  if _BATCH.value < 1:
    sys.exit(f"Error: --batch_size={_BATCH.value}: expected 1 or more.")
  from gralign_jax.inference import features as extract_features  # pylint: disable=g-import-not-at-top
  try:
    manifest = extract_features.extract(config, _OUT.value, _SPLITS.value,
                                        _BATCH.value)
  except entry_point.user_errors() as e:
    sys.exit(f"Error: {e}")
  print(f"Wrote {', '.join(manifest['splits'])} tokens {manifest['feature_shape']} to "
        f"{_OUT.value}")


if __name__ == "__main__":
  try:
    app.run(main)
  except (AttributeError, KeyError) as e:
    if _STARTED:  # raised by the extraction, not by flag parsing: a bug, with its trace
      raise
    sys.exit(entry_point.unknown_key_message(e))
