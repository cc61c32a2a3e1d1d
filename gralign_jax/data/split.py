"""The record every reader returns (`Split`), and the helpers the readers share.

A `Split` is one split of a data set: images and their captions, caption c belonging
to image c // captions_per_image. Where image i comes from depends on the format:

- image files (laps, karpathy): `image_paths[i]`, decoded with images.decode_image;
- an `ImageSource` (precomp, tfds): `source.load(i)`, and `image_paths[i]` is only a
  name for messages ("train_ims.npy[17]", "coco_captions-train.array_record[17] ...").

Sources are small picklable objects (grain worker processes receive them) that open
their files lazily, once per process.
"""
import dataclasses
import json
import os
import stat
from typing import Any, Protocol

import numpy as np

from gralign_jax.data import images as images_lib


class DataFormatError(ValueError):
  """A data set file exists but its content does not follow the expected layout."""


class DataPathError(FileNotFoundError):
  """A data set path cannot be used: a folder where a file should be (or the reverse),
  or no permission to read it.

  A FileNotFoundError, so that whoever handles missing data files (the experiment
  mains print them in one line) handles these the same way.
  """


class ImageSource(Protocol):
  """Where a split's images live when they are not one file each.

  kind: "pixels" (load -> uint8 (H, W, 3)) or "features" (load -> float32 (R, D)).
  """
  kind: str

  def load(self, index: int) -> np.ndarray:
    """Image `index` of the split (raises images.ImageDecodeError naming the record)."""

  def describe(self, index: int) -> str:
    """Where image `index` lives, for messages."""


@dataclasses.dataclass(frozen=True)
class Split:
  """One split: images and their captions, caption c -> image c // captions_per_image.

  Attributes:
    name: "train", "dev", "test", ...
    image_paths: one per image: the file (no source) or a name for messages (source).
    image_ids: the data set's ids, one per image.
    captions: captions_per_image per image, in image order.
    captions_per_image: 5 for Flickr30K, MS-COCO and the synthetic set.
    source: None for image files, else the ImageSource that image i is read from
      (indexed by position, so a prefix of the split keeps the same source).
  """
  name: str
  image_paths: tuple[str, ...]
  image_ids: tuple[int, ...]
  captions: tuple[str, ...]
  captions_per_image: int = 5
  source: Any = None

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

  def first_images(self, num_images: int) -> "Split":
    """The first num_images images with their captions (<= 0: all of them); a source
    is indexed by position, so it stays as it is."""
    if num_images <= 0 or num_images >= self.num_images:
      return self
    return dataclasses.replace(
        self, image_paths=self.image_paths[:num_images],
        image_ids=self.image_ids[:num_images],
        captions=self.captions[:num_images * self.captions_per_image])

  @property
  def kind(self) -> str:
    """"pixels" (uint8 (H, W, 3) images) or "features" (float32 (R, D) regions)."""
    return "pixels" if self.source is None else self.source.kind

  def load_image(self, index: int) -> np.ndarray:
    """Image `index`: uint8 (H, W, 3), or float32 (R, D) for a features split.

    Raises:
      images.ImageDecodeError: the image is missing, corrupt or truncated (named).
    """
    if self.source is None:
      return images_lib.decode_image(self.image_paths[index])
    return self.source.load(index)


# ------------------------------------------------------------------ shared helpers


def listing(folder: str) -> str:
  """What a folder holds (the first 20 names), for "missing file" messages."""
  try:
    names = sorted(os.listdir(folder))
  except FileNotFoundError:
    return "(the folder does not exist)"
  except NotADirectoryError:
    return f"({folder} is a file, not a folder)"
  except PermissionError:
    return "(the folder cannot be read: permission denied)"
  except OSError as e:
    return f"(the folder cannot be read: {e.strerror or e})"
  if not names:
    return "(the folder is empty)"
  more = f" and {len(names) - 20} more" if len(names) > 20 else ""
  return "it holds: " + ", ".join(names[:20]) + more


MISSING = "does not exist"


def path_problem(path: str, expect: str = "file") -> str | None:
  """Why `path` cannot be read as a `expect` ("file" or "folder"), or None if it can.

  One stat and one access check, no read: cheap enough for every image of a split.
  The answer completes "<path> ...": MISSING, "is a folder, expected a file", "is a
  file, expected a folder", "cannot be read (permission denied)", ...
  """
  try:
    st = os.stat(path)
  except FileNotFoundError:
    return MISSING
  except NotADirectoryError:
    return f"{MISSING} (a folder on its path is a file)"
  except PermissionError:  # a folder above it may not be entered
    return "cannot be reached (permission denied on a folder above it)"
  except OSError as e:
    return f"cannot be read ({e.strerror or e})"
  if expect == "folder":
    if not stat.S_ISDIR(st.st_mode):
      return "is a file, expected a folder"
    if not os.access(path, os.R_OK | os.X_OK):
      return "cannot be read (permission denied)"
    return None
  if stat.S_ISDIR(st.st_mode):
    return "is a folder, expected a file"
  if not stat.S_ISREG(st.st_mode):  # a FIFO would block the reader forever
    return "is not a regular file"
  if not os.access(path, os.R_OK):
    return "cannot be read (permission denied)"
  return None


def require_file(path: str, what: str) -> None:
  """Raises FileNotFoundError (missing) or DataPathError naming `what` and `path`."""
  problem = path_problem(path, "file")
  if problem == MISSING:
    raise FileNotFoundError(
        f"Missing {what}: {path} does not exist; {listing(os.path.dirname(path))}.")
  if problem:
    raise DataPathError(f"Cannot read the {what}: {path} {problem}.")


def empty_split_error(split: str, where: str) -> DataFormatError:
  """The error for a split without images: `where` says which files hold none.

  Refused at read time: an empty split would train (or be skipped) and then fail
  inside the evaluation, far from the file that caused it.
  """
  return DataFormatError(
      f"Split {split!r} is empty: {where}. Check that the files are complete, or name "
      "another split (config.data.train_split, dev_split, test_split).")


def read_lines(path: str) -> list[str]:
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


def read_captions(path: str) -> list[str]:
  """Caption lines, stripped; an empty or whitespace-only line is an error."""
  captions = read_lines(path)
  for i, c in enumerate(captions, 1):
    if not c.strip():
      raise DataFormatError(f"{path}, line {i}: empty caption.")
  return [c.strip() for c in captions]


def read_ids(path: str) -> list[int]:
  """One integer image id per line."""
  ids = []
  for i, line in enumerate(read_lines(path), 1):
    try:
      ids.append(int(line.strip()))
    except ValueError:
      raise DataFormatError(
          f"{path}, line {i}: expected an integer image id, found {line!r}.") from None
  return ids


def collapse_repeated_ids(ids: list[int], num_captions: int, cpi: int) -> list[int]:
  """Some releases list each image id once per caption; those runs become one id."""
  if (len(ids) == num_captions and len(ids) % cpi == 0 and len(ids) > 0
      and all(len(set(ids[k:k + cpi])) == 1 for k in range(0, len(ids), cpi))):
    return ids[::cpi]
  return ids


def load_json(path: str):
  with open(path, "rb") as f:
    data = f.read()
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as e:
    line = data.count(b"\n", 0, e.start) + 1
    raise DataFormatError(f"{path}, line {line}: not valid UTF-8 ({e.reason} at byte "
                          f"{e.start}).") from e
  try:
    return json.loads(text)
  except json.JSONDecodeError as e:
    raise DataFormatError(
        f"{path}, line {e.lineno} column {e.colno}: invalid JSON ({e.msg}).") from e
