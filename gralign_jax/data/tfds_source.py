"""A TFDS-prepared coco_captions folder, read as array_record without TensorFlow.

config.data.root is either the prepared folder itself (it holds dataset_info.json,
features.json and coco_captions-{split}.array_record-XXXXX-of-YYYYY), or a TFDS
data_dir holding coco_captions/<config>/<version>/ (the newest version is taken).
Prepare it with `tfds build coco_captions --file_format=array_record` (that needs
TensorFlow once; reading it here does not).

The folder is opened with tfds.builder_from_directory(...).as_data_source(...): the
array_record data source behind tfds.data_source. (tfds.data_source("coco_captions")
itself needs TensorFlow, because the registered coco_captions builder names tf.int64
in its feature spec; the prepared folder's features.json does not.)

Reading a split's captions means reading every record, JPEG bytes included (about
19 GB for COCO's train + restval), so the captions, ids and names found are kept in a
small index under $GRALIGN_CACHE (default ~/.cache/gralign_jax/tfds), keyed by the
folder, the split and each shard file's size and modification time: later runs read the
index instead, and a rewritten shard makes a new one.

Splits: "train" is train + restval (Karpathy's COCO training set), "dev" is val,
"test" and "testall" are Karpathy's 5K test set. Images stay JPEG bytes in the records
(SkipDecoding) and are decoded by images.decode_image_bytes, as strictly as files.
"""
import dataclasses
import glob
import hashlib
import json
import os
import tempfile
import threading

import numpy as np

from gralign_jax.data import images as images_lib
from gralign_jax.data import split as split_lib
from gralign_jax.data.split import DataFormatError

_SPLITS = {"train": ("train", "restval"), "dev": ("val",), "val": ("val",),
           "test": ("test",), "testall": ("test",), "restval": ("restval",)}
_OPEN: dict = {}  # (folder, split expression) -> data source, one per process
_OPENING = threading.Lock()


def import_tfds():
  """tensorflow_datasets, or an ImportError saying what to install."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError(
        "config.data.format='tfds' reads TFDS array_record folders with "
        "tensorflow-datasets (TensorFlow itself is not needed): pip install "
        f"tensorflow-datasets array-record ({e}).") from e
  return tfds


def _version_key(folder: str):
  try:
    return tuple(int(p) for p in os.path.basename(folder).split("."))
  except ValueError:
    return (-1,)


def find_folder(root: str, name: str = "coco_captions") -> str:
  """The prepared folder: root itself, or the newest root/name/[config/]version."""
  if os.path.isfile(os.path.join(root, "dataset_info.json")):
    return root
  found = [os.path.dirname(p) for pattern in ("*/*/dataset_info.json", "*/dataset_info.json")
           for p in glob.glob(os.path.join(root, name, pattern))]
  if not found:
    raise FileNotFoundError(
        f"No TFDS-prepared {name!r} under {root}: expected {root}/dataset_info.json or "
        f"{root}/{name}/<config>/<version>/dataset_info.json; {split_lib.listing(root)}. "
        f"Prepare it with: tfds build {name} --file_format=array_record")
  return max(found, key=_version_key)


def _data_source(folder: str, expr: str):
  """The split's data source, opened once per process, by one thread at a time: grain's
  prefetch threads load images concurrently, and two of them importing
  tensorflow_datasets at once deadlocked (Python 3.11's cached_property lock in etils'
  lazy imports against the import lock; a grain worker hung for good)."""
  key = (folder, expr)
  if key not in _OPEN:
    with _OPENING:
      if key not in _OPEN:
        tfds = import_tfds()
        builder = tfds.builder_from_directory(folder)
        _OPEN[key] = builder.as_data_source(
            expr, decoders={"image": tfds.decode.SkipDecoding()})
  return _OPEN[key]


@dataclasses.dataclass(frozen=True)
class TfdsSource:
  """Image i -> uint8 (H, W, 3), decoded from record i of a split expression."""
  folder: str
  expr: str
  kind: str = "pixels"

  def load(self, index: int) -> np.ndarray:
    try:
      record = _data_source(self.folder, self.expr)[int(index)]
    except (OSError, RuntimeError) as e:  # array_record raises RuntimeError on I/O
      raise images_lib.ImageDecodeError(
          f"Could not read {self.describe(index)}: {e}") from e
    name = record["image/filename"]
    name = name.decode("utf-8", "replace") if isinstance(name, bytes) else str(name)
    return images_lib.decode_image_bytes(record["image"],
                                         f"image {name} ({self.describe(index)})")

  def describe(self, index: int) -> str:
    return f"record {int(index)} of split {self.expr!r} in {self.folder}"


def _check_layout(builder, folder: str) -> None:
  features = builder.info.features
  keys = sorted(features.keys()) if features is not None else []
  fmt = str(getattr(builder.info, "file_format", "") or "")
  if "array_record" not in fmt.lower():
    raise DataFormatError(
        f"{folder}: prepared as {fmt or 'an unknown file format'}; reading without "
        "TensorFlow needs array_record (tfds build ... --file_format=array_record).")
  missing = [k for k in ("image", "image/id", "image/filename", "captions") if k not in keys]
  if not missing and "text" not in features["captions"].feature.keys():
    missing = ["captions/text"]
  if missing:
    raise DataFormatError(f"{folder}/features.json: missing feature(s) {missing}; "
                          f"found {keys}. Expected the coco_captions features.")


def read(root: str, split: str, cpi: int = 5, name: str = "coco_captions"
         ) -> split_lib.Split:
  """One split of a TFDS-prepared coco_captions (see the module docstring)."""
  tfds = import_tfds()
  folder = find_folder(root, name)
  builder = tfds.builder_from_directory(folder)
  _check_layout(builder, folder)
  available = list(builder.info.splits)
  wanted = _SPLITS.get(split, (split,))
  if wanted[0] not in available:
    raise FileNotFoundError(f"{folder}: no TFDS split {wanted[0]!r} for split {split!r}; "
                            f"it has {available}.")
  splits = builder.info.splits
  if not splits[wanted[0]].num_examples:
    # array_record would fail later with "Paths sequence can not be of 0 length".
    raise split_lib.empty_split_error(
        split, f"TFDS split {wanted[0]!r} in {folder} has no records (its "
        "dataset_info.json lists no shard with examples)")
  parts = [wanted[0]] + [s for s in wanted[1:]  # restval, if present and not empty
                         if s in available and splits[s].num_examples]
  for part in parts:
    problems = [(str(p), split_lib.path_problem(str(p), "file"))
                for p in splits[part].filepaths]
    missing = [p for p, problem in problems if problem == split_lib.MISSING]
    if missing:
      raise FileNotFoundError(
          f"{folder}: split {part!r} lists {len(missing)} shard file(s) that do not "
          f"exist, the first {missing[0]}; {split_lib.listing(folder)}.")
    for p, problem in problems:
      if problem:
        raise split_lib.DataPathError(f"{folder}: shard file {p} of split {part!r} "
                                      f"{problem}.")
  expr = "+".join(parts)
  source = TfdsSource(folder, expr)
  index_path = _index_path(folder, f"{expr}/{cpi}", [p for part in parts
                                          for p in splits[part].filepaths])
  try:
    with open(index_path) as f:
      paths, ids, captions = json.load(f)
  except (OSError, ValueError):
    paths, ids, captions = _scan(folder, expr, source, cpi)
    _write_index(index_path, [paths, ids, captions])
  if not paths:
    raise split_lib.empty_split_error(split, f"TFDS split {expr!r} in {folder} holds no "
                                      "records")
  return split_lib.Split(split, tuple(paths), tuple(ids), tuple(captions), cpi,
                         source=source)


def cache_dir() -> str:
  default = os.path.join(os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")),
                         "gralign_jax")
  return os.path.join(os.environ.get("GRALIGN_CACHE", default), "tfds")


def _index_path(folder: str, expr: str, shards) -> str:
  key = [os.path.abspath(folder), expr] + [
      (str(p), os.path.getsize(p), os.path.getmtime(p)) for p in shards]
  digest = hashlib.sha256(json.dumps(key).encode()).hexdigest()[:24]
  return os.path.join(cache_dir(), f"{digest}.json")


def _write_index(path: str, value) -> None:
  """Atomically (a crash leaves no half index); a read-only cache is only a cost."""
  try:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    with os.fdopen(fd, "w") as f:
      json.dump(value, f)
    os.replace(tmp, path)
  except OSError:
    pass


def _scan(folder: str, expr: str, source: TfdsSource, cpi: int):
  """Every record's name, id and captions, checked: (paths, ids, captions)."""
  ds = _data_source(folder, expr)
  paths, ids, captions = [], [], []
  for start in range(0, len(ds), 256):
    for i, record in enumerate(ds.__getitems__(list(range(start, min(start + 256, len(ds))))),
                               start):
      where = f"{folder}, {source.describe(i)}"
      filename = record["image/filename"]
      try:
        filename = filename.decode("utf-8") if isinstance(filename, bytes) else str(filename)
        texts = [t.decode("utf-8") if isinstance(t, bytes) else str(t)
                 for t in record["captions"]["text"]]
      except UnicodeDecodeError as e:
        raise DataFormatError(f"{where}: a caption or file name is not valid UTF-8 "
                              f"({e.reason} at byte {e.start}).") from e
      if len(texts) < cpi:
        raise DataFormatError(f"{where} ({filename}): {len(texts)} captions, expected "
                              f"at least {cpi}.")
      for k, t in enumerate(texts[:cpi]):
        if not t.strip():
          raise DataFormatError(f"{where} ({filename}), captions[{k}]: empty caption.")
        captions.append(t.strip())
      paths.append(f"{folder}:{expr}[{i}] ({filename})")
      ids.append(int(record["image/id"]))
  return paths, ids, captions
