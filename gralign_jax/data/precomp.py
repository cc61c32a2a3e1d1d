"""SCAN's precomputed bottom-up-attention (BUTD) region features, memory-mapped.

Layout, in root or root/precomp (the f30k_precomp / coco_precomp folders of SCAN,
VSRN, SGRAF and their successors):
  {split}_ims.npy   float32 (N, 36, 2048): 36 regions of 2048 dims per image;
  {split}_caps.txt  one caption per line, 5 per image (caption c -> image c // 5);
  {split}_ids.txt   optional image ids, one per image (or one per caption).
Some releases store one feature row per caption (N = number of captions, the five rows
of an image identical, as VSE++'s precomp files): image i is then row 5 i.

COCO's splits are train, dev, test (1K) and testall (the 5K set, evaluated as 5K and as
five 1K folds). "dev" keeps its first 5,000 captions (1,000 images), as SCAN does:
the dev files hold a few more, and evaluating on them all is slow.

The feature file is never read whole: its header is checked here (shape, dtype, no
pickled objects, length on disk), and records read one image at a time through
np.load(mmap_mode="r"), so memory holds a batch, not a 30 GB file.
"""
import dataclasses
import os
from typing import Callable

import numpy as np

from gralign_jax.data import images as images_lib
from gralign_jax.data import split as split_lib
from gralign_jax.data.split import DataFormatError

DEV_MAX_CAPTIONS = 5000

_OPEN: dict[str, np.ndarray] = {}  # path -> memory map, one per process


def _open(path: str) -> np.ndarray:
  if path not in _OPEN:
    _OPEN[path] = np.load(path, mmap_mode="r", allow_pickle=False)
  return _OPEN[path]


@dataclasses.dataclass(frozen=True)
class FeatureSource:
  """Image i -> float32 (R, D), row i * stride of a memory-mapped {split}_ims.npy."""
  path: str
  stride: int = 1
  kind: str = "features"

  def load(self, index: int) -> np.ndarray:
    row = int(index) * self.stride
    try:
      return np.array(_open(self.path)[row], dtype=np.float32)  # a copy of one image
    except (OSError, ValueError) as e:
      raise images_lib.ImageDecodeError(
          f"Could not read features {self.describe(index)}: {e}") from e

  def describe(self, index: int) -> str:
    return f"{self.path}[{int(index) * self.stride}]"


def check_features(path: str, feature_shape=(36, 2048)) -> int:
  """Validates a feature file from its header alone -> the number of rows N.

  Raises:
    DataFormatError: not a .npy file, pickled objects, not float32, not
      (N, *feature_shape), or shorter on disk than its header says (truncated).
  """
  with open(path, "rb") as f:
    try:
      version = np.lib.format.read_magic(f)
      read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                     else np.lib.format.read_array_header_2_0)
      shape, _, dtype = read_header(f)
    except ValueError as e:
      raise DataFormatError(f"{path}: not a NumPy .npy file ({e}).") from e
    offset = f.tell()
  expected = f"float32 (N, {', '.join(map(str, feature_shape))})"
  if dtype.hasobject:
    raise DataFormatError(
        f"{path}: holds Python objects ({dtype}), which np.load could only unpickle; "
        f"pickles are refused (allow_pickle=False). Expected a plain {expected} array, "
        "e.g. np.save(path, np.asarray(features, np.float32)).")
  if dtype != np.float32:
    raise DataFormatError(
        f"{path}: dtype {dtype}, expected {expected}. Convert it once with "
        "np.save(path, np.load(path, mmap_mode='r').astype(np.float32)).")
  if len(shape) != 1 + len(feature_shape) or tuple(shape[1:]) != tuple(feature_shape):
    raise DataFormatError(f"{path}: shape {tuple(shape)}, expected {expected} "
                          f"(config.data.feature_shape={tuple(feature_shape)}).")
  need = offset + int(np.prod(shape)) * dtype.itemsize
  have = os.path.getsize(path)
  if have < need:
    raise DataFormatError(f"{path}: truncated: the header says {tuple(shape)} float32 "
                          f"({need} bytes with the header), the file has {have} bytes.")
  return int(shape[0])


def find_folder(root: str, split: str) -> str:
  """root or root/precomp, whichever holds {split}_ims.npy."""
  for folder in (root, os.path.join(root, "precomp")):
    path = os.path.join(folder, f"{split}_ims.npy")
    if os.path.lexists(path):
      split_lib.require_file(path, f"feature file of split {split!r}")
      return folder
  raise FileNotFoundError(
      f"Missing feature file of split {split!r}: {split}_ims.npy is neither in {root} "
      f"({split_lib.listing(root)}) nor in {os.path.join(root, 'precomp')}. The "
      "'precomp' format expects SCAN's {split}_ims.npy and {split}_caps.txt.")


def read(root: str, split: str, cpi: int = 5, feature_shape=(36, 2048)) -> split_lib.Split:
  """One split of a precomp folder (see the module docstring)."""
  folder = find_folder(root, split)
  ims = os.path.join(folder, f"{split}_ims.npy")
  caps = os.path.join(folder, f"{split}_caps.txt")
  split_lib.require_file(caps, f"caption file of split {split!r}")
  rows = check_features(ims, feature_shape)
  captions = split_lib.read_captions(caps)
  if rows == 0 and not captions:
    raise split_lib.empty_split_error(split, f"{ims} holds 0 feature rows and {caps} no "
                                      "captions")
  if len(captions) == cpi * rows:
    stride, num_images = 1, rows
  elif len(captions) == rows and rows % cpi == 0:
    stride, num_images = cpi, rows // cpi  # one row per caption
  else:
    raise DataFormatError(
        f"Split {split!r}: {ims} holds {rows} feature rows but {caps} has "
        f"{len(captions)} captions; expected {cpi} captions per image ({cpi * rows}), "
        "or one row per caption.")
  ids_path = os.path.join(folder, f"{split}_ids.txt")
  if os.path.lexists(ids_path):  # optional, but if there, it must be readable
    split_lib.require_file(ids_path, f"image id list of split {split!r}")
    ids = split_lib.collapse_repeated_ids(split_lib.read_ids(ids_path), len(captions), cpi)
    if len(ids) != num_images:
      raise DataFormatError(f"Split {split!r}: {ids_path} lists {len(ids)} ids for "
                            f"{num_images} images in {ims}.")
  else:
    ids = list(range(num_images))
  if split == "dev" and len(captions) > DEV_MAX_CAPTIONS:
    num_images = DEV_MAX_CAPTIONS // cpi
    captions, ids = captions[:num_images * cpi], ids[:num_images]
  names = tuple(f"{ims}[{i * stride}]" for i in range(num_images))
  return split_lib.Split(split, names, tuple(ids), tuple(captions), cpi,
                         source=FeatureSource(ims, stride))


def write_precomp(folder: str, split: split_lib.Split,
                  features: Callable[[int], np.ndarray], name: str | None = None,
                  feature_shape=(36, 2048)) -> None:
  """SCAN's layout for one split, what read() reads: {name}_ims.npy (written row by row
  through a memory map, so a split larger than memory can be written), {name}_caps.txt
  and {name}_ids.txt; features(i) -> float32 feature_shape for image i."""
  name = name or split.name
  os.makedirs(folder, exist_ok=True)
  ims = np.lib.format.open_memmap(os.path.join(folder, f"{name}_ims.npy"), mode="w+",
                                  dtype=np.float32,
                                  shape=(split.num_images, *feature_shape))
  for i in range(split.num_images):
    ims[i] = features(i)
  ims.flush()
  del ims
  with open(os.path.join(folder, f"{name}_caps.txt"), "w", encoding="utf-8") as f:
    f.write("".join(c + "\n" for c in split.captions))
  with open(os.path.join(folder, f"{name}_ids.txt"), "w", encoding="utf-8") as f:
    f.write("".join(f"{i}\n" for i in split.image_ids))
