"""Tests of the synthetic scenes generator: determinism, layout, caption truth, and
that it deletes only what it wrote and leaves no half-written folder."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from gralign_jax.data import synthetic as ss
from gralign_jax.data.synthetic import layout
from gralign_jax.data.synthetic import scenes as scenes_lib

N_TRAIN, N_DEV, N_TEST, SIZE = 20, 5, 10, 32
TINY = dict(num_train=4, num_dev=1, num_test=1, image_size=SIZE)
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SIZE_WORD = {w: size for size, words in ss.SIZE_WORDS.items() for w in words}
_PHRASE = (r"(?:(?P<{p}size>" + "|".join(_SIZE_WORD) + r")\s+)?(?P<{p}colour>"
           + "|".join(ss.COLOURS) + r")\s+(?P<{p}shape>" + "|".join(ss.SHAPES) + r")\b")
_REL_WORD = {w: rel for rel, words in ss.RELATION_WORDS.items() for w in words}
# Longest relation words first, so "to the left of" is not read as "left of".
_RELATION = re.compile(
    _PHRASE.format(p="a") + r"\s+(?:is\s+)?(?P<rel>"
    + "|".join(sorted(map(re.escape, _REL_WORD), key=len, reverse=True))
    + r")\s+an?\s+" + _PHRASE.format(p="b"))
_MENTION = re.compile(_PHRASE.format(p=""))


def _files(root):
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      p = os.path.join(d, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, root)] = f.read()
  return out


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  r = str(tmp_path_factory.mktemp("syn") / "a")
  ss.generate(r, num_train=N_TRAIN, num_dev=N_DEV, num_test=N_TEST, image_size=SIZE,
              seed=3)
  return r


@pytest.fixture(scope="module")
def scenes(root):
  with open(os.path.join(root, "scenes.json")) as f:
    return json.load(f)["scenes"]


def _find(obj_list, colour, shape):
  hits = [i for i, o in enumerate(obj_list) if o["colour"] == colour and o["shape"] == shape]
  return hits[0] if len(hits) == 1 else None


def test_same_seed_same_bytes(root, tmp_path):
  other = str(tmp_path / "b")
  ss.generate(other, num_train=N_TRAIN, num_dev=N_DEV, num_test=N_TEST, image_size=SIZE,
              seed=3)
  a, b = _files(root), _files(other)
  assert sorted(a) == sorted(b)
  for name in a:
    assert a[name] == b[name], name
  third = str(tmp_path / "c")
  ss.generate(third, num_train=N_TRAIN, num_dev=N_DEV, num_test=N_TEST, image_size=SIZE,
              seed=4)
  assert _files(third)["scenes.json"] != a["scenes.json"]


def test_layout_complete(root, scenes):
  assert ss.is_complete(root)
  n = N_TRAIN + N_DEV + N_TEST
  for f in ("dataset_synthetic.json", "id_mapping.json", "scenes.json",
            "tokenizer/tokenizer.json", "tokenizer/tokenizer_config.json",
            "tokenizer/vocab.txt"):
    assert os.path.isfile(os.path.join(root, f)), f
  for split, count in (("train", N_TRAIN), ("dev", N_DEV), ("test", N_TEST)):
    with open(os.path.join(root, "precomp", f"{split}_ids.txt")) as f:
      ids = f.read().splitlines()
    with open(os.path.join(root, "precomp", f"{split}_caps.txt")) as f:
      caps = f.read().splitlines()
    assert len(ids) == count and len(caps) == 5 * count
  assert len(scenes) == n
  for s in scenes:
    img = Image.open(os.path.join(root, "images", s["filename"]))
    assert img.format == "JPEG" and img.size == (SIZE, SIZE) and img.mode == "RGB"
  assert not os.path.exists(os.path.join(root, "precomp", "train_caps.txt.tmp"))


def test_incomplete_root_and_foreign_folder(tmp_path):
  assert not ss.is_complete(str(tmp_path))
  (tmp_path / "mine.txt").write_text("user data")
  with pytest.raises(FileExistsError, match="not empty"):
    ss.generate(str(tmp_path), num_train=2, num_dev=1, num_test=1, image_size=SIZE)


def test_scene_geometry(scenes):
  for s in scenes:
    objs = s["objects"]
    assert 2 <= len(objs) <= 4 and len(s["clutter"]) <= 3
    assert len({(o["shape"], o["colour"]) for o in objs}) == len(objs)
    for o in objs:
      x0, y0, x1, y1 = o["box"]
      assert min(x0, y0) >= 0.1 * SIZE and max(x1, y1) <= 0.9 * SIZE, o
    for i, a in enumerate(objs):
      for b in objs[i + 1:]:
        d = np.hypot(a["centre"][0] - b["centre"][0], a["centre"][1] - b["centre"][1])
        assert d > a["radius"] + b["radius"]


def test_objects_are_drawn_in_their_colour(root, scenes):
  # Each object's pixels (its centre; for a ring, the best pixel on the ring) carry its
  # colour, not the background's.
  yy, xx = np.mgrid[0:SIZE, 0:SIZE] + 0.5
  for s in scenes:
    img = np.asarray(Image.open(os.path.join(root, "images", s["filename"])), np.float32)
    for o in s["objects"]:
      cx, cy = o["centre"]
      want = np.array(ss.COLOURS[o["colour"]], np.float32)
      if o["shape"] == "ring":
        d = np.hypot(xx - cx, yy - cy)
        on_ring = (d > 0.6 * o["radius"]) & (d < o["radius"])
        # A thin ring's line is blurred by JPEG, so allow more.
        err = np.abs(img[on_ring] - want).max(-1).min() - 30
      else:
        err = np.abs(img[int(cy), int(cx)] - want).max()
      assert err < 70, (s["imgid"], o, err)


def test_captions_are_true(scenes):
  kinds = []
  for s in scenes:
    objs = s["objects"]
    assert len(s["captions"]) == 5
    full = 0
    for cap in s["captions"]:
      raw = cap["raw"]
      mentions = list(_MENTION.finditer(raw))
      # Every colour word belongs to an object phrase; every phrase is a real object.
      assert len(mentions) == sum(raw.split().count(c) for c in ss.COLOURS), raw
      idx = []
      for m in mentions:
        i = _find(objs, m["colour"], m["shape"])
        assert i is not None, (raw, objs)
        if m["size"]:
          assert _SIZE_WORD[m["size"]] == objs[i]["size"], (raw, objs[i])
        idx.append(i)
      assert sorted(idx) == sorted(cap["objects"]), raw
      if len(set(idx)) == len(objs) and all(m["size"] for m in mentions):
        full += 1
      kinds.append(cap["kind"])
      if cap["kind"] == "single":
        assert len(mentions) == 1
      count = re.search(r"\b(two|three|four) (?:shapes|objects)\b", raw)
      if count:
        assert ss.COUNT_WORDS[len(objs)] == count.group(1), raw
      if raw.startswith("from left to right"):
        xs = [objs[i]["centre"][0] for i in idx]
        assert xs == sorted(xs), raw
    assert full >= 2, s["captions"]
  single = kinds.count("single") / len(kinds)
  assert 0.18 <= single <= 0.35, single
  assert kinds.count("relation") > 0


def test_spatial_relations_are_correct(scenes):
  n = 0
  for s in scenes:
    objs = s["objects"]
    for cap in s["captions"]:
      for m in _RELATION.finditer(cap["raw"]):
        a = objs[_find(objs, m["acolour"], m["ashape"])]
        b = objs[_find(objs, m["bcolour"], m["bshape"])]
        rel = _REL_WORD[m["rel"]]
        (ax, ay), (bx, by) = a["centre"], b["centre"]
        assert {"left": ax < bx, "right": ax > bx, "above": ay < by,
                "below": ay > by}[rel], (cap["raw"], a, b)
        n += 1
  assert n > 5


def test_attribute_swapped_twins(scenes):
  twins = [s for s in scenes if s["swap_of"] is not None]
  assert twins
  for t in twins:
    src = scenes[t["swap_of"]]
    assert src["split"] == t["split"]
    a = sorted((o["shape"], o["colour"]) for o in src["objects"])
    b = sorted((o["shape"], o["colour"]) for o in t["objects"])
    assert a != b
    # Same shapes and same colours overall: only the binding differs.
    assert sorted(x[0] for x in a) == sorted(x[0] for x in b)
    assert sorted(x[1] for x in a) == sorted(x[1] for x in b)


def test_karpathy_and_laps_agree(root, scenes):
  with open(os.path.join(root, "dataset_synthetic.json")) as f:
    kj = json.load(f)
  with open(os.path.join(root, "id_mapping.json")) as f:
    mapping = json.load(f)
  by_id = {e["imgid"]: e for e in kj["images"]}
  assert kj["dataset"] == "synthetic" and len(by_id) == len(scenes)
  for split, ksplit in (("train", "train"), ("dev", "val"), ("test", "test")):
    with open(os.path.join(root, "precomp", f"{split}_ids.txt")) as f:
      ids = [int(x) for x in f.read().split()]
    with open(os.path.join(root, "precomp", f"{split}_caps.txt")) as f:
      caps = f.read().splitlines()
    assert ids == [e["imgid"] for e in kj["images"] if e["split"] == ksplit]
    for k, image_id in enumerate(ids):
      e = by_id[image_id]
      assert mapping[str(image_id)] == e["filename"] == f"{image_id:06d}.jpg"
      assert [s["raw"] for s in e["sentences"]] == caps[5 * k:5 * k + 5]
      assert [s["raw"] for s in e["sentences"]] == [
          c["raw"] for c in scenes[image_id]["captions"]]
      assert e["sentids"] == [s["sentid"] for s in e["sentences"]]
      for s in e["sentences"]:
        assert s["imgid"] == image_id
        assert s["tokens"] == re.findall(r"[a-z]+", s["raw"])


def test_draws_at_other_sizes(tmp_path):
  scene_rng = np.random.default_rng(0)
  objs = scenes_lib._new_scene(scene_rng, 224)
  assert all(o["box"][2] <= 0.9 * 224 for o in objs)
  r = str(tmp_path / "big")
  ss.generate(r, num_train=2, num_dev=1, num_test=1, image_size=96)
  assert Image.open(os.path.join(r, "images", "000000.jpg")).size == (96, 96)


# ------------------------------------------------------------------------------------
# Nothing lost, nothing half-written
# ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
  """A tiny set generated in one go: the bytes every other run must reproduce."""
  r = tmp_path_factory.mktemp("tiny") / "ref"
  ss.generate(str(r), **TINY)
  return r


def test_user_photo_in_a_copied_set_survives(tiny, tmp_path):
  # `cp -r data/synthetic/* mine/` copies everything but the hidden marker.
  mine = tmp_path / "mine"
  shutil.copytree(tiny, mine)
  (mine / ss.MARKER).unlink()
  (mine / "images" / "holiday.jpg").write_bytes(b"\xff\xd8 a user's photo")
  before = _files(mine)
  with pytest.raises(FileExistsError,
                     match=r"'[^']*mine'.*images/holiday\.jpg.*generate=false"):
    ss.generate(str(mine), **TINY)
  assert _files(mine) == before


def test_regenerates_over_its_own_set_only(tiny, tmp_path):
  root = tmp_path / "set"
  ss.generate(str(root), **{**TINY, "num_train": 7})  # larger: its extra images must go
  with open(root / ss.MARKER) as f:
    assert json.load(f)["files"] == sorted(n for n in _files(root) if n != ss.MARKER)
  ss.generate(str(root), **TINY)
  assert _files(root) == _files(tiny)
  assert os.listdir(tmp_path) == ["set"]  # no partial or set-aside folder left behind
  for extra in ("notes.txt", "images/holiday.jpg", "precomp/mine/"):
    path = root / extra
    if extra.endswith("/"):
      path.mkdir()
    else:
      path.write_text("the user's")
    before = _files(root)
    with pytest.raises(FileExistsError, match=re.escape(extra)):
      ss.generate(str(root), **{**TINY, "seed": 1})
    assert _files(root) == before and path.exists()
    if extra.endswith("/"):
      path.rmdir()
    else:
      path.unlink()


@pytest.mark.parametrize("before", ["absent", "empty", "earlier_set"])
def test_interrupted_run_leaves_no_half_written_root(tiny, tmp_path, monkeypatch, before):
  root = tmp_path / "set"
  if before == "empty":
    root.mkdir()
  elif before == "earlier_set":
    ss.generate(str(root), **{**TINY, "seed": 1})
  earlier = _files(root) if root.exists() else None
  real_render, calls = ss.render, []

  def render_then_ctrl_c(*args):
    calls.append(args)
    if len(calls) == 3:
      raise KeyboardInterrupt
    return real_render(*args)

  monkeypatch.setattr(layout, "render", render_then_ctrl_c)  # what write_set calls
  with pytest.raises(KeyboardInterrupt):
    ss.generate(str(root), **TINY)
  # root as it was (absent, empty, the earlier set) and no partial folder beside it.
  assert os.listdir(tmp_path) == ([] if earlier is None else ["set"])
  assert earlier is None or _files(root) == earlier
  monkeypatch.undo()
  ss.generate(str(root), **TINY)
  assert _files(root) == _files(tiny) and os.listdir(tmp_path) == ["set"]


def test_partial_folder_of_a_live_process_refuses_a_dead_ones_is_cleared(tiny, tmp_path):
  root = tmp_path / "set"
  # Another process that stops mid-way through the images, until it is killed.
  code = ("import time\n"
          "from gralign_jax.data import synthetic as ss\n"
          "from gralign_jax.data.synthetic import layout\n"
          "def hang(*args):\n"
          "  print('rendering', flush=True)\n"
          "  time.sleep(300)\n"
          "layout.render = hang\n"
          f"ss.generate({str(root)!r}, **{TINY!r})\n")
  proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline() == "rendering\n"
    with pytest.raises(FileExistsError, match=rf"another process \(pid {proc.pid} on "):
      ss.generate(str(root), **TINY)
  finally:
    proc.kill()  # like a power cut: it gets no chance to clean up
    proc.wait()
  assert not root.exists()
  ss.generate(str(root), **TINY)  # its partial folder: this host, a dead pid
  assert _files(root) == _files(tiny) and os.listdir(tmp_path) == ["set"]


def test_root_that_is_a_file(tmp_path):
  path = tmp_path / "set"
  path.write_text("the user's")
  with pytest.raises(NotADirectoryError, match=r"'[^']*set': it is a file; expected a"):
    ss.generate(str(path), **TINY)
  assert path.read_text() == "the user's"


def test_the_command_line_refuses_a_folder_of_the_users_in_one_line(tmp_path):
  """It was a 13-line traceback (issue 22, finding 11)."""
  (tmp_path / "photo.jpg").write_bytes(b"a photo of the user's")
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.generate_synthetic", f"--root={tmp_path}",
       "--num_train=4", "--num_dev=2", "--num_test=2"], cwd=REPO, capture_output=True,
      text=True, timeout=300)
  assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
  assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
  assert proc.stderr.startswith("Error: Refusing to generate the synthetic set into")
  assert "photo.jpg" in proc.stderr
  assert os.listdir(tmp_path) == ["photo.jpg"]
  assert (tmp_path / "photo.jpg").read_bytes() == b"a photo of the user's"


def test_the_command_line_writes_the_set_and_says_what_it_wrote(tmp_path):
  root = tmp_path / "set"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.generate_synthetic", f"--root={root}",
       "--num_train=4", "--num_dev=2", "--num_test=2", "--image_size=32"], cwd=REPO,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr
  last = proc.stdout.strip().splitlines()[-1]
  assert last.startswith(f"Wrote {root} in ") and "train 4 images, dev 2 images" in last
  with open(root / "scenes.json") as f:
    assert len(json.load(f)["scenes"]) == 8
  assert ss.is_complete(str(root))
