"""The TFDS coco_captions reader (array_record, no TensorFlow) on fixtures written here."""
import dataclasses
import glob
import json
import os
import shutil
import sys

import numpy as np
import pytest

from gralign_jax.data import images
from gralign_jax.data import readers
from gralign_jax.data import synthetic
from gralign_jax.data import tfds_source
import layout_writers as writers  # tests/, beside this file

pytest.importorskip("tensorflow_datasets")
DataFormatError = readers.DataFormatError


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("syn") / "root")
  synthetic.generate(root, num_train=6, num_dev=2, num_test=3, image_size=32)
  return {s: readers.read_split(root, s) for s in ("train", "dev", "test")}


@pytest.fixture(scope="module")
def prepared(syn, tmp_path_factory):
  """data_dir/coco_captions/2014/1.1.0 with train (4 images), restval (2), val, test."""
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  train = syn["train"]
  head = lambda s, a, b: dataclasses.replace(  # images a..b-1 of a split
      s, image_paths=s.image_paths[a:b], image_ids=s.image_ids[a:b],
      captions=s.captions[5 * a:5 * b])
  folder = writers.write_tfds(data_dir, {"train": head(train, 0, 4),
                                         "restval": head(train, 4, 6),
                                         "dev": syn["dev"], "test": syn["test"]})
  return data_dir, folder


def by_id(split):
  return {i: (split.captions[5 * k:5 * k + 5], k) for k, i in enumerate(split.image_ids)}


def test_round_trip_against_the_files(syn, prepared):
  data_dir, folder = prepared
  assert folder == os.path.join(data_dir, "coco_captions", "2014", "1.1.0")
  for ours in ("train", "dev", "test"):
    for root in (data_dir, folder):  # a TFDS data_dir or the prepared folder itself
      s = readers.read_split(root, ours, format="tfds")
      ref = syn[ours]
      assert s.kind == "pixels" and s.num_images == ref.num_images
      # TFDS shuffles records; per image id, the same five captions in order.
      got, want = by_id(s), by_id(ref)
      assert {i: c for i, (c, _) in got.items()} == {i: c for i, (c, _) in want.items()}
      for i, (_, k) in got.items():  # the same JPEG bytes decode to the same pixels
        np.testing.assert_array_equal(s.load_image(k),
                                      images.decode_image(ref.image_paths[want[i][1]]))
  train = readers.read_split(data_dir, "train", format="tfds")
  assert "train+restval" in train.image_paths[0]  # Karpathy's COCO train set
  testall = readers.read_split(data_dir, "testall", format="tfds")
  test = readers.read_split(data_dir, "test", format="tfds")
  assert testall.captions == test.captions and testall.source == test.source


def test_missing_root_data_and_split(prepared, tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    readers.read_split(str(tmp_path / "nowhere"), "train", format="tfds")
  with pytest.raises(FileNotFoundError, match=r"No TFDS-prepared 'coco_captions' under "
                     r".*tfds build coco_captions --file_format=array_record"):
    readers.read_split(str(tmp_path), "train", format="tfds")
  _, folder = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  with open(os.path.join(copy, "dataset_info.json")) as f:
    info = json.load(f)
  info["splits"] = [s for s in info["splits"] if s["name"] != "test"]
  with open(os.path.join(copy, "dataset_info.json"), "w") as f:
    json.dump(info, f)
  with pytest.raises(FileNotFoundError, match=r"no TFDS split 'test' for split 'testall'; "
                     r"it has \['train', 'restval', 'val'\]"):
    readers.read_split(copy, "testall", format="tfds")


def test_missing_shard_file(prepared, tmp_path):
  _, folder = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  os.remove(os.path.join(copy, "coco_captions-val.array_record-00000-of-00001"))
  with pytest.raises(FileNotFoundError, match=r"split 'val' lists 1 shard file\(s\) that do "
                     r"not exist, the first .*coco_captions-val\.array_record-00000-of-00001"):
    readers.read_split(copy, "dev", format="tfds")


def test_missing_features(prepared, tmp_path):
  _, folder = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  path = os.path.join(copy, "features.json")
  with open(path) as f:
    features = json.load(f)
  inner = features["featuresDict"]["features"]
  inner["caps"] = inner.pop("captions")
  with open(path, "w") as f:
    json.dump(features, f)
  with pytest.raises(DataFormatError, match=r"features\.json: missing feature\(s\) "
                     r"\['captions'\]; found \['caps', 'image'"):
    readers.read_split(copy, "dev", format="tfds")


def test_bad_records(syn, tmp_path):
  dev = syn["dev"]
  four = dataclasses.replace(dev, captions=dev.captions[:8], captions_per_image=4)
  folder = writers.write_tfds(str(tmp_path / "four"), {"dev": four})
  with pytest.raises(DataFormatError, match=r"record \d of split 'val' .*\(00000[67]\.jpg\):"
                     r" 4 captions, expected at least 5"):
    readers.read_split(folder, "dev", format="tfds")
  captions = list(dev.captions)
  captions[7] = "   "
  blank = dataclasses.replace(dev, captions=tuple(captions))
  folder = writers.write_tfds(str(tmp_path / "blank"), {"dev": blank})
  with pytest.raises(DataFormatError, match=r"\(000007\.jpg\), captions\[2\]: empty caption"):
    readers.read_split(folder, "dev", format="tfds")


def test_corrupt_jpeg_in_a_record_names_it(syn, tmp_path):
  dev = syn["dev"]
  bad = str(tmp_path / "000007.jpg")
  with open(dev.image_paths[1], "rb") as f:
    data = f.read()
  with open(bad, "wb") as f:
    f.write(data[:len(data) // 2])
  broken = dataclasses.replace(dev, image_paths=(dev.image_paths[0], bad))
  folder = writers.write_tfds(str(tmp_path / "t"), {"dev": broken})
  s = readers.read_split(folder, "dev", format="tfds")
  k = s.image_ids.index(7)
  with pytest.raises(images.ImageDecodeError, match=rf"Could not decode image 000007\.jpg "
                     rf"\(record {k} of split 'val' in .*\): OSError"):
    s.load_image(k)
  s.load_image(1 - k)


def test_without_tensorflow_datasets_the_error_says_what_to_install(monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)
  with pytest.raises(ImportError, match="pip install tensorflow-datasets array-record"):
    tfds_source.import_tfds()
  assert "tensorflow" not in sys.modules  # reading never imported TensorFlow


def test_caption_index_is_reused_and_renewed_when_a_shard_changes(prepared, tmp_path,
                                                                  monkeypatch):
  data_dir, folder = prepared
  copy = str(tmp_path / "copy")
  shutil.copytree(folder, copy)
  first = readers.read_split(copy, "dev", format="tfds")
  scans = []
  real_scan = tfds_source._scan
  monkeypatch.setattr(tfds_source, "_scan", lambda *a: scans.append(a) or real_scan(*a))
  again = readers.read_split(copy, "dev", format="tfds")
  assert scans == [] and again == first   # from the index, identical
  (shard,) = glob.glob(os.path.join(copy, "coco_captions-val.array_record-*"))
  os.utime(shard, (0, 12345))              # the shard changed: scanned again
  assert readers.read_split(copy, "dev", format="tfds") == first and len(scans) == 1


def test_threads_loading_at_once_open_the_split_once(prepared, monkeypatch):
  """grain's prefetch threads load images concurrently; a grain worker once hung for
  good with two of them importing tensorflow_datasets inside _data_source at once. The
  split is opened once, by one thread, the others waiting for it."""
  import threading  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  tfds = tfds_source.import_tfds()
  opened, real = [], tfds.builder_from_directory

  def slow_open(folder):  # a wide window for a second thread to come in
    opened.append(threading.get_ident())
    time.sleep(0.3)
    return real(folder)

  monkeypatch.setattr(tfds, "builder_from_directory", slow_open)
  monkeypatch.setattr(tfds_source, "_OPEN", {})
  _, folder = prepared
  source = tfds_source.TfdsSource(folder, "train")
  start, images_read = threading.Barrier(6), []

  def load():
    start.wait()
    images_read.append(source.load(0))

  threads = [threading.Thread(target=load) for _ in range(6)]
  for t in threads:
    t.start()
  for t in threads:
    t.join(60)
  assert len(opened) == 1
  assert len(images_read) == 6
  for image in images_read[1:]:
    np.testing.assert_array_equal(image, images_read[0])
