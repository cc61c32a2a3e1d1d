"""A fast look at every image file of a split before training: its header and its end.

Training decodes an image when it first samples it, so a corrupt file can stop a long
run hours in. `check_split` opens every file, reads its header with PIL (Image.open
parses the markers up to the pixel data and decodes nothing) and reads its last bytes:
a JPEG ends with the end-of-image marker FF D9 (trailing zero padding allowed), a PNG
with its IEND chunk. That finds the usual damage (missing, no permission, a folder
named like an image, empty, not an image, truncated) for two small reads per file.

A file whose end looks wrong is then decoded in full, and reported only if that fails:
the check reports the files that images.decode_image, and so training, fails on, and
no others (a JPEG with bytes after FF D9, or a PNG cut after complete pixel data,
decodes and passes). Formats other than JPEG and PNG, rare in these data sets, are
decoded in full. What it cannot see is damage inside a file of the right length
(corrupt entropy-coded data): decode_image still stops on it when it is read, or passes
over it with data.skip_bad_images, and `inspect_data --check_images` decodes everything.

Cost (2 shared CPU cores, files in the page cache, 16 threads for both; measured with
`python benchmarks/image_check.py --root=DIR --decode`): on the 9,500 64 px
JPEGs of the synthetic set, 10,000-14,000 images/s against 3,300-5,800 for a full
decode; on 2,000 500 px JPEGs (67 KB, the size of a Flickr30K or COCO photo), 8,500-
13,000 images/s against 360-410. COCO's 123K images: about 10 s, against 5 minutes.
From a cold network disk the opens dominate, which the threads overlap.
"""
import concurrent.futures
import dataclasses
import os
import time
from typing import Sequence

from PIL import Image

from gralign_jax import paths
from gralign_jax.data import images as images_lib
from gralign_jax.data import split as split_lib

_TAIL = 64  # bytes read from the end of each file
_JPEG_END = b"\xff\xd9"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk type and its CRC
_JPEG_FORMATS = ("JPEG", "MPO")  # MPO: a camera JPEG holding several pictures


@dataclasses.dataclass
class CheckReport:
  """What check_split found.

  Attributes:
    split: the split's name.
    checked: image files looked at (0 for a split read from a source: precomp
      features, TFDS records, which have no image files; see `note`).
    bad: (path, reason) of each unreadable file, in split order.
    seconds: wall time of the check.
    note: why nothing was checked, when checked is 0.
  """
  split: str
  checked: int
  bad: list[tuple[str, str]]
  seconds: float
  note: str = ""

  @property
  def images_per_second(self) -> float:
    return self.checked / max(self.seconds, 1e-9)

  def summary(self, limit: int = 5) -> str:
    """One line: the count, and the first `limit` files with their reasons."""
    if not self.checked:
      return f"Split {self.split!r}: no image files checked ({self.note})."
    head = (f"Split {self.split!r}: {len(self.bad)} of {self.checked} image files "
            f"unreadable (checked in {self.seconds:.1f} s)")
    if not self.bad:
      return head + "."
    listed = "; ".join(f"{p} {r}" for p, r in self.bad[:limit])
    more = f"; and {len(self.bad) - limit} more" if len(self.bad) > limit else ""
    return f"{head}: {listed}{more}."


def decode_failure(path: str) -> str | None:
  """None if images.decode_image reads the file, else why not (without the path)."""
  try:
    images_lib.decode_image(path)
  except images_lib.ImageDecodeError as e:
    cause = e.__cause__
    return f"{type(cause).__name__}: {cause}" if cause is not None else str(e)
  return None


def check_file(path: str) -> str | None:
  """None if the file looks whole, else why it cannot be read (completes "<path> ...").

  One open, a header parse and one read of the last bytes; a full decode only for a
  file whose end looks wrong, or in a format other than JPEG and PNG.
  """
  try:
    special = paths.not_a_regular_file(path)
    if special:
      return special
    with open(path, "rb") as f:
      size = os.fstat(f.fileno()).st_size
      if size == 0:
        return "is empty (0 bytes)"
      try:
        with Image.open(f) as img:
          fmt = img.format
      except Image.DecompressionBombError as e:
        return f"is implausibly large: {e}"
      except (OSError, SyntaxError, ValueError, EOFError) as e:
        # UnidentifiedImageError (an OSError): not an image at all; others: a bad header.
        return f"is not a readable image ({type(e).__name__}: {e})"
      f.seek(max(0, size - _TAIL))
      tail = f.read()
  except OSError as e:
    return images_lib.unreadable_reason(e)
  if fmt in _JPEG_FORMATS:
    if tail.rstrip(b"\x00").endswith(_JPEG_END):
      return None
    missing = "the JPEG end-of-image marker FF D9"
  elif fmt == "PNG":
    if tail.endswith(_PNG_END):
      return None
    missing = "the PNG IEND chunk"
  else:
    why = decode_failure(path)
    return None if why is None else f"does not decode ({fmt}: {why})"
  why = decode_failure(path)
  return None if why is None else f"is truncated or corrupt: it ends without {missing} " \
                                  f"and does not decode ({why})"


def check_files(paths: Sequence[str], workers: int = 16) -> list[tuple[str, str]]:
  """check_file on every path, `workers` threads at a time -> [(path, reason)], in order.

  Threads, because the work is mostly waiting on the disk (or a network file system);
  PIL's header parsing holds the GIL, so on a local disk 2-4 threads are as fast.
  """
  if workers <= 1 or len(paths) < 2:
    reasons = [check_file(p) for p in paths]
  else:
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
      reasons = list(pool.map(check_file, paths))
  return [(p, r) for p, r in zip(paths, reasons) if r is not None]


def check_split(split: split_lib.Split, workers: int = 16) -> CheckReport:
  """Header and end of every image file of a split (see the module docstring).

  A split read from a source (format "precomp" features, "tfds" records) has no image
  files: the report has checked=0 and says so in `note`; its records are checked as
  they are read (FeatureSource / TfdsSource raise ImageDecodeError naming the record).
  """
  if split.source is not None:
    return CheckReport(split.name, 0, [], 0.0, note=(
        f"format with {split.kind} read from {type(split.source).__name__}, not image "
        "files; records are checked as they are read"))
  t0 = time.perf_counter()
  bad = check_files(split.image_paths, workers)
  return CheckReport(split.name, split.num_images, bad, time.perf_counter() - t0)
