"""Retrieve with a trained run on your own images and captions, and see what aligned.

  python -m experiments.retrieve --workdir=runs/demo --images=my_photos/ \
      --captions=captions.txt --k=5
  python -m experiments.retrieve --workdir=runs/demo --images=my_photos/ \
      --query="a small red circle" --query="two blue squares"

Prints, per caption, the k best images and, for the best one, each word piece with
its saliency gate and the image patch (or region) it matches best; per image, the k
best captions. Everything printed is also written as JSON (--out, default
<workdir>/retrieval.json). The gallery's encodings are cached under
<workdir>/galleries/, so new captions for the same photos only encode the captions.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a training run.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images.")
_CAPTIONS = flags.DEFINE_string("captions", None, "UTF-8 text file, one caption a line.")
_QUERY = flags.DEFINE_multi_string("query", [], "A caption (repeatable).")
_K = flags.DEFINE_integer("k", 5, "How many results per query.")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "The best-on-dev checkpoint or the last one.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default <workdir>/retrieval.json).")


def _read_captions() -> list[str]:
  captions = list(_QUERY.value)
  if _CAPTIONS.value:
    try:
      with open(_CAPTIONS.value, encoding="utf-8") as f:
        captions += [line.strip() for line in f if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
      sys.exit(f"Could not read captions from {_CAPTIONS.value!r}: {e}")
  if not captions:
    sys.exit("No captions: give --captions=FILE (one per line) and/or --query=TEXT.")
  return captions


def main(argv):
  del argv
  logging.set_verbosity(logging.WARNING)
  if not _WORKDIR.value or not _IMAGES.value:
    sys.exit("--workdir (a training run) and --images (a folder) are required.")
  captions = _read_captions()
  from gralign_jax import retrieval  # after flag parsing: jax reads XLA_FLAGS at import
  try:
    run = retrieval.load_run(_WORKDIR.value, _CHECKPOINT.value)
    split = retrieval.gallery_split(_IMAGES.value)
  except FileNotFoundError as e:
    sys.exit(str(e))
  result = retrieval.retrieve(run, split, captions, k=_K.value)
  print(f"Run {run.workdir}, step {run.step}: {split.num_images} images, "
        f"{len(captions)} captions\n")
  for item in result["captions_to_images"]:
    print(f"\"{item['caption']}\"")
    for rank, hit in enumerate(item["top"], 1):
      print(f"  {rank}. {hit['score']:7.4f}  {os.path.relpath(hit['image'])}")
    print("  word piece -> best visual token in image 1 (gate, cosine):")
    words = [f"{a['token']} -> {a['visual_token']} ({a['gate']:.2f}, {a['cos']:.2f})"
             for a in item["alignment"]]
    line = "    "
    for word in words:  # wrap between entries, never inside one
      if len(line) + len(word) > 100 and line.strip():
        print(line.rstrip())
        line = "    "
      line += f" {word};"
    print(line.rstrip(";"))
  print()
  for item in result["images_to_captions"]:
    print(os.path.relpath(item["image"]))
    for rank, hit in enumerate(item["top"], 1):
      print(f"  {rank}. {hit['score']:7.4f}  {hit['caption']}")
  out = _OUT.value or os.path.join(run.workdir, "retrieval.json")
  with open(out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"\nWritten to {out}")


if __name__ == "__main__":
  app.run(main)
