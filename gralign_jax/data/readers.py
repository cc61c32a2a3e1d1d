"""Reads the public on-disk layouts of image-caption sets into one `Split` record.

Two layouts, both with five captions per image (caption c belongs to image c // 5):

- "laps" (LAPS / VSE-infinity): root/id_mapping.json = {"<id>": "<file under image_dir>"},
  root/precomp/{split}_ids.txt (one image id per line) and
  root/precomp/{split}_caps.txt (one caption per line, five per image).
- "karpathy": one root/dataset_*.json with {"images": [{"split", "filename",
  ["filepath"], "imgid" | "cocoid", "sentences": [{"raw"}]}]}. Split "dev" reads
  Karpathy's "val"; for COCO-style files (entries with "filepath") "train" also takes
  "restval". Images at root/image_dir/[filepath/]filename.

Every problem a user can fix is reported with the file (and line or entry) it is in.
"""
import dataclasses
import glob
import json
import os


class DataFormatError(ValueError):
  """A data set file exists but its content does not follow the expected layout."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images and their captions, caption c -> image c // captions_per_image.

  Attributes:
    name: "train", "dev", "test", ...
    image_paths: absolute paths, one per image.
    image_ids: the data set's ids, one per image.
    captions: captions_per_image per image, in image order.
    captions_per_image: 5 for Flickr30K, MS-COCO and the synthetic set.
  """
  name: str
  image_paths: tuple[str, ...]
  image_ids: tuple[int, ...]
  captions: tuple[str, ...]
  captions_per_image: int = 5

  def __post_init__(self):
    if len(self.image_ids) != len(self.image_paths):
      raise DataFormatError(f"Split {self.name!r}: {len(self.image_ids)} image ids for "
                            f"{len(self.image_paths)} image paths.")
    if len(self.captions) != self.captions_per_image * len(self.image_paths):
      raise DataFormatError(
          f"Split {self.name!r}: {len(self.captions)} captions for {len(self.image_paths)} "
          f"images, expected {self.captions_per_image} per image.")

  @property
  def num_images(self) -> int:
    return len(self.image_paths)

  @property
  def num_captions(self) -> int:
    return len(self.captions)


def _listing(folder: str) -> str:
  try:
    names = sorted(os.listdir(folder))
  except OSError:
    return "(the folder does not exist)"
  if not names:
    return "(the folder is empty)"
  more = f" and {len(names) - 20} more" if len(names) > 20 else ""
  return "it holds: " + ", ".join(names[:20]) + more


def _require_file(path: str, what: str) -> None:
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"Missing {what}: {path} does not exist; {_listing(os.path.dirname(path))}.")


def _read_lines(path: str) -> list[str]:
  """Lines of a UTF-8 text file without their line ends (a final newline is optional)."""
  with open(path, "rb") as f:
    data = f.read()
  lines = data.split(b"\n")
  if lines and lines[-1] == b"":
    lines.pop()
  out = []
  for i, raw in enumerate(lines, 1):
    try:
      out.append(raw.decode("utf-8").rstrip("\r"))
    except UnicodeDecodeError as e:
      raise DataFormatError(
          f"{path}, line {i}: not valid UTF-8 ({e.reason} at byte {e.start} of the "
          f"line: {raw[max(0, e.start - 10):e.start + 10]!r}).") from e
  return out


def _load_json(path: str):
  with open(path, "rb") as f:
    data = f.read()
  try:
    return json.loads(data.decode("utf-8"))
  except UnicodeDecodeError as e:
    raise DataFormatError(f"{path}: not valid UTF-8 at byte {e.start}.") from e
  except json.JSONDecodeError as e:
    raise DataFormatError(
        f"{path}, line {e.lineno} column {e.colno}: invalid JSON ({e.msg}).") from e


def _check_images(paths, split, where):
  missing = [p for p in paths if not os.path.isfile(p)]
  if missing:
    raise FileNotFoundError(
        f"Split {split!r} ({where}): {len(missing)} of {len(paths)} image files are "
        f"missing; the first is {missing[0]} ({_listing(os.path.dirname(missing[0]))}). "
        "Check the data root and image_dir, or pass check_images=False.")


def _read_laps(root, split, image_dir, cpi):
  mapping_path = os.path.join(root, "id_mapping.json")
  ids_path = os.path.join(root, "precomp", f"{split}_ids.txt")
  caps_path = os.path.join(root, "precomp", f"{split}_caps.txt")
  _require_file(mapping_path, "LAPS id mapping")
  _require_file(ids_path, f"image id list of split {split!r}")
  _require_file(caps_path, f"caption file of split {split!r}")
  mapping = _load_json(mapping_path)
  if not isinstance(mapping, dict):
    raise DataFormatError(f"{mapping_path}: expected a JSON object "
                          f'{{"<image id>": "<file name>"}}, found {type(mapping).__name__}.')
  ids = []
  for i, line in enumerate(_read_lines(ids_path), 1):
    try:
      ids.append(int(line.strip()))
    except ValueError:
      raise DataFormatError(
          f"{ids_path}, line {i}: expected an integer image id, found {line!r}.") from None
  captions = _read_lines(caps_path)
  for i, c in enumerate(captions, 1):
    if not c.strip():
      raise DataFormatError(f"{caps_path}, line {i}: empty caption.")
  # Some releases list each image id once per caption; collapse those runs.
  if (len(ids) == len(captions) and len(ids) % cpi == 0 and len(ids) > 0
      and all(len(set(ids[k:k + cpi])) == 1 for k in range(0, len(ids), cpi))):
    ids = ids[::cpi]
  if len(captions) != cpi * len(ids):
    raise DataFormatError(
        f"Split {split!r}: {caps_path} has {len(captions)} captions but {ids_path} lists "
        f"{len(ids)} images; expected {cpi} captions per image ({cpi * len(ids)}).")
  paths = []
  for i, image_id in enumerate(ids, 1):
    name = mapping.get(str(image_id))
    if name is None:
      raise DataFormatError(
          f"{ids_path}, line {i}: image id {image_id} has no entry in {mapping_path}.")
    paths.append(os.path.join(root, image_dir, name))
  return Split(split, tuple(paths), tuple(ids), tuple(c.strip() for c in captions), cpi)


def _find_karpathy_json(root, karpathy_json):
  if karpathy_json:
    path = os.path.join(root, karpathy_json)
    _require_file(path, "Karpathy split file")
    return path
  found = sorted(glob.glob(os.path.join(root, "dataset_*.json")))
  if len(found) != 1:
    raise (FileNotFoundError if not found else DataFormatError)(
        f"Expected exactly one Karpathy split file dataset_*.json in {root}, found "
        f"{len(found)} ({', '.join(os.path.basename(f) for f in found) or 'none'}); "
        f"{_listing(root)}. Name the file with karpathy_json.")
  return found[0]


_KARPATHY_SPLITS = {"dev": ("val",), "val": ("val",), "train": ("train",),
                    "test": ("test",), "restval": ("restval",)}


def _read_karpathy(root, split, image_dir, karpathy_json, cpi):
  path = _find_karpathy_json(root, karpathy_json)
  data = _load_json(path)
  if not isinstance(data, dict) or "images" not in data:
    raise DataFormatError(f'{path}: expected a JSON object with key "images".')
  entries = data["images"]
  if not isinstance(entries, list):
    raise DataFormatError(f'{path}: "images" should be a list of entries, found '
                          f"{type(entries).__name__}.")
  coco_style = any(isinstance(e, dict) and "filepath" in e for e in entries)
  wanted = set(_KARPATHY_SPLITS.get(split, (split,)))
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
    if len(sentences) < cpi:
      raise DataFormatError(f"{path}, images[{n}] ({name}, id {image_id}): "
                            f"{len(sentences)} sentences, expected at least {cpi}.")
    for k, s in enumerate(sentences[:cpi]):  # COCO has a few images with 6-7: keep 5
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
    raise DataFormatError(f"{path}: no image in split {split!r} (Karpathy split names "
                          f"{sorted(wanted)}); the file has splits {found}.")
  return Split(split, tuple(paths), tuple(ids), tuple(captions), cpi)


def read_split(root: str, split: str, *, format: str = "laps", image_dir: str = "images",
               karpathy_json: str = "", check_images: bool = True,
               captions_per_image: int = 5) -> Split:
  """Reads one split of a data set on disk.

  Args:
    root: the data set folder.
    split: "train", "dev", "test" (or any name the layout holds, e.g. LAPS "testall").
    format: "laps" or "karpathy" (see the module docstring).
    image_dir: image folder under root.
    karpathy_json: file name under root for "karpathy"; "" = the one dataset_*.json.
    check_images: fail now, naming the first missing image file, rather than mid-epoch.
    captions_per_image: captions kept per image.

  Raises:
    FileNotFoundError: root, a split file or (with check_images) an image is missing.
    DataFormatError: a file's content does not follow the layout.
  """
  if not os.path.isdir(root):
    raise FileNotFoundError(
        f"Data root {root!r} does not exist (config.data.root). For the synthetic set, "
        "generate one with: python -m gralign_jax.data.synthetic_scenes --root DIR")
  root = os.path.abspath(root)
  if format == "laps":
    result = _read_laps(root, split, image_dir, captions_per_image)
    where = f"LAPS layout, id_mapping.json under {root}"
  elif format == "karpathy":
    result = _read_karpathy(root, split, image_dir, karpathy_json, captions_per_image)
    where = f"Karpathy layout under {root}"
  else:
    raise ValueError(f"Unknown data format {format!r}; expected 'laps' or 'karpathy'.")
  if check_images:
    _check_images(result.image_paths, split, where)
  return result
