"""Generates the synthetic scenes set (gralign_jax/data/synthetic/): images,
captions and scene record in the Karpathy/COCO layout, and its WordPiece tokenizer.

  python -m experiments.generate_synthetic --root=DIR [--image_size=64] \
      [--num_train=8000 --num_dev=500 --num_test=1000 --seed=0 --vocab_size=1000]

The demo generates its set itself (data.synthetic.generate); this is for another size
or place. A folder holding files the generator did not write is refused in one line.
"""
import json
import os
import sys
import time

from absl import app
from absl import flags

_ROOT = flags.DEFINE_string("root", None, "Output folder.", required=True)
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 64, "Image side in pixels.")
_NUM_TRAIN = flags.DEFINE_integer("num_train", 8000, "Training images.")
_NUM_DEV = flags.DEFINE_integer("num_dev", 500, "Dev images.")
_NUM_TEST = flags.DEFINE_integer("num_test", 1000, "Test images.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the scenes and captions.")
_VOCAB = flags.DEFINE_integer("vocab_size", 1000, "WordPiece vocabulary size.")


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import synthetic
  from gralign_jax.data import text
  # pylint: enable=g-import-not-at-top
  root, t0 = _ROOT.value, time.time()
  try:
    synthetic.generate(root, num_train=_NUM_TRAIN.value, num_dev=_NUM_DEV.value,
                              num_test=_NUM_TEST.value, image_size=_IMAGE_SIZE.value,
                              seed=_SEED.value, vocab_size=_VOCAB.value)
  except OSError as e:  # a folder it refuses (a user's files), or cannot write: one line
    sys.exit(f"Error: {e}")
  with open(os.path.join(root, "scenes.json"), encoding="utf-8") as f:
    scenes = json.load(f)["scenes"]
  captions = [c for s in scenes for c in s["captions"]]
  kinds = {k: sum(c["kind"] == k for c in captions)
           for k in ("full", "single", "relation", "subset")}
  vocab = len(text.load_tokenizer(os.path.join(root, "tokenizer")).get_vocab())
  print(f"Wrote {root} in {time.time() - t0:.1f} s: "
        + ", ".join(f"{name} {sum(s['split'] == name for s in scenes)} images"
                    for name, _ in synthetic.SPLITS)
        + f"; {len(captions)} captions ({kinds}); "
        f"{sum(s['swap_of'] is not None for s in scenes)} attribute-swapped twins; "
        f"tokenizer vocabulary {vocab}.")


if __name__ == "__main__":
  app.run(main)
