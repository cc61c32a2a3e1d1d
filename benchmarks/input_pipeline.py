"""Input-pipeline throughput: can the host feed the model?

  python benchmarks/input_pipeline.py            # ~1-2 minutes; prints a Markdown table
  python benchmarks/input_pipeline.py --records 200 --workers 2

Rows, each in images per second:
- per worker (one process, what each grain worker does): JPEG decode alone; decode +
  RandomResizedCrop + flip (training) at 224 and 384; decode + resize (evaluation);
  the same from TFDS array_record records; a row of SCAN precomp features
  (36 x 2048 float32) read from a memory-mapped .npy;
- the whole grain pipeline at 224 with --workers processes, batches of 32.
Source images are 640 x 480 JPEGs (quality 90, textured so that they weigh what COCO's
do, ~100-200 KB), written to a temporary folder first. Nothing is downloaded.
"""
import argparse
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from experiments.configs import demo  # pylint: disable=wrong-import-position
from gralign_jax import configs  # pylint: disable=wrong-import-position
from gralign_jax.data import pipeline  # pylint: disable=wrong-import-position
from gralign_jax.data import readers  # pylint: disable=wrong-import-position
from gralign_jax.data import precomp  # pylint: disable=wrong-import-position
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "tests"))
# The tests' TFDS writer.
import layout_writers as writers  # noqa: E402  # pylint: disable=wrong-import-position


def _photo(rng, h=480, w=640) -> np.ndarray:
  """Smooth colour fields plus fine texture: JPEG sizes like natural photos."""
  coarse = rng.uniform(0, 255, (h // 40, w // 40, 3)).astype(np.uint8)
  base = np.asarray(Image.fromarray(coarse).resize((w, h), Image.BICUBIC), np.float32)
  return np.clip(base + rng.normal(0, 18, (h, w, 3)), 0, 255).astype(np.uint8)


def make_split(folder: str, n: int) -> readers.Split:
  os.makedirs(os.path.join(folder, "images"), exist_ok=True)
  rng = np.random.default_rng(0)
  paths = []
  for i in range(n):
    path = os.path.join(folder, "images", f"{i:06d}.jpg")
    Image.fromarray(_photo(rng)).save(path, quality=90)
    paths.append(path)
  captions = tuple(f"caption {k} of image {k // 5}" for k in range(5 * n))
  return readers.Split("train", tuple(paths), tuple(range(n)), captions)


def rate(fn, n: int) -> float:
  fn(0)  # warm the page cache and imports
  t0 = time.perf_counter()
  for i in range(n):
    fn(i)
  return n / (time.perf_counter() - t0)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--records", type=int, default=200, help="images per timed row")
  parser.add_argument("--workers", type=int, default=2, help="grain worker processes")
  args = parser.parse_args()
  n = args.records
  with tempfile.TemporaryDirectory() as tmp:
    split = make_split(tmp, n)
    kb = np.mean([os.path.getsize(p) for p in split.image_paths]) / 1024
    rng = np.random.default_rng(0)
    caps = pipeline.EncodedCaptions(np.zeros((5 * n, 8), np.int32),
                                    np.ones((5 * n, 8), bool), 0)
    # What one grain worker does per record: pipeline._TrainExample / _EvalImage.
    train_example = lambda s, size: pipeline._TrainExample(  # pylint: disable=protected-access
        s, caps, size, (0.6, 1.0), True)
    rows = [("JPEG decode only (640x480)", rate(lambda i: split.load_image(i % n), n))]
    for size in (224, 384):
      ex = train_example(split, size)
      rows.append((f"decode + RandomResizedCrop + flip, {size}",
                   rate(lambda i, ex=ex: ex(5 * (i % n), rng), n)))
      ev = pipeline._EvalImage(split, size)  # pylint: disable=protected-access
      rows.append((f"decode + resize (evaluation), {size}",
                   rate(lambda i, ev=ev: ev(i % n), n)))
    try:
      folder = writers.write_tfds(os.path.join(tmp, "tfds"), {"train": split})
      ex = train_example(readers.read_split(folder, "train", format="tfds"), 224)
      rows.append(("TFDS array_record: decode + crop + flip, 224",
                   rate(lambda i: ex(5 * (i % n), rng), n)))
    except ImportError as e:
      print(f"(no TFDS row: {e})")
    feats = os.path.join(tmp, "precomp")
    fsplit = readers.Split("train", split.image_paths[:1] * (4 * n), tuple(range(4 * n)),
                           ("c",) * (20 * n))
    precomp.write_precomp(feats, fsplit, lambda i: np.full((36, 2048), i, np.float32))
    psplit = readers.read_split(feats, "train", format="precomp")
    rows.append(("precomp: one 36x2048 float32 row (page cache warm)",
                 rate(lambda i: psplit.load_image(i % (4 * n)), 4 * n)))

    config = demo.get_config("smoke")
    config.model.vision.image_size = 224  # data.image_size follows (finalize)
    config.data.update(num_workers=args.workers, crop_scale=(0.6, 1.0))
    configs.finalize(config)
    config.train.batch_size = 32
    it = pipeline.train_iterator(split, caps, config, seed=0)
    for _ in range(6):  # workers started, prefetch buffers drained: steady state next
      next(it)
    batches = max(24, n // 8)
    t0 = time.perf_counter()
    for _ in range(batches):
      next(it)
    total = batches * 32 / (time.perf_counter() - t0)
    if hasattr(it, "close"):
      it.close()
    rows.append((f"grain pipeline, {args.workers} worker processes, 224, batch 32", total))

  print(f"\nSource JPEGs: 640x480, mean {kb:.0f} KB; {n} records per row; "
        f"{os.cpu_count()} CPUs visible.\n")
  print("| row | images / s |")
  print("|---|---|")
  for name, r in rows:
    print(f"| {name} | {r:.0f} |")
  print(f"\nCommand: python benchmarks/input_pipeline.py --records {n} "
        f"--workers {args.workers}")


if __name__ == "__main__":
  main()
