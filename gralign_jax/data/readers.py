"""Reads a data set on disk, in any of the five layouts the field uses, into a `Split`.

config.data.format picks the reader; all give five captions per image (caption c
belongs to image c // 5):

- "laps" (LAPS / VSE-infinity), here: root/id_mapping.json = {"<id>": "<file under
  image_dir>"}, root/precomp/{split}_ids.txt (one image id per line) and
  root/precomp/{split}_caps.txt (one caption per line, five per image).
- "karpathy": dataset_flickr30k.json / dataset_coco.json / dataset_flickr8k.json and
  the image folder (karpathy.py).
- "flickr8k": Flickr8k as downloaded: captions.txt (Kaggle's CSV) or Flickr8k.token.txt,
  the split lists Flickr_8k.{train,dev,test}Images.txt and the image folder; listed
  images that are not on disk are passed over, counted in a warning (flickr8k.py).
- "precomp": SCAN's {split}_ims.npy BUTD region features, memory-mapped, and
  {split}_caps.txt (precomp.py).
- "tfds": a TFDS-prepared coco_captions folder, array_record, no TensorFlow
  (tfds_source.py).

Every problem a user can fix is reported with the file (and line, entry or record) it
is in; a split without images is refused here, in every format, rather than left to
fail in the evaluation. `Split`, `DataFormatError` and `DataPathError` live in
split.py and are re-exported here.
"""
import os


from gralign_jax import logs
from gralign_jax.data import flickr8k
from gralign_jax.data import karpathy
from gralign_jax.data import precomp
from gralign_jax.data import split as split_lib
# pylint: disable-next=unused-import
from gralign_jax.data.split import DataFormatError, DataPathError, Split

FORMATS = ("laps", "karpathy", "flickr8k", "precomp", "tfds")


# Short names of split.path_problem's answers, for a count per kind.
_KINDS = {split_lib.MISSING: "missing", "is a folder, expected a file": "not a file",
          "cannot be read (permission denied)": "without read permission"}


def _check_images(paths, split, where, image_folder, warn=False):
  """Every image path is a readable file (one stat each; the content is not read).

  Raises FileNotFoundError (all missing) or DataPathError naming the first path of each
  kind of problem; with warn, only logs it, unless no image at all is usable.
  """
  problems = {}  # problem -> paths, in split order
  for p in paths:
    problem = split_lib.path_problem(p, "file")
    if problem:
      problems.setdefault(problem, []).append(p)
  if not problems:
    return
  num_bad = sum(len(v) for v in problems.values())
  counts = ", ".join(f"{len(v)} {_KINDS.get(k, k)}" for k, v in problems.items())
  firsts = []
  for problem, bad in problems.items():
    first = f"{bad[0]} {problem}"
    if problem == split_lib.MISSING:
      first += f" ({split_lib.listing(os.path.dirname(bad[0]))})"
    firsts.append(first)
  message = (f"Split {split!r} ({where}): {num_bad} of {len(paths)} image files "
             f"cannot be read ({counts}): {'; '.join(firsts)}. Images are read from "
             f"{image_folder}: check config.data.root and config.data.image_dir")
  # skip_bad_images passes over a few bad files; with none usable it cannot help.
  if num_bad < len(paths):
    message += ", or set config.data.skip_bad_images=true to train without them"
  if warn and num_bad < len(paths):
    logs.warning(f"{message}.")
    return
  error = FileNotFoundError if list(problems) == [split_lib.MISSING] else DataPathError
  raise error(message + ".")


def _read_laps(root, split, image_dir, cpi):
  mapping_path = os.path.join(root, "id_mapping.json")
  ids_path = os.path.join(root, "precomp", f"{split}_ids.txt")
  caps_path = os.path.join(root, "precomp", f"{split}_caps.txt")
  split_lib.require_file(mapping_path, "LAPS id mapping")
  split_lib.require_file(ids_path, f"image id list of split {split!r}")
  split_lib.require_file(caps_path, f"caption file of split {split!r}")
  mapping = split_lib.load_json(mapping_path)
  if not isinstance(mapping, dict):
    raise DataFormatError(f"{mapping_path}: expected a JSON object "
                          f'{{"<image id>": "<file name>"}}, found {type(mapping).__name__}.')
  captions = split_lib.read_captions(caps_path)
  ids = split_lib.collapse_repeated_ids(split_lib.read_ids(ids_path), len(captions), cpi)
  if not ids and not captions:
    raise split_lib.empty_split_error(split, f"{ids_path} and {caps_path} hold no images")
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
  return Split(split, tuple(paths), tuple(ids), tuple(captions), cpi)


def read_split(root: str, split: str, *, format: str = "laps", image_dir: str = "images",
               karpathy_json: str = "", check_images: bool | str = True,
               captions_per_image: int = 5, feature_shape=(36, 2048),
               tfds_name: str = "coco_captions") -> Split:
  """Reads one split of a data set on disk.

  Args:
    root: the data set folder.
    split: "train", "dev", "test" (or any name the layout holds, e.g. LAPS "testall").
    format: one of FORMATS (see the module docstring).
    image_dir: image folder under root (laps, karpathy, flickr8k).
    karpathy_json: file name under root for "karpathy"; "" = the one dataset_*.json.
    check_images: True: fail now, naming the first missing, unreadable or folder-typed
      image path, rather than mid-epoch; "warn": log that and go on (for
      data.skip_bad_images), failing only when no image is usable; False: no check.
      Image files only (features and TFDS records are checked as they are read), and
      existence and permissions only: image_check.check_split reads the files.
    captions_per_image: captions kept per image.
    feature_shape: (regions, dims) of a "precomp" feature file.
    tfds_name: the TFDS data set under root for "tfds".

  Raises:
    FileNotFoundError: root, a split file or (with check_images) an image is missing;
      DataPathError (a FileNotFoundError) when it is there but is a folder where a file
      should be, or the reverse, or cannot be read.
    DataFormatError: a file's content does not follow the layout, or the split is empty.
  """
  problem = split_lib.path_problem(root, "folder")
  if problem == split_lib.MISSING:
    raise FileNotFoundError(
        f"Data root {root!r} does not exist (config.data.root). For the synthetic set, "
        "generate one with: python -m experiments.generate_synthetic --root=DIR")
  if problem:
    raise DataPathError(f"Data root {root!r} (config.data.root) {problem}.")
  root = os.path.abspath(root)
  if format == "laps":
    result = _read_laps(root, split, image_dir, captions_per_image)
    where = f"LAPS layout, id_mapping.json under {root}"
  elif format == "karpathy":
    result = karpathy.read(root, split, image_dir, karpathy_json, captions_per_image)
    where = f"Karpathy layout under {root}"
  elif format == "flickr8k":
    result = flickr8k.read(root, split, image_dir, captions_per_image)
    where = f"Flickr8k layout under {root}"
  elif format == "precomp":
    result = precomp.read(root, split, captions_per_image, tuple(feature_shape))
  elif format == "tfds":
    from gralign_jax.data import tfds_source  # pylint: disable=g-import-not-at-top
    result = tfds_source.read(root, split, captions_per_image, tfds_name)
  else:
    raise ValueError(f"Unknown data format {format!r} (config.data.format); expected one "
                     f"of {list(FORMATS)}.")
  if result.num_images == 0:  # each reader names its files; this catches any other way
    raise split_lib.empty_split_error(split, f"no images in the {format!r} data under "
                                      f"{root}")
  if check_images and result.source is None:
    _check_images(result.image_paths, split, where, os.path.join(root, image_dir),
                  warn=check_images == "warn")
  return result
