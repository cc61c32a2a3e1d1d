"""The SCAN precomp reader: round trip, every malformed feature file, memory budget."""
import os
import pickle
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from gralign_jax.data import images
from gralign_jax.data import precomp
from gralign_jax.data import readers

DataFormatError = readers.DataFormatError
SHAPE = (6, 16)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _feats(n, seed=0):
  return np.random.default_rng(seed).normal(size=(n, *SHAPE)).astype(np.float32)


def _write(folder, split, n, captions=None, ids=None, feats=None):
  os.makedirs(folder, exist_ok=True)
  np.save(os.path.join(folder, f"{split}_ims.npy"), _feats(n) if feats is None else feats)
  captions = captions or [f"caption {k} of image {k // 5}" for k in range(5 * n)]
  with open(os.path.join(folder, f"{split}_caps.txt"), "w") as f:
    f.write("".join(c + "\n" for c in captions))
  if ids is not None:
    with open(os.path.join(folder, f"{split}_ids.txt"), "w") as f:
      f.write("".join(f"{i}\n" for i in ids))


def read(root, split="train"):
  return readers.read_split(str(root), split, format="precomp", feature_shape=SHAPE)


def test_round_trip_and_per_process_memory_map(tmp_path):
  _write(tmp_path, "train", 4, ids=[10, 11, 12, 13])
  s = read(tmp_path)
  assert s.kind == "features" and s.num_images == 4 and s.num_captions == 20
  assert s.image_ids == (10, 11, 12, 13)
  assert s.captions[7] == "caption 7 of image 1"
  expected = _feats(4)
  for i in range(4):
    out = s.load_image(i)
    assert out.dtype == np.float32 and out.shape == SHAPE
    np.testing.assert_array_equal(out, expected[i])
  assert s.image_paths[2] == f"{tmp_path}/train_ims.npy[2]"
  assert isinstance(precomp._open(s.source.path), np.memmap)  # never loaded whole
  # The source crosses to grain workers by pickle, as a path, not as the array.
  assert len(pickle.dumps(s.source)) < 500
  assert pickle.loads(pickle.dumps(s)) == s


def test_precomp_subfolder_and_no_ids(tmp_path):
  _write(tmp_path / "precomp", "test", 2)
  s = read(tmp_path, "test")
  assert s.image_ids == (0, 1)


def test_one_row_per_caption_release(tmp_path):
  """VSE++-style files repeat each image's features once per caption."""
  feats = np.repeat(_feats(3), 5, axis=0)
  _write(tmp_path, "train", 15, captions=[f"c{k}" for k in range(15)], feats=feats,
         ids=[7] * 5 + [8] * 5 + [9] * 5)
  s = read(tmp_path)
  assert s.num_images == 3 and s.image_ids == (7, 8, 9)
  np.testing.assert_array_equal(s.load_image(2), _feats(3)[2])
  assert s.image_paths[2].endswith("train_ims.npy[10]")


def test_dev_keeps_its_first_5000_captions(tmp_path):
  _write(tmp_path, "dev", 1014)
  s = read(tmp_path, "dev")
  assert s.num_images == 1000 and s.num_captions == 5000
  assert s.captions[-1] == "caption 4999 of image 999"
  _write(tmp_path, "test", 1014)
  assert read(tmp_path, "test").num_images == 1014  # only dev is cut


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist"):
    read(tmp_path / "nowhere")
  _write(tmp_path, "train", 2)
  with pytest.raises(FileNotFoundError, match=r"dev_ims\.npy is neither in .*it holds: "
                     r"train_caps\.txt, train_ims\.npy"):
    read(tmp_path, "dev")
  os.remove(tmp_path / "train_caps.txt")
  with pytest.raises(FileNotFoundError, match=r"caption file of split 'train'.*"
                     r"train_caps\.txt does not exist"):
    read(tmp_path)


@pytest.mark.parametrize("array, message", [
    (np.zeros((2, 6, 8), np.float32), r"shape \(2, 6, 8\), expected float32 \(N, 6, 16\)"),
    (np.zeros((2, 96), np.float32), r"shape \(2, 96\), expected"),
    (np.zeros((2, 6, 16), np.float64), r"dtype float64, expected float32 \(N, 6, 16\)"),
    (np.zeros((2, 6, 16), np.float16), r"dtype float16"),
    (np.array([{"a": 1}, None], dtype=object), r"holds Python objects.*allow_pickle=False"),
])
def test_wrong_feature_files_are_refused(tmp_path, array, message):
  _write(tmp_path, "train", 2)
  np.save(tmp_path / "train_ims.npy", array, allow_pickle=True)
  with pytest.raises(DataFormatError, match=r"train_ims\.npy: " + message):
    read(tmp_path)


def test_truncated_and_foreign_files(tmp_path):
  _write(tmp_path, "train", 3)
  path = tmp_path / "train_ims.npy"
  data = path.read_bytes()
  path.write_bytes(data[:-100])
  with pytest.raises(DataFormatError, match=r"train_ims\.npy: truncated: the header says "
                     rf"\(3, 6, 16\) float32 \({len(data)} bytes.*{len(data) - 100} bytes"):
    read(tmp_path)
  path.write_bytes(b"PK\x03\x04 a zip, not an npy")
  with pytest.raises(DataFormatError, match=r"train_ims\.npy: not a NumPy \.npy file"):
    read(tmp_path)


def test_rows_and_captions_out_of_step(tmp_path):
  _write(tmp_path, "train", 3, captions=[f"c{k}" for k in range(14)])
  with pytest.raises(DataFormatError, match=r"train_ims\.npy holds 3 feature rows but "
                     r".*train_caps\.txt has 14 captions; expected 5 captions per image "
                     r"\(15\)"):
    read(tmp_path)
  _write(tmp_path, "train", 3, ids=[1, 2])
  with pytest.raises(DataFormatError, match=r"train_ids\.txt lists 2 ids for 3 images"):
    read(tmp_path)


def test_bad_captions(tmp_path):
  caps = [f"c{k}" for k in range(10)]
  caps[6] = " \t "
  _write(tmp_path, "train", 2, captions=caps)
  with pytest.raises(DataFormatError, match=r"train_caps\.txt, line 7: empty caption"):
    read(tmp_path)
  with open(tmp_path / "train_caps.txt", "wb") as f:
    f.write(b"".join(b"c%d\n" % k for k in range(9)) + b"caf\xe9\n")
  with pytest.raises(DataFormatError, match=r"train_caps\.txt, line 10: not valid UTF-8"):
    read(tmp_path)


def test_a_file_cut_short_after_reading_names_the_row(tmp_path):
  """E.g. still being copied when training started: the record read fails, named."""
  _write(tmp_path, "train", 3)
  s = read(tmp_path)
  path = tmp_path / "train_ims.npy"
  path.write_bytes(path.read_bytes()[:-100])
  with pytest.raises(images.ImageDecodeError,
                     match=r"Could not read features .*train_ims\.npy\[1\]"):
    s.load_image(1)


def test_feature_file_larger_than_the_memory_budget(tmp_path):
  """A 512 MiB feature file, read in full by a process allowed 96 MiB more than it
  holds at start: the reader streams rows through the memory map. The same process
  cannot np.load the file, so the budget is real."""
  n, shape = 1024, (64, 2048)  # 512 KiB per image, 512 MiB in all
  path = tmp_path / "train_ims.npy"
  ims = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, *shape))
  ims[::97] = 1.0  # a few rows with content; the rest is a sparse hole on disk
  ims.flush()
  del ims
  with open(tmp_path / "train_caps.txt", "w") as f:
    f.write("".join(f"caption {k}\n" for k in range(5 * n)))
  script = textwrap.dedent(f"""
      import resource, numpy as np
      from gralign_jax.data import readers
      def data_bytes():
        for line in open("/proc/self/status"):
          if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
      budget = 96 << 20
      limit = data_bytes() + budget
      resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
      s = readers.read_split({str(tmp_path)!r}, "train", format="precomp",
                             feature_shape={shape})
      total = 0.0
      for i in range(s.num_images):  # every row, one at a time
        total += float(s.load_image(i)[0, 0])
      print("sum", total)
      try:
        np.load({str(path)!r})
        print("loaded whole")
      except MemoryError:
        print("whole file refused")
  """)
  out = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  assert f"sum {float(len(range(0, n, 97)))}" in out.stdout
  assert "whole file refused" in out.stdout


def test_empty_split_is_refused(tmp_path):
  _write(tmp_path, "dev", 0)
  with pytest.raises(DataFormatError) as e:
    read(tmp_path, "dev")
  assert str(e.value) == (
      f"Split 'dev' is empty: {tmp_path}/dev_ims.npy holds 0 feature rows and "
      f"{tmp_path}/dev_caps.txt no captions. Check that the files are complete, or name "
      "another split (config.data.train_split, dev_split, test_split).")


def test_folders_where_files_should_be(tmp_path):
  _write(tmp_path, "train", 2, ids=[4, 5])
  os.remove(tmp_path / "train_ids.txt")
  os.mkdir(tmp_path / "train_ids.txt")  # optional, but not to be silently skipped
  with pytest.raises(readers.DataPathError, match=r"image id list of split 'train': "
                     r".*train_ids\.txt is a folder, expected a file\.$"):
    read(tmp_path)
  os.remove(tmp_path / "train_ims.npy")
  os.mkdir(tmp_path / "train_ims.npy")
  with pytest.raises(readers.DataPathError, match=r"feature file of split 'train': "
                     r".*train_ims\.npy is a folder, expected a file\.$"):
    read(tmp_path)
