"""One small synthetic data set in each of the five on-disk formats, for the tests.

`build(folder)` writes the synthetic scenes set (laps and karpathy layouts in one
folder), then the same images and captions in Flickr8k's layout, as SCAN precomp
features and as a TFDS-prepared coco_captions; `configure(config, fmt, roots)` points a config at one.
"""
import os

from gralign_jax import configs
from gralign_jax.data import images
from gralign_jax.data import readers
from gralign_jax.data import synthetic
from gralign_jax.data import precomp
import layout_writers as writers  # tests/, beside this file

FORMATS = ("laps", "karpathy", "flickr8k", "precomp", "tfds")
FEATURE_SHAPE = (6, 64)


def build(folder: str, num_train: int = 24, num_dev: int = 5, num_test: int = 5,
          image_size: int = 32) -> dict[str, str]:
  """-> {format: data root}; the tokenizer is at roots["laps"]/tokenizer."""
  syn = os.path.join(folder, "synthetic")
  synthetic.generate(syn, num_train=num_train, num_dev=num_dev, num_test=num_test,
                            image_size=image_size)
  splits = {s: readers.read_split(syn, s) for s in ("train", "dev", "test")}
  pre = os.path.join(folder, "precomp")
  for s in splits.values():
    precomp.write_precomp(pre, s, lambda i, s=s: writers.toy_region_features(
        images.decode_image(s.image_paths[i]), FEATURE_SHAPE), feature_shape=FEATURE_SHAPE)
  tfds_dir = os.path.join(folder, "tfds")
  writers.write_tfds(tfds_dir, splits)
  f8k = os.path.join(folder, "flickr8k")
  writers.write_flickr8k(f8k, splits)
  return {"laps": syn, "karpathy": syn, "flickr8k": f8k, "precomp": pre,
          "tfds": tfds_dir}


def configure(config, fmt: str, roots: dict[str, str]):
  """Points config.data at the fixture in `fmt` (same tokenizer for all five)."""
  config.data.update(format=fmt, root=roots[fmt],
                     tokenizer=os.path.join(roots["laps"], "tokenizer"),
                     feature_shape=FEATURE_SHAPE)
  config.data.synthetic.generate = False
  return configs.finalize(config)  # the image size the smoke model takes
