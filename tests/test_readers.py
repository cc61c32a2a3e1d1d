"""Tests of the LAPS and Karpathy readers on small fixtures in the public layouts."""
import json
import os
import re
import shutil

import pytest

from gralign_jax.data import readers
from gralign_jax.data import split as split_lib
from gralign_jax.data import synthetic

DataFormatError = readers.DataFormatError


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("syn") / "root")
  synthetic.generate(root, num_train=6, num_dev=2, num_test=3, image_size=32)
  return root


@pytest.fixture
def root(synthetic_root, tmp_path):
  """A private copy that a test may break."""
  r = str(tmp_path / "copy")
  shutil.copytree(synthetic_root, r)
  return r


def _write(path, text):
  with open(path, "w", encoding="utf-8") as f:
    f.write(text)


def test_laps_and_karpathy_agree(synthetic_root):
  for split, n in (("train", 6), ("dev", 2), ("test", 3)):
    laps = readers.read_split(synthetic_root, split, format="laps")
    karpathy = readers.read_split(synthetic_root, split, format="karpathy")
    assert laps == karpathy
    assert laps.name == split and laps.num_images == n and laps.num_captions == 5 * n
    assert all(os.path.isabs(p) and os.path.isfile(p) for p in laps.image_paths)
    assert [os.path.basename(p) for p in laps.image_paths] == [
        f"{i:06d}.jpg" for i in laps.image_ids]
  dev = readers.read_split(synthetic_root, "dev")
  assert dev.image_ids == (6, 7)
  with open(os.path.join(synthetic_root, "scenes.json")) as f:
    scenes = json.load(f)["scenes"]
  assert dev.captions[5:10] == tuple(c["raw"] for c in scenes[7]["captions"])


def test_split_validates_its_lengths():
  with pytest.raises(DataFormatError, match="3 captions for 1 images"):
    readers.Split("x", ("a.jpg",), (1,), ("a", "b", "c"))
  with pytest.raises(DataFormatError, match="2 image ids for 1 image paths"):
    readers.Split("x", ("a.jpg",), (1, 2), ("a",) * 5)


def test_missing_root(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"nowhere.*does not exist.*generate_synthetic"):
    readers.read_split(str(tmp_path / "nowhere"), "train")


def test_unknown_format(synthetic_root):
  with pytest.raises(ValueError, match="Unknown data format 'tfrecord'"):
    readers.read_split(synthetic_root, "train", format="tfrecord")


def test_missing_split_files(root):
  with pytest.raises(FileNotFoundError,
                     match=r"split 'testall'.*testall_ids\.txt does not exist.*"
                     r"it holds: dev_caps\.txt, dev_ids\.txt"):
    readers.read_split(root, "testall")
  os.remove(os.path.join(root, "precomp", "dev_caps.txt"))
  with pytest.raises(FileNotFoundError, match=r"caption file.*dev_caps\.txt does not exist"):
    readers.read_split(root, "dev")
  os.remove(os.path.join(root, "id_mapping.json"))
  with pytest.raises(FileNotFoundError, match=r"id mapping.*id_mapping\.json"):
    readers.read_split(root, "train")


def test_ids_and_captions_out_of_step(root):
  caps = os.path.join(root, "precomp", "train_caps.txt")
  with open(caps) as f:
    lines = f.read().splitlines()
  _write(caps, "\n".join(lines[:-1]) + "\n")
  with pytest.raises(DataFormatError, match=r"train_caps\.txt has 29 captions but .*"
                     r"train_ids\.txt lists 6 images; expected 5 captions per image \(30\)"):
    readers.read_split(root, "train")


def test_ids_listed_once_per_caption_are_collapsed(root):
  before = readers.read_split(root, "test")
  ids = os.path.join(root, "precomp", "test_ids.txt")
  _write(ids, "".join(f"{i}\n" for i in (8, 9, 10) for _ in range(5)))
  assert readers.read_split(root, "test") == before


def test_id_absent_from_mapping(root):
  path = os.path.join(root, "id_mapping.json")
  with open(path) as f:
    mapping = json.load(f)
  del mapping["7"]
  _write(path, json.dumps(mapping))
  with pytest.raises(DataFormatError,
                     match=r"dev_ids\.txt, line 2: image id 7 has no entry in .*id_mapping"):
    readers.read_split(root, "dev")


def test_bad_id_line(root):
  _write(os.path.join(root, "precomp", "dev_ids.txt"), "6\nseven\n")
  with pytest.raises(DataFormatError, match=r"dev_ids\.txt, line 2: expected an integer.*"
                     r"'seven'"):
    readers.read_split(root, "dev")


def test_empty_caption(root):
  caps = os.path.join(root, "precomp", "dev_caps.txt")
  with open(caps) as f:
    lines = f.read().splitlines()
  lines[3] = "   "
  _write(caps, "\n".join(lines) + "\n")
  with pytest.raises(DataFormatError, match=r"dev_caps\.txt, line 4: empty caption"):
    readers.read_split(root, "dev")


def test_non_utf8_caption(root):
  caps = os.path.join(root, "precomp", "dev_caps.txt")
  with open(caps, "rb") as f:
    lines = f.read().split(b"\n")
  lines[6] = b"a caf\xe9 with a red circle"  # Latin-1, not UTF-8
  with open(caps, "wb") as f:
    f.write(b"\n".join(lines))
  with pytest.raises(DataFormatError, match=r"dev_caps\.txt, line 7: not valid UTF-8"):
    readers.read_split(root, "dev")


def test_crlf_and_missing_final_newline(root):
  before = readers.read_split(root, "dev")
  caps = os.path.join(root, "precomp", "dev_caps.txt")
  with open(caps) as f:
    lines = f.read().splitlines()
  with open(caps, "wb") as f:
    f.write("\r\n".join(lines).encode())
  assert readers.read_split(root, "dev") == before


def test_missing_images(root):
  os.remove(os.path.join(root, "images", "000001.jpg"))
  os.remove(os.path.join(root, "images", "000003.jpg"))
  for fmt in ("laps", "karpathy"):
    with pytest.raises(FileNotFoundError,
                       match=r"2 of 6 image files cannot be read \(2 missing\): "
                       r".*000001\.jpg does not exist \(it holds: 000000\.jpg"):
      readers.read_split(root, "train", format=fmt)
  split = readers.read_split(root, "train", check_images=False)
  assert split.num_images == 6
  with pytest.raises(FileNotFoundError, match=r"6 of 6 .*missing.*pix"):
    readers.read_split(root, "train", image_dir="pix")


def _deny(monkeypatch, path):
  """What a user without read permission on `path` meets (tests may run as root, who
  reads everything): os.access says no, and for a folder, listing it or reaching
  anything inside fails with EACCES."""
  path = os.path.abspath(path)
  access, stat, listdir = os.access, os.stat, os.listdir

  def inside(p):
    return os.path.abspath(os.fsdecode(p)).startswith(path + os.sep)

  def fake_access(p, mode, **kw):
    return False if os.path.abspath(os.fsdecode(p)) == path else access(p, mode, **kw)

  def fake_stat(p, *a, **kw):
    if isinstance(p, (str, bytes, os.PathLike)) and inside(p):
      raise PermissionError(13, "Permission denied", p)
    return stat(p, *a, **kw)

  def fake_listdir(p="."):
    if os.path.abspath(os.fsdecode(p)) == path:
      raise PermissionError(13, "Permission denied", p)
    return listdir(p)

  monkeypatch.setattr(os, "access", fake_access)
  monkeypatch.setattr(os, "stat", fake_stat)
  monkeypatch.setattr(os, "listdir", fake_listdir)


def test_image_paths_reported_as_what_they_are(root, monkeypatch, caplog):
  """Missing, a folder, unreadable: each named as such, with advice a user can follow."""
  images = os.path.join(root, "images")
  os.remove(os.path.join(images, "000001.jpg"))
  os.remove(os.path.join(images, "000002.jpg"))
  os.mkdir(os.path.join(images, "000002.jpg"))
  _deny(monkeypatch, os.path.join(images, "000004.jpg"))
  with pytest.raises(readers.DataPathError) as e:
    readers.read_split(root, "train")
  message = str(e.value)
  assert ("3 of 6 image files cannot be read (1 missing, 1 not a file, 1 without read "
          "permission)") in message
  assert (f"{images}/000001.jpg does not exist (it holds: 000000.jpg, 000002.jpg"
          in message)
  assert f"{images}/000002.jpg is a folder, expected a file" in message
  assert f"{images}/000004.jpg cannot be read (permission denied)" in message
  assert ("check config.data.root and config.data.image_dir, or set "
          "config.data.skip_bad_images=true to train without them.") in message
  assert "check_images" not in message
  assert isinstance(e.value, FileNotFoundError)  # handled wherever missing files are
  # "warn" (for data.skip_bad_images): the same message logged, the split read.
  split = readers.read_split(root, "train", check_images="warn")
  assert split.num_images == 6 and "000002.jpg is a folder" in caplog.text
  # ... unless no image is usable: then skipping cannot help, and is not advised.
  with pytest.raises(FileNotFoundError, match=r"6 of 6 .*image_dir\.$") as e:
    readers.read_split(root, "train", image_dir="pix", check_images="warn")
  assert "skip_bad_images" not in str(e.value)


def test_folder_where_a_split_file_should_be(root):
  caps = os.path.join(root, "precomp", "dev_caps.txt")
  os.remove(caps)
  os.mkdir(caps)
  with pytest.raises(readers.DataPathError) as e:
    readers.read_split(root, "dev")
  assert str(e.value) == (f"Cannot read the caption file of split 'dev': {caps} is a "
                          "folder, expected a file.")


def test_unreadable_split_folder(root, monkeypatch):
  precomp = os.path.join(root, "precomp")
  _deny(monkeypatch, precomp)
  with pytest.raises(readers.DataPathError) as e:
    readers.read_split(root, "dev")
  assert str(e.value) == (f"Cannot read the image id list of split 'dev': {precomp}/"
                          "dev_ids.txt cannot be reached (permission denied on a folder "
                          "above it).")
  # A listing of an unreadable folder says so, not "does not exist".
  assert split_lib.listing(precomp) == "(the folder cannot be read: permission denied)"


def test_unreadable_split_file(root, monkeypatch):
  ids = os.path.join(root, "precomp", "dev_ids.txt")
  _deny(monkeypatch, ids)
  with pytest.raises(readers.DataPathError, match=r"image id list of split 'dev': "
                     rf"{re.escape(ids)} cannot be read \(permission denied\)\.$"):
    readers.read_split(root, "dev")


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_folder_for_real(root):
  precomp = os.path.join(root, "precomp")
  os.chmod(precomp, 0)
  try:
    with pytest.raises(readers.DataPathError, match="permission denied"):
      readers.read_split(root, "dev")
  finally:
    os.chmod(precomp, 0o755)


def test_unreadable_and_file_roots(root, monkeypatch, tmp_path):
  a_file = tmp_path / "root.txt"
  a_file.write_text("not a folder")
  with pytest.raises(readers.DataPathError) as e:
    readers.read_split(str(a_file), "train")
  assert str(e.value) == (f"Data root {str(a_file)!r} (config.data.root) is a file, "
                          "expected a folder.")
  _deny(monkeypatch, root)
  with pytest.raises(readers.DataPathError) as e:
    readers.read_split(root, "train")
  assert str(e.value) == (f"Data root {root!r} (config.data.root) cannot be read "
                          "(permission denied).")


EMPTY_ADVICE = ("Check that the files are complete, or name another split "
                "(config.data.train_split, dev_split, test_split).")


def test_empty_laps_split(root):
  ids = os.path.join(root, "precomp", "dev_ids.txt")
  caps = os.path.join(root, "precomp", "dev_caps.txt")
  _write(ids, "")
  _write(caps, "")
  with pytest.raises(DataFormatError) as e:
    readers.read_split(root, "dev")
  assert str(e.value) == (f"Split 'dev' is empty: {ids} and {caps} hold no images. "
                          + EMPTY_ADVICE)


def test_empty_karpathy_split(root):
  path, data = _karpathy(root)
  for entry in data["images"]:
    entry["split"] = "train" if entry["split"] == "val" else entry["split"]
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError) as e:
    readers.read_split(root, "dev", format="karpathy")
  assert str(e.value) == (f'Split \'dev\' is empty: {path} has no image whose "split" is '
                          "val (its 11 images have splits ['test', 'train']). "
                          + EMPTY_ADVICE)


def test_empty_tfds_split(synthetic_root, tmp_path):
  """A prepared folder whose val split lists no shard (tfds writes none for 0
  examples): refused at read time, not left to array_record's "Paths sequence can not
  be of 0 length"."""
  pytest.importorskip("tensorflow_datasets")
  import layout_writers as writers  # pylint: disable=g-import-not-at-top
  dev = readers.read_split(synthetic_root, "dev")
  folder = writers.write_tfds(str(tmp_path / "tfds"), {"dev": dev})
  info_path = os.path.join(folder, "dataset_info.json")
  with open(info_path) as f:
    info = json.load(f)
  for s in info["splits"]:
    s.update(shardLengths=[], numBytes="0")
  _write(info_path, json.dumps(info))
  for shard in os.listdir(folder):
    if ".array_record-" in shard:
      os.remove(os.path.join(folder, shard))
  with pytest.raises(DataFormatError) as e:
    readers.read_split(folder, "dev", format="tfds")
  assert str(e.value) == (f"Split 'dev' is empty: TFDS split 'val' in {folder} has no "
                          "records (its dataset_info.json lists no shard with examples). "
                          + EMPTY_ADVICE)


def _karpathy(root):
  path = os.path.join(root, "dataset_synthetic.json")
  with open(path) as f:
    return path, json.load(f)


def test_karpathy_missing_keys(root):
  path, data = _karpathy(root)
  del data["images"][4]["sentences"]
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError, match=r'images\[4\]: missing key "sentences"'):
    readers.read_split(root, "train", format="karpathy")
  _write(path, json.dumps({"imgs": []}))
  with pytest.raises(DataFormatError, match='with key "images"'):
    readers.read_split(root, "train", format="karpathy")


def test_karpathy_missing_id_and_raw(root):
  path, data = _karpathy(root)
  original = json.dumps(data)
  del data["images"][1]["imgid"]
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError,
                     match=r'images\[1\] \(000001\.jpg\): missing key "imgid"'):
    readers.read_split(root, "train", format="karpathy")
  data = json.loads(original)
  del data["images"][2]["sentences"][3]["raw"]
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError,
                     match=r'images\[2\] \(000002\.jpg\), sentences\[3\]: missing key "raw"'):
    readers.read_split(root, "train", format="karpathy")


def test_karpathy_too_few_sentences_and_empty(root):
  path, data = _karpathy(root)
  original = json.dumps(data)
  data["images"][7]["sentences"] = data["images"][7]["sentences"][:4]
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError, match=r"images\[7\] \(000007\.jpg, id 7\): 4 "
                     "sentences, expected at least 5"):
    readers.read_split(root, "dev", format="karpathy")
  data = json.loads(original)
  data["images"][7]["sentences"][0]["raw"] = " "
  _write(path, json.dumps(data))
  with pytest.raises(DataFormatError, match=r"images\[7\].*sentences\[0\]: empty caption"):
    readers.read_split(root, "dev", format="karpathy")


def test_karpathy_invalid_json(root):
  path = os.path.join(root, "dataset_synthetic.json")
  _write(path, '{"images": [\n{"split": "train",}\n]}')
  with pytest.raises(DataFormatError, match=r"dataset_synthetic\.json, line 2 column .*"
                     "invalid JSON"):
    readers.read_split(root, "train", format="karpathy")


def test_karpathy_non_utf8(root):
  path = os.path.join(root, "dataset_synthetic.json")
  with open(path, "rb") as f:
    data = f.read()
  at = data.index(b'"raw"', data.index(b"\n", 1) if b"\n" in data[1:] else 0)
  data = data[:at + 8] + b"caf\xe9 " + data[at + 8:]  # Latin-1 inside a caption
  with open(path, "wb") as f:
    f.write(data)
  line = data[:at].count(b"\n") + 1
  with pytest.raises(DataFormatError, match=rf"dataset_synthetic\.json, line {line}: not "
                     r"valid UTF-8 \(invalid continuation byte at byte \d+\)"):
    readers.read_split(root, "train", format="karpathy")


def test_karpathy_file_choice(root):
  before = readers.read_split(root, "train")
  shutil.copy(os.path.join(root, "dataset_synthetic.json"),
              os.path.join(root, "dataset_other.json"))
  with pytest.raises(DataFormatError, match=r"exactly one.*found 2 \(dataset_other\.json, "
                     r"dataset_synthetic\.json\).*karpathy_json"):
    readers.read_split(root, "train", format="karpathy")
  named = readers.read_split(root, "train", format="karpathy",
                             karpathy_json="dataset_other.json")
  assert named == before
  os.remove(os.path.join(root, "dataset_other.json"))
  os.remove(os.path.join(root, "dataset_synthetic.json"))
  with pytest.raises(FileNotFoundError, match=r"found 0 \(none\)"):
    readers.read_split(root, "train", format="karpathy")
  with pytest.raises(FileNotFoundError, match=r"Karpathy split file.*nope\.json"):
    readers.read_split(root, "train", format="karpathy", karpathy_json="nope.json")


def test_karpathy_coco_style(tmp_path):
  """COCO's Karpathy file: filepath sub-folders, cocoid, restval, 6-7 sentences."""
  root = tmp_path / "coco"
  entries = []
  for k, (split, sub) in enumerate([("train", "train2014"), ("restval", "val2014"),
                                    ("val", "val2014"), ("test", "val2014")]):
    name = f"COCO_{sub}_{k:012d}.jpg"
    (root / "images" / sub).mkdir(parents=True, exist_ok=True)
    (root / "images" / sub / name).write_bytes(b"")
    n_sent = 7 if k == 0 else 5
    entries.append(dict(filepath=sub, filename=name, imgid=k, cocoid=1000 + k, split=split,
                        sentences=[dict(raw=f"caption {j} of {k} ") for j in range(n_sent)]))
  _write(root / "dataset_coco.json", json.dumps(dict(dataset="coco", images=entries)))
  train = readers.read_split(str(root), "train", format="karpathy")
  assert train.image_ids == (1000, 1001)  # cocoid, and restval joins train
  assert train.image_paths[1] == str(
      root / "images" / "val2014" / "COCO_val2014_000000000001.jpg")
  assert train.captions[:5] == tuple(f"caption {j} of 0" for j in range(5))
  assert train.captions[5] == "caption 0 of 1"
  dev = readers.read_split(str(root), "dev", format="karpathy")
  assert dev.image_ids == (1002,)
  testall = readers.read_split(str(root), "testall", format="karpathy")
  assert testall.image_ids == (1003,)  # COCO's 5K test set is Karpathy's "test"
  with pytest.raises(DataFormatError, match=r"Split 'test1k' is empty: .* has no "
                     r"image whose \"split\" is test1k .*"
                     r"\['restval', 'test', 'train', 'val'\]"):
    readers.read_split(str(root), "test1k", format="karpathy")


def test_laps_with_sub_folders(tmp_path):
  """COCO-style LAPS: id_mapping values are paths under image_dir."""
  root = tmp_path / "laps"
  (root / "precomp").mkdir(parents=True)
  (root / "imgs" / "val2014").mkdir(parents=True)
  (root / "imgs" / "val2014" / "x.jpg").write_bytes(b"")
  _write(root / "id_mapping.json", json.dumps({"42": "val2014/x.jpg"}))
  _write(root / "precomp" / "testall_ids.txt", "42\n")
  _write(root / "precomp" / "testall_caps.txt", "".join(f" cap {i}\n" for i in range(5)))
  s = readers.read_split(str(root), "testall", image_dir="imgs")
  assert s.image_paths == (str(root / "imgs" / "val2014" / "x.jpg"),)
  assert s.captions == tuple(f"cap {i}" for i in range(5)) and s.image_ids == (42,)
  assert s.name == "testall"


def test_first_images_keeps_each_image_with_its_own_captions():
  split = split_lib.Split("dev", ("a.jpg", "b.jpg", "c.jpg"), (7, 8, 9),
                          ("a0", "a1", "b0", "b1", "c0", "c1"), captions_per_image=2)
  two = split.first_images(2)
  assert two.image_paths == ("a.jpg", "b.jpg") and two.image_ids == (7, 8)
  assert two.captions == ("a0", "a1", "b0", "b1") and two.name == "dev"
  assert split.first_images(0) is split and split.first_images(3) is split
  assert split.first_images(5) is split
