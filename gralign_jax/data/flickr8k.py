"""Flickr8k as people download it: a caption file, the official split lists, the images.

A Flickr8k root holds
- captions, in one of two files: the Kaggle copy's root/captions.txt (CSV with the
  header line `image,caption`; captions holding a comma are double-quoted) or the
  original root/Flickr8k.token.txt (lines `NAME.jpg#i<TAB>caption`, i = 0..4). If both
  are there, captions.txt is read (and the token file is not looked at);
- the split lists root/Flickr_8k.{train,dev,test}Images.txt, one file name per line:
  "train" reads trainImages, "dev" and "val" devImages, "test" and "testall"
  testImages (any other split name S reads Flickr_8k.SImages.txt);
- the images, root/image_dir/NAME.jpg ("Flicker8k_Dataset" in the original zip).

An image keeps the first captions_per_image captions it has, in file order (token file:
ordered by #i). Listed names that are not on disk are passed over, counted in one
warning per split read (subsets and partial downloads); a split with none on disk is
refused when it is read. A name on disk without captions_per_image captions is an
error, one neither on disk nor in the caption file is only counted as not here.

Image ids are the names' leading integers (1000268201_693b08cb0e.jpg -> 1000268201),
the same in any subset; if a name of the split list has none, or two names share one,
every image of that split takes its 0-based position in the list (blank lines not
counted). Paths keep the split list's order.
"""
import collections
import csv
import os

from gralign_jax import logs
from gralign_jax.data import split as split_lib
from gralign_jax.data.split import DataFormatError

CSV_NAME, TOKEN_NAME = "captions.txt", "Flickr8k.token.txt"
_LISTS = {"train": "train", "dev": "dev", "val": "dev", "test": "test", "testall": "test"}


def _read_csv(path: str) -> dict[str, list[tuple[int, str]]]:
  lines = split_lib.read_lines(path)
  if lines and lines[0].startswith("\ufeff"):  # a byte order mark from a spreadsheet
    lines[0] = lines[0][1:]
  reader = csv.reader(lines)
  header = next(reader, None)
  if header is None or [h.strip() for h in header] != ["image", "caption"]:
    found = ",".join(header) if header else "nothing (the file is empty)"
    raise DataFormatError(f"{path}, line 1: expected the header line `image,caption`, "
                          f"found {found!r}.")
  captions = collections.defaultdict(list)
  for row in reader:
    line = reader.line_num
    if not row:
      continue
    if len(row) != 2:
      raise DataFormatError(
          f"{path}, line {line}: expected 2 fields (image,caption; a caption holding a "
          f"comma is double-quoted), found {len(row)}: {row!r}.")
    if not row[1].strip():
      raise DataFormatError(f"{path}, line {line}: empty caption.")
    captions[row[0].strip()].append((line, row[1].strip()))
  return captions


def _read_tokens(path: str) -> dict[str, list[tuple[int, str]]]:
  entries = collections.defaultdict(list)  # name -> [(i, line, caption)]
  for line, text in enumerate(split_lib.read_lines(path), 1):
    if not text:
      continue
    key, tab, caption = text.partition("\t")
    name, sharp, number = key.strip().rpartition("#")
    if not tab or not sharp or not name or not number.isdigit():
      raise DataFormatError(f"{path}, line {line}: expected `NAME.jpg#i<TAB>caption`, "
                            f"found {text[:80]!r}.")
    if not caption.strip():
      raise DataFormatError(f"{path}, line {line}: empty caption.")
    entries[name].append((int(number), line, caption.strip()))
  return {name: [(line, c) for _, line, c in sorted(v, key=lambda e: e[0])]
          for name, v in entries.items()}


def _ids(names: list[str]) -> list[int]:
  """Leading integers of the names, else positions in the list (module docstring)."""
  heads = [name.split("_", 1)[0] for name in names]
  if all(h.isdigit() for h in heads) and len(set(map(int, heads))) == len(heads):
    return [int(h) for h in heads]
  return list(range(len(names)))


def read(root: str, split: str, image_dir: str, cpi: int) -> split_lib.Split:
  """One split of a Flickr8k root (see the module docstring)."""
  csv_path, token_path = os.path.join(root, CSV_NAME), os.path.join(root, TOKEN_NAME)
  if split_lib.path_problem(csv_path) != split_lib.MISSING:
    split_lib.require_file(csv_path, "Flickr8k caption file")
    caption_path, captions = csv_path, _read_csv(csv_path)
  elif split_lib.path_problem(token_path) != split_lib.MISSING:
    split_lib.require_file(token_path, "Flickr8k caption file")
    caption_path, captions = token_path, _read_tokens(token_path)
  else:
    raise FileNotFoundError(
        f"Missing the Flickr8k caption file: neither {CSV_NAME} (Kaggle's CSV) nor "
        f"{TOKEN_NAME} (the original release) is in {root}; {split_lib.listing(root)}.")
  list_path = os.path.join(root, f"Flickr_8k.{_LISTS.get(split, split)}Images.txt")
  split_lib.require_file(list_path, f"Flickr8k image list of split {split!r}")
  listed = [(line, text.strip()) for line, text in
            enumerate(split_lib.read_lines(list_path), 1) if text.strip()]
  seen = {}
  for line, name in listed:
    if name in seen:
      raise DataFormatError(f"{list_path}, line {line}: {name} is listed twice (first on "
                            f"line {seen[name]}).")
    seen[name] = line
  ids = _ids([name for _, name in listed])
  folder = os.path.join(root, image_dir)
  paths, kept_ids, texts, absent = [], [], [], []
  for (line, name), image_id in zip(listed, ids):
    path = os.path.join(folder, name)
    # Only a missing file is passed over; read_split reports any other problem.
    if (split_lib.path_problem(path) or "").startswith(split_lib.MISSING):
      absent.append(name)
      continue
    found = captions.get(name, [])
    if len(found) < cpi:
      raise DataFormatError(
          f"{caption_path}: image {name} ({list_path}, line {line}; {path}) has "
          f"{len(found)} captions, expected {cpi}"
          + (f" (lines {', '.join(str(n) for n, _ in found)})." if found else "."))
    paths.append(path)
    kept_ids.append(image_id)
    texts.extend(c for _, c in found[:cpi])
  if not paths:
    raise split_lib.empty_split_error(
        split, f"none of the {len(listed)} images listed in {list_path} is under "
        f"{folder} ({split_lib.listing(folder)})")
  if absent:
    logs.warning(f"Split {split!r}: {len(paths)} of {len(listed)} listed images are here "
                 f"({len(absent)} not under {folder}, e.g. {absent[0]}); reading those "
                 f"{len(paths)}.")
  return split_lib.Split(split, tuple(paths), tuple(kept_ids), tuple(texts), cpi)
