"""image_check: the header-and-end check of every image file finds what training would
stop on (truncated, empty, not an image, a folder, unreadable) and passes good files."""
import io
import os

import numpy as np
from PIL import Image
import pytest

from gralign_jax.data import image_check
from gralign_jax.data import images
from gralign_jax.data import precomp
from gralign_jax.data import readers


def _encoded(fmt: str, size: int = 48) -> bytes:
  rng = np.random.default_rng(0)
  pixels = (rng.random((size, size, 3)) * 255).astype(np.uint8)
  out = io.BytesIO()
  Image.fromarray(pixels).save(out, fmt)
  return out.getvalue()


def test_every_good_image_of_a_generated_set_passes(smoke_root):
  for name in ("train", "dev", "test"):
    split = readers.read_split(smoke_root, name)
    report = image_check.check_split(split, workers=4)
    assert report.bad == [] and report.checked == split.num_images > 0
    assert report.summary() == (f"Split {name!r}: 0 of {split.num_images} image files "
                                f"unreadable (checked in {report.seconds:.1f} s).")


def test_finds_each_kind_of_bad_file(tmp_path, monkeypatch):
  jpeg, png = _encoded("JPEG"), _encoded("PNG")
  files = {
      "good.jpg": jpeg,
      "padded.jpg": jpeg + b"\0" * 100,  # zero padding after FF D9: decodes, passes
      "trailer.jpg": jpeg + b"camera trailer",  # bytes after FF D9: decodes, passes
      "good.png": png,
      "truncated.jpg": jpeg[:len(jpeg) // 2],
      "no_eoi.jpg": jpeg[:-2],  # only the end marker missing: PIL refuses it too
      "truncated.png": png[:len(png) // 2],
      "empty.jpg": b"",
      "text.jpg": b"a caption, not a picture\n" * 4,
      "unreadable.jpg": jpeg,
  }
  for name, data in files.items():
    (tmp_path / name).write_bytes(data)
  (tmp_path / "folder.jpg").mkdir()
  real_open = open

  def fake_open(path, *args, **kwargs):  # what a user without read permission meets
    if str(path).endswith("unreadable.jpg"):
      raise PermissionError(13, "Permission denied", path)
    return real_open(path, *args, **kwargs)

  monkeypatch.setattr(image_check, "open", fake_open, raising=False)
  names = sorted(files) + ["folder.jpg", "missing.jpg"]
  bad = dict(image_check.check_files([str(tmp_path / n) for n in names], workers=4))
  bad = {os.path.basename(p): reason for p, reason in bad.items()}
  assert sorted(bad) == ["empty.jpg", "folder.jpg", "missing.jpg", "no_eoi.jpg",
                         "text.jpg", "truncated.jpg", "truncated.png", "unreadable.jpg"]
  assert bad["empty.jpg"] == "is empty (0 bytes)"
  assert bad["folder.jpg"] == "is a folder, expected a file"
  assert bad["missing.jpg"] == "does not exist"
  assert bad["unreadable.jpg"] == "cannot be read (permission denied)"
  assert bad["text.jpg"].startswith("is not a readable image (UnidentifiedImageError")
  assert bad["truncated.jpg"].startswith(
      "is truncated or corrupt: it ends without the JPEG end-of-image marker FF D9 and "
      "does not decode (OSError: image file is truncated")
  assert bad["no_eoi.jpg"].startswith("is truncated or corrupt: it ends without the JPEG")
  assert bad["truncated.png"].startswith("is truncated or corrupt: it ends without the "
                                         "PNG IEND chunk and does not decode")
  # Each file it reports, decode_image (and so training) refuses; each it passes, reads.
  for name in names:
    path = str(tmp_path / name)
    if name in bad and name != "unreadable.jpg":
      with pytest.raises(images.ImageDecodeError):
        images.decode_image(path)
    elif name not in bad:
      assert images.decode_image(path).shape == (48, 48, 3)


def test_split_report_lists_bad_files_in_order(tmp_path):
  paths, jpeg = [], _encoded("JPEG")
  for i in range(6):
    path = tmp_path / f"{i}.jpg"
    path.write_bytes(jpeg[:len(jpeg) * 2 // 3] if i in (1, 4) else jpeg)
    paths.append(str(path))
  split = readers.Split("dev", tuple(paths), tuple(range(6)), ("c",) * 30)
  report = image_check.check_split(split, workers=1)
  assert report.checked == 6 and [p for p, _ in report.bad] == [paths[1], paths[4]]
  assert report.images_per_second > 0
  summary = report.summary(limit=1)
  assert summary.startswith("Split 'dev': 2 of 6 image files unreadable (checked in ")
  assert f": {paths[1]} is truncated or corrupt" in summary
  assert summary.endswith("; and 1 more.") and paths[4] not in summary


def test_splits_without_image_files_are_not_checked():
  source = precomp.FeatureSource("/nowhere/dev_ims.npy")
  split = readers.Split("dev", ("/nowhere/dev_ims.npy[0]",), (0,), ("c",) * 5,
                        source=source)
  report = image_check.check_split(split)
  assert (report.checked, report.bad) == (0, [])
  assert report.summary() == (
      "Split 'dev': no image files checked (format with features read from "
      "FeatureSource, not image files; records are checked as they are read).")
