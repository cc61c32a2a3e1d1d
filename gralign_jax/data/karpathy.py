"""Karpathy's split files: dataset_flickr30k.json / dataset_coco.json with the images.

One root/dataset_*.json holds {"images": [{"split", "filename", ["filepath"],
"imgid" | "cocoid", "sentences": [{"raw", "tokens"}]}]}. Split names map to Karpathy's:
"dev" reads "val", "test" and "testall" read "test" (COCO's 5K test set), and for
COCO-style files (entries with "filepath") "train" also takes "restval", the 30K
images the field trains on besides train2014. Images live at
root/image_dir/[filepath/]filename. Entries with more than captions_per_image
sentences (a few COCO images have 6 or 7) keep their first ones.
"""
import glob
import os

from gralign_jax.data import split as split_lib
from gralign_jax.data.split import DataFormatError

_SPLITS = {"dev": ("val",), "val": ("val",), "train": ("train",),
           "test": ("test",), "testall": ("test",), "restval": ("restval",)}


def find_json(root: str, karpathy_json: str = "") -> str:
  """The split file: root/karpathy_json, or the one dataset_*.json in root."""
  if karpathy_json:
    path = os.path.join(root, karpathy_json)
    split_lib.require_file(path, "Karpathy split file")
    return path
  found = sorted(glob.glob(os.path.join(root, "dataset_*.json")))
  if len(found) != 1:
    raise (FileNotFoundError if not found else DataFormatError)(
        f"Expected exactly one Karpathy split file dataset_*.json in {root}, found "
        f"{len(found)} ({', '.join(os.path.basename(f) for f in found) or 'none'}); "
        f"{split_lib.listing(root)}. Name the file with config.data.karpathy_json.")
  split_lib.require_file(found[0], "Karpathy split file")  # a folder named *.json
  return found[0]


def read(root: str, split: str, image_dir: str, karpathy_json: str,
         cpi: int) -> split_lib.Split:
  """One split of a Karpathy file (see the module docstring)."""
  path = find_json(root, karpathy_json)
  data = split_lib.load_json(path)
  if not isinstance(data, dict) or "images" not in data:
    raise DataFormatError(f'{path}: expected a JSON object with key "images".')
  entries = data["images"]
  if not isinstance(entries, list):
    raise DataFormatError(f'{path}: "images" should be a list of entries, found '
                          f"{type(entries).__name__}.")
  coco_style = any(isinstance(e, dict) and "filepath" in e for e in entries)
  wanted = set(_SPLITS.get(split, (split,)))
  if split == "train" and coco_style:
    wanted.add("restval")  # the Karpathy COCO training set is train + restval
  paths, ids, captions = [], [], []
  for n, e in enumerate(entries):
    if not isinstance(e, dict):
      raise DataFormatError(f"{path}, images[{n}]: expected an object, found "
                            f"{type(e).__name__}.")
    for key in ("split", "filename", "sentences"):
      if key not in e:
        raise DataFormatError(f'{path}, images[{n}]: missing key "{key}" '
                              f"(entry keys: {sorted(e)}).")
    if e["split"] not in wanted:
      continue
    name = e["filename"]
    if "cocoid" in e:
      image_id = e["cocoid"]
    elif "imgid" in e:
      image_id = e["imgid"]
    else:
      raise DataFormatError(f'{path}, images[{n}] ({name}): missing key "imgid" (or '
                            f'"cocoid"); entry keys: {sorted(e)}.')
    sentences = e["sentences"]
    if not isinstance(sentences, list) or len(sentences) < cpi:
      found = len(sentences) if isinstance(sentences, list) else type(sentences).__name__
      raise DataFormatError(f"{path}, images[{n}] ({name}, id {image_id}): "
                            f"{found} sentences, expected at least {cpi}.")
    for k, s in enumerate(sentences[:cpi]):
      if not isinstance(s, dict) or "raw" not in s:
        raise DataFormatError(f'{path}, images[{n}] ({name}), sentences[{k}]: missing '
                              f'key "raw".')
      if not isinstance(s["raw"], str) or not s["raw"].strip():
        raise DataFormatError(f"{path}, images[{n}] ({name}), sentences[{k}]: empty "
                              "caption.")
      captions.append(s["raw"].strip())
    sub = e.get("filepath", "")
    paths.append(os.path.join(root, image_dir, sub, name) if sub
                 else os.path.join(root, image_dir, name))
    ids.append(int(image_id))
  if not paths:
    found = sorted({e["split"] for e in entries})
    raise split_lib.empty_split_error(
        split, f"{path} has no image whose \"split\" is {' or '.join(sorted(wanted))} "
        f"(its {len(entries)} images have splits {found})")
  return split_lib.Split(split, tuple(paths), tuple(ids), tuple(captions), cpi)
