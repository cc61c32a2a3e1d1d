"""Tests of the Flickr8k reader (format "flickr8k") on small files in the layouts people
download (Kaggle's captions.txt, the original Flickr8k.token.txt), of Karpathy's
dataset_flickr8k.json through format "karpathy", and of the real subset under
../shared/data/flickr8k-1k."""
import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from gralign_jax import configs
from gralign_jax.data import readers

DataFormatError = readers.DataFormatError
SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data",
                      "flickr8k-1k")

# Three Flickr8k names (train: A, B and C, but C is not on disk; dev: D; test: E, F,
# neither on disk) and their captions; one of B's holds a comma.
A, B, C, D, E, F = ("1000268201_693b08cb0e.jpg", "1001773457_577c3a7d70.jpg",
                    "1002674143_1b742ab4b8.jpg", "1003163366_44323f5815.jpg",
                    "1007129816_e794419615.jpg", "1007320043_627395c3d8.jpg")
CAPTIONS = {
    A: [f"A child in a pink dress climbs stair {k} ." for k in range(5)],
    B: ["A dog shakes its head near the shore , a red ball next to it ."]
       + [f"Two dogs play {k} ." for k in range(1, 5)],
    C: [f"A girl paints {k} ." for k in range(5)],
    D: [f"A man on a bike {k} ." for k in range(5)],
}


def _write(path, text):
  with open(path, "w", encoding="utf-8", newline="") as f:
    f.write(text)


def _csv_file(path, captions):
  with open(path, "w", encoding="utf-8", newline="") as f:
    w = csv.writer(f, lineterminator="\r\n")  # Kaggle's copy ends lines with CRLF
    w.writerow(["image", "caption"])
    for name, caps in captions.items():
      for c in caps:
        w.writerow([name, c])


def _token_file(path, captions):
  # Written with #i out of order for A: the reader orders an image's captions by #i.
  lines = []
  for name, caps in captions.items():
    order = [4, 0, 3, 1, 2] if name == A and len(caps) == 5 else range(len(caps))
    lines += [f"{name}#{k}\t{caps[k]}" for k in order]
  _write(path, "\n".join(lines) + "\n")


def _build(root, caption_format="csv", captions=None, image_dir="images"):
  """A Flickr8k root: split lists, caption file, tiny JPEGs for A, B and D."""
  os.makedirs(os.path.join(root, image_dir))
  for i, name in enumerate((A, B, D)):
    Image.fromarray(np.full((8, 12, 3), 40 * i, np.uint8)).save(
        os.path.join(root, image_dir, name))
  _write(os.path.join(root, "Flickr_8k.trainImages.txt"), f"{A}\n{C}\n{B}\n")
  _write(os.path.join(root, "Flickr_8k.devImages.txt"), f"{D}\n")
  _write(os.path.join(root, "Flickr_8k.testImages.txt"), f"{E}\n{F}\n")
  captions = CAPTIONS if captions is None else captions
  if caption_format == "csv":
    _csv_file(os.path.join(root, "captions.txt"), captions)
  else:
    _token_file(os.path.join(root, "Flickr8k.token.txt"), captions)
  return str(root)


def _read(root, split, **kw):
  return readers.read_split(root, split, format="flickr8k", **kw)


def test_csv_with_a_quoted_caption(tmp_path):
  root = _build(tmp_path / "r")
  with open(os.path.join(root, "captions.txt"), encoding="utf-8") as f:
    assert '"A dog shakes its head near the shore , a red ball next to it ."' in f.read()
  train = _read(root, "train")
  assert train.name == "train" and train.captions_per_image == 5
  assert train.image_paths == (os.path.join(root, "images", A),
                               os.path.join(root, "images", B))  # list order, C absent
  assert train.image_ids == (1000268201, 1001773457)
  assert train.captions == tuple(CAPTIONS[A] + CAPTIONS[B])
  assert train.captions[5] == ("A dog shakes its head near the shore , a red ball next "
                               "to it .")
  assert train.load_image(1).shape == (8, 12, 3)
  for name in ("dev", "val"):
    dev = _read(root, name)
    assert (dev.name, dev.image_ids, dev.captions) == (name, (1003163366,),
                                                       tuple(CAPTIONS[D]))


def test_token_file_and_csv_give_the_same_split(tmp_path):
  from_csv = _read(_build(tmp_path / "csv"), "train")
  root = _build(tmp_path / "tok", "token")
  from_tokens = _read(root, "train")
  assert from_tokens.captions == tuple(CAPTIONS[A] + CAPTIONS[B])  # ordered by #i
  assert from_tokens.image_ids == from_csv.image_ids
  assert from_tokens.captions == from_csv.captions
  assert ([os.path.relpath(p, root) for p in from_tokens.image_paths]
          == [os.path.relpath(p, tmp_path / "csv") for p in from_csv.image_paths])
  # Both files: captions.txt is read.
  _csv_file(os.path.join(root, "captions.txt"), {**CAPTIONS, A: ["csv"] * 5})
  assert _read(root, "train").captions[:5] == ("csv",) * 5


def test_image_dir_of_the_original_zip(tmp_path):
  root = _build(tmp_path / "r", "token", image_dir="Flicker8k_Dataset")
  dev = _read(root, "dev", image_dir="Flicker8k_Dataset")
  assert dev.image_paths == (os.path.join(root, "Flicker8k_Dataset", D),)


def test_ids_fall_back_to_list_positions(tmp_path):
  root = _build(tmp_path / "r")
  os.rename(os.path.join(root, "images", B), os.path.join(root, "images", "dog.jpg"))
  _write(os.path.join(root, "Flickr_8k.trainImages.txt"), f"{A}\n\n{C}\ndog.jpg\n")
  _csv_file(os.path.join(root, "captions.txt"), {**CAPTIONS, "dog.jpg": CAPTIONS[B]})
  assert _read(root, "train").image_ids == (0, 2)  # positions of A and dog.jpg
  # Two names with one leading integer: positions too.
  os.rename(os.path.join(root, "images", "dog.jpg"),
            os.path.join(root, "images", "1000268201_ffff.jpg"))
  _write(os.path.join(root, "Flickr_8k.trainImages.txt"), f"{A}\n1000268201_ffff.jpg\n")
  _csv_file(os.path.join(root, "captions.txt"),
            {**CAPTIONS, "1000268201_ffff.jpg": CAPTIONS[B]})
  assert _read(root, "train").image_ids == (0, 1)


def test_missing_images_counted_once(tmp_path, caplog):
  root = _build(tmp_path / "r")
  with caplog.at_level("WARNING", logger="gralign_jax"):
    _read(root, "train")
  messages = [r.getMessage() for r in caplog.records if r.name == "gralign_jax"]
  assert messages == [
      f"Split 'train': 2 of 3 listed images are here (1 not under "
      f"{os.path.join(root, 'images')}, e.g. {C}); reading those 2."]
  caplog.clear()
  with caplog.at_level("WARNING", logger="gralign_jax"):
    _read(root, "dev")  # all here: nothing said
  assert not caplog.records


def test_empty_split_raises_only_when_read(tmp_path):
  root = _build(tmp_path / "r")
  assert _read(root, "dev").num_images == 1
  with pytest.raises(DataFormatError) as e:
    _read(root, "test")
  message = str(e.value)
  assert message.startswith("Split 'test' is empty: none of the 2 images listed in "
                            f"{os.path.join(root, 'Flickr_8k.testImages.txt')} is under "
                            f"{os.path.join(root, 'images')} (it holds: {A}, {B}, {D})")
  assert _read(root, "train").num_images == 2
  with pytest.raises(DataFormatError, match="Split 'testall' is empty: none of the 2"):
    _read(root, "testall")


def test_missing_files(tmp_path):
  root = _build(tmp_path / "r")
  os.remove(os.path.join(root, "Flickr_8k.testImages.txt"))
  with pytest.raises(FileNotFoundError, match=r"image list of split 'test': .*"
                     r"Flickr_8k\.testImages\.txt does not exist"):
    _read(root, "test")
  os.remove(os.path.join(root, "captions.txt"))
  with pytest.raises(FileNotFoundError) as e:
    _read(root, "train")
  assert str(e.value) == (
      f"Missing the Flickr8k caption file: neither captions.txt (Kaggle's CSV) nor "
      f"Flickr8k.token.txt (the original release) is in {root}; it holds: "
      "Flickr_8k.devImages.txt, Flickr_8k.trainImages.txt, images.")


def test_fewer_than_five_captions(tmp_path):
  for fmt, name in (("csv", "captions.txt"), ("token", "Flickr8k.token.txt")):
    root = _build(tmp_path / fmt, fmt, captions={**CAPTIONS, B: CAPTIONS[B][:4]})
    with pytest.raises(DataFormatError) as e:
      _read(root, "train")
    assert str(e.value).startswith(
        f"{os.path.join(root, name)}: image {B} "
        f"({os.path.join(root, 'Flickr_8k.trainImages.txt')}, line 3; "
        f"{os.path.join(root, 'images', B)}) has 4 captions, expected 5 (lines ")
    assert _read(root, "dev").num_captions == 5  # the other split reads
  # On disk and listed, but not in the caption file at all.
  root = _build(tmp_path / "none", captions={A: CAPTIONS[A], B: CAPTIONS[B]})
  with pytest.raises(DataFormatError, match=rf"captions\.txt: image {D} .* has 0 "
                     r"captions, expected 5\.$"):
    _read(root, "dev")


def test_more_captions_keep_the_first_five_stripped(tmp_path):
  padded = [f"  {c} \t" for c in CAPTIONS[D]] + ["sixth"]
  for fmt in ("csv", "token"):
    root = _build(tmp_path / fmt, fmt, captions={**CAPTIONS, D: padded})
    assert _read(root, "dev").captions == tuple(CAPTIONS[D])


def test_bad_header_and_rows(tmp_path):
  root = _build(tmp_path / "r")
  path = os.path.join(root, "captions.txt")
  _write(path, f"filename,text\n{A},a dog\n")
  with pytest.raises(DataFormatError) as e:
    _read(root, "train")
  assert str(e.value) == (f"{path}, line 1: expected the header line `image,caption`, "
                          "found 'filename,text'.")
  _write(path, "image,caption\n" + "".join(f"{A},c{k}\n" for k in range(3))
         + f"{A},  \n")
  with pytest.raises(DataFormatError, match=rf"captions\.txt, line 5: empty caption\.$"):
    _read(root, "train")
  _write(path, f"image,caption\n{A},a dog, running\n")
  with pytest.raises(DataFormatError, match=r"captions\.txt, line 2: expected 2 fields "
                     r".*found 3"):
    _read(root, "train")


def test_malformed_token_lines(tmp_path):
  root = _build(tmp_path / "r", "token")
  path = os.path.join(root, "Flickr8k.token.txt")
  with open(path, encoding="utf-8") as f:
    lines = f.read().splitlines()
  for bad, n in ((f"{A}#0 a dog without a tab", 3), (f"{A}\ta caption without #i", 7),
                 (f"{A}#x\ta dog", 2)):
    broken = list(lines)
    broken[n - 1] = bad
    _write(path, "\n".join(broken) + "\n")
    with pytest.raises(DataFormatError) as e:
      _read(root, "train")
    assert str(e.value) == (f"{path}, line {n}: expected `NAME.jpg#i<TAB>caption`, "
                            f"found {bad!r}.")
  broken = list(lines)
  broken[3] = broken[3].split("\t")[0] + "\t \t"
  _write(path, "\n".join(broken) + "\n")
  with pytest.raises(DataFormatError, match=r"token\.txt, line 4: empty caption\.$"):
    _read(root, "train")


def test_format_is_a_config_choice():
  assert "flickr8k" in readers.FORMATS
  assert "flickr8k" in configs.CHOICES["data.format"]


def test_karpathy_dataset_flickr8k_json(tmp_path):
  root = _build(tmp_path / "r", image_dir="Flicker8k_Dataset")
  os.remove(os.path.join(root, "captions.txt"))
  entries = []
  for imgid, (name, split) in enumerate(((A, "train"), (D, "val"), (B, "train"),
                                         (C, "test"))):
    entries.append({
        "filename": name, "imgid": imgid, "split": split,
        "sentids": list(range(5 * imgid, 5 * imgid + 5)),
        "sentences": [{"raw": c, "tokens": c.lower().split(), "imgid": imgid,
                       "sentid": 5 * imgid + k} for k, c in enumerate(CAPTIONS[name])]})
  _write(os.path.join(root, "dataset_flickr8k.json"),
         json.dumps({"images": entries, "dataset": "flickr8k"}))
  train = readers.read_split(root, "train", format="karpathy",
                             image_dir="Flicker8k_Dataset")
  assert train.image_ids == (0, 2)
  assert train.image_paths == (os.path.join(root, "Flicker8k_Dataset", A),
                               os.path.join(root, "Flicker8k_Dataset", B))
  assert train.captions == tuple(CAPTIONS[A] + CAPTIONS[B])
  dev = readers.read_split(root, "dev", format="karpathy", image_dir="Flicker8k_Dataset")
  assert (dev.image_ids, dev.captions) == ((1,), tuple(CAPTIONS[D]))
  with pytest.raises(FileNotFoundError, match=rf"1 of 1 image files.*{C} does not exist"):
    readers.read_split(root, "test", format="karpathy", image_dir="Flicker8k_Dataset")


def test_shared_flickr8k_1k(caplog):
  if not os.path.isdir(SHARED):
    if os.environ.get("GRALIGN_CI"):
      pytest.fail(f"no Flickr8k subset at {os.path.abspath(SHARED)}")
    pytest.skip(f"no Flickr8k subset at {os.path.abspath(SHARED)}")
  root = os.path.abspath(SHARED)
  with caplog.at_level("WARNING", logger="gralign_jax"):
    train = _read(root, "train")
    dev = _read(root, "dev")
  assert (train.num_images, train.num_captions) == (753, 3765)
  assert (dev.num_images, dev.num_captions) == (113, 565)
  assert len(set(train.image_ids)) == 753
  assert not set(train.image_ids) & set(dev.image_ids)
  assert train.image_ids[0] == int(os.path.basename(train.image_paths[0]).split("_")[0])
  assert [r.getMessage().split(" (")[0] for r in caplog.records] == [
      "Split 'train': 753 of 6000 listed images are here",
      "Split 'dev': 113 of 1000 listed images are here"]
  with open(os.path.join(root, "captions.txt"), encoding="utf-8", newline="") as f:
    rows = list(csv.reader(f))[1:]
  first = os.path.basename(train.image_paths[0])
  assert train.captions[:5] == tuple(c.strip() for n, c in rows if n == first)[:5]
  with pytest.raises(FileNotFoundError, match=r"Flickr_8k\.testImages\.txt does not "
                     "exist"):
    _read(root, "test")
