"""A frozen vision backbone's tokens, extracted once into SCAN's precomp layout.

  extract(config, out, splits=("train", "dev"))

For each split: every image decoded and resized as evaluation does (no crop, no flip),
normalised as the backbone's checkpoint wants, run through config.model.vision (with
its pretrained weights) -> float32 (N, L, C) tokens, written as {split}_ims.npy with
{split}_caps.txt and {split}_ids.txt (precomp.write_precomp), plus features.json saying
what made them (backbone, weights, image size, pixels, shape). A config with
data.format="precomp" and the `butd` feature map (common.precomputed_tokens) then trains
on them with the vision tower frozen: the image side costs one pass, not one per step.

The .npy file is written row by row through a memory map (COCO's 123K x 257 x 384
tokens are 48 GB), into a hidden folder beside `out` that is renamed only when every
split is complete: a crash leaves no half-written feature file in `out`. `out` must not
exist or be empty; nothing in it is replaced.
"""
import json
import os
import shutil
import time
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax import configs
from gralign_jax import logs
from gralign_jax import weights
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.data import precomp
from gralign_jax.models import backbones

MANIFEST = "features.json"
_OURS = ".written_by_extract"  # marks the hidden folder a run writes into


def _encoder(config: ml_collections.ConfigDict, log: logs.Log):
  """-> (jitted pixels uint8 (B, S, S, 3) -> tokens float32 (B, L, C), (L, C))."""
  v = config.model.vision
  if v.name not in ("vit", "swin", "dinov2"):
    raise configs.ConfigError(f"config.model.vision.name={v.name!r}: expected a pixel "
                              "backbone (vit, swin, dinov2) to extract tokens from.")
  module = backbones.build(config.model, "vision")
  if v.weights:
    folder = weights.resolve(v.weights)
    log(f"  vision backbone: weights from {folder}")
    params = jax.tree.map(jnp.asarray, weights.load_backbone(folder, module))
  else:
    log("  vision backbone: random init (model.vision.weights is empty)")
    params = module.init(jax.random.key(config.seed), *module.example_inputs())["params"]
  mean, std = config.data.pixel_mean, config.data.pixel_std

  @jax.jit
  def encode(pixels):
    x = images_lib.model_input(pixels, mean, std)
    return module.apply({"params": params}, x).astype(jnp.float32)

  shape = jax.eval_shape(encode, *module.example_inputs()).shape[1:]
  return encode, tuple(shape)


class _InOrder:
  """features(i) for i = 0, 1, ... from a batched encoder (write_precomp's callable)."""

  def __init__(self, batches: Iterator[dict], encode, batch_size: int):
    self.batches, self.encode, self.batch_size = batches, encode, batch_size
    self.rows, self.start, self.bad = np.zeros((0,)), 0, 0

  def __call__(self, i: int) -> np.ndarray:
    if i >= self.start + len(self.rows):
      batch = next(self.batches)
      self.bad += int(batch["bad_images"].sum())
      pixels = batch["image"]
      n = len(pixels)
      padded = np.concatenate([pixels, np.zeros((self.batch_size - n, *pixels.shape[1:]),
                                                pixels.dtype)]) if n < self.batch_size else pixels
      self.start += len(self.rows)
      self.rows = np.asarray(self.encode(padded))[:n]
    return self.rows[i - self.start]


def _check_out(out: str) -> None:
  if os.path.isfile(out):
    raise FileExistsError(f"--out={out!r} is a file; expected a new (or empty) folder "
                          "for the feature files.")
  if os.path.isdir(out) and os.listdir(out):
    raise FileExistsError(f"--out={out!r} is not empty (it holds "
                          f"{sorted(os.listdir(out))[:5]}); nothing there is replaced: "
                          "choose a new folder.")


def extract(config: ml_collections.ConfigDict, out: str,
            splits: Sequence[str] = ("train", "dev"), batch_size: int = 32,
            log: logs.Log = logs.info) -> dict:
  """Writes the precomp files of `splits` into `out`. -> the manifest (features.json)."""
  config = ml_collections.ConfigDict(config.to_dict())
  configs.finalize(config)
  configs.resolve_preprocessing(config, log)
  out = os.path.abspath(out)
  _check_out(out)
  names = [getattr(config.data, f"{s}_split", s) or s for s in splits]
  read = {name: datasets.read_split(config, name) for name in names}
  datasets.check_images(config, read, log)
  encode, shape = _encoder(config, log)
  manifest = {"backbone": config.model.vision.to_dict(),
              "image_size": config.data.image_size,
              "pixel_mean": list(config.data.pixel_mean),
              "pixel_std": list(config.data.pixel_std),
              "resize_method": config.data.resize_method,
              "feature_shape": list(shape), "data_root": config.data.root,
              "data_format": config.data.format, "splits": {}}
  partial = os.path.join(os.path.dirname(out), f".{os.path.basename(out)}.partial")
  if os.path.exists(partial):  # a crashed extraction's leftover, if it is ours
    if not os.path.isfile(os.path.join(partial, _OURS)):
      raise FileExistsError(f"{partial} exists and was not written by an extraction; "
                            "nothing there is replaced: move it, or choose another --out.")
    shutil.rmtree(partial)
  os.makedirs(partial)
  open(os.path.join(partial, _OURS), "w").close()
  for name, split in read.items():
    t0 = time.time()
    batches = pipeline.eval_image_batches(split, config, batch_size)
    features = _InOrder(batches, encode, batch_size)
    precomp.write_precomp(partial, split, features, name=name, feature_shape=shape)
    seconds = time.time() - t0
    manifest["splits"][name] = {"images": split.num_images,
                                "captions": split.num_captions,
                                "bad_images": features.bad, "seconds": round(seconds, 1)}
    log(f"  {name}: {split.num_images} images -> {name}_ims.npy {(split.num_images,) + shape}"
        f" in {seconds:.0f} s ({split.num_images / max(seconds, 1e-9):.1f} images/s)")
  with open(os.path.join(partial, MANIFEST), "w", encoding="utf-8") as f:
    json.dump(manifest, f, indent=2)
  os.remove(os.path.join(partial, _OURS))
  if os.path.isdir(out):
    os.rmdir(out)  # empty (checked): the complete folder takes its place
  os.replace(partial, out)
  return manifest
