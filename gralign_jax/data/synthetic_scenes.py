"""The embedded default data set: synthetic scenes that need fine-grained alignment.

Each image holds 2-4 objects (shape x colour x size) at non-overlapping positions away
from the border, over a muted textured background, plus 1-3 dull clutter items that no
caption mentions. Five captions per image vary in wording and order: at least two name
every object with size and colour, about a quarter name a single object, some state a
spatial relation computed from the object centres. About a third of the images come in
pairs that share shapes, colours and layout but swap colours (or shapes) between two
objects ("red circle + blue square" vs "blue circle + red square"): hard negatives that
only a model which binds attributes to objects can tell apart.

`generate(root)` writes, deterministically given the seed (same bytes twice), the layouts
that the public releases use, so the readers of real data read this set unchanged:

  root/images/{imgid:06d}.jpg          JPEG, quality 90 (4:4:4, colours of small shapes
                                       stay clean)
  root/dataset_synthetic.json          Karpathy style; split "val" is the dev split; no
                                       "filepath" key (Flickr30K style: images lie
                                       directly in the image folder)
  root/id_mapping.json                 LAPS / VSE-infinity: {"<imgid>": "<file name>"}
  root/precomp/{train,dev,test}_ids.txt   one image id per line
  root/precomp/{train,dev,test}_caps.txt  five captions per image, c -> image c // 5
  root/tokenizer/                      WordPiece trained on the train captions (HF format)
  root/scenes.json                     machine-readable scene record: objects, boxes,
                                       clutter, which captions mention which objects
                                       (`load_scene_record` draws it again for a set
                                       written without one)
  root/.complete                       written last: the parameters and "files", every
                                       path above (relative); `is_complete(root)`
                                       checks for it

The set is written into a hidden sibling folder, <parent>/.<name>.partial, stamped with
the pid and host of the writing process, and renamed to root only once complete: an
interrupted run leaves no half-written root, and the next run on that host removes the
leftover once its process is gone. Only a root that is absent, empty or an earlier set
whose files are all in its own "files" list is written to; that earlier set is moved
aside (<parent>/.<name>.old) and only its listed files are deleted. Any other file in
root makes `generate` refuse, naming it: it never deletes what it did not write.

By hand: python -m experiments.generate_synthetic --root=DIR [--image_size=64] ...
"""
import io
import json
import math
import os
import posixpath
import re
import shutil
import socket
import tempfile

import numpy as np
from PIL import Image, ImageDraw

from gralign_jax.data import text as text_lib

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
COLOURS = {  # Saturated, far from the muted backgrounds and grey clutter.
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 225),
    "yellow": (240, 215, 20), "purple": (135, 40, 190), "orange": (250, 130, 10),
    "cyan": (20, 200, 220), "pink": (250, 105, 185)}
# Object radius as a fraction of the image side.
SIZES = {"small": 0.085, "large": 0.13}
# Words a caption may use for each size (tests map them back).
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath")}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BACKGROUND_WORDS = {"gradient": ("shaded", "smooth"), "stripes": ("striped",),
                    "noise": ("textured", "mottled")}
SPLITS = (("train", "train"), ("dev", "val"), ("test", "test"))  # (ours, Karpathy's)
MARKER = ".complete"
OWNER_STAMP = ".owner.json"  # pid and host of the process writing a partial folder
IMAGE_DIR = "images"
KARPATHY_JSON = "dataset_synthetic.json"
SCENES_JSON = "scenes.json"

_BORDER = 0.12    # objects keep this fraction of the side free at every border
_GAP = 0.04       # minimum free space between two objects, fraction of the side
_PAIR_PROB = 0.2  # chance that a scene starts an attribute-swapped pair


# ------------------------------------------------------------------------------------
# Scenes
# ------------------------------------------------------------------------------------
def _place(rng, sizes, image_size, tries=200):
  """Non-overlapping centres for objects of the given sizes, or None if none found."""
  s = float(image_size)
  out = []
  for size in sizes:
    r = SIZES[size] * s
    lo, hi = _BORDER * s + r, (1 - _BORDER) * s - r
    for _ in range(tries):
      c = rng.uniform(lo, hi, 2)
      if all(math.hypot(c[0] - x, c[1] - y) >= r + rr + _GAP * s for x, y, rr in out):
        out.append((float(c[0]), float(c[1]), r))
        break
    else:
      return None
  return out


def _objects(kinds, centres):
  return [dict(shape=sh, colour=co, size=si, centre=[round(cx, 3), round(cy, 3)],
               radius=round(r, 3),
               box=[round(cx - r, 3), round(cy - r, 3), round(cx + r, 3), round(cy + r, 3)])
          for (sh, co, si), (cx, cy, r) in zip(kinds, centres)]


def _new_scene(rng, image_size):
  """Objects with unique (colour, shape) so that every mention is unambiguous."""
  while True:
    n = int(rng.integers(2, 5))
    kinds, seen = [], set()
    while len(kinds) < n:
      sh = SHAPES[rng.integers(len(SHAPES))]
      co = list(COLOURS)[rng.integers(len(COLOURS))]
      if (sh, co) not in seen:
        seen.add((sh, co))
        kinds.append((sh, co, list(SIZES)[rng.integers(len(SIZES))]))
    centres = _place(rng, [k[2] for k in kinds], image_size)
    if centres is not None:
      return _objects(kinds, centres)


def _swapped(rng, objects):
  """Same layout and sizes, colours (or shapes) of two objects exchanged; None if none."""
  n = len(objects)
  pairs = [(i, j) for i in range(n) for j in range(i + 1, n)
           if objects[i]["shape"] != objects[j]["shape"]
           and objects[i]["colour"] != objects[j]["colour"]]
  order = rng.permutation(len(pairs))
  attr = "colour" if rng.random() < 0.5 else "shape"
  for k in order:
    i, j = pairs[k]
    new = [dict(o) for o in objects]
    new[i][attr], new[j][attr] = objects[j][attr], objects[i][attr]
    if len({(o["shape"], o["colour"]) for o in new}) == n:
      return new
  return None


def _clutter(rng, objects, image_size):
  """1-3 dull blobs or lines away from the objects (never mentioned by a caption)."""
  s = float(image_size)
  out = []
  for _ in range(int(rng.integers(1, 4))):
    kind = "blob" if rng.random() < 0.5 else "line"
    r = rng.uniform(0.02, 0.045) * s if kind == "blob" else rng.uniform(0.04, 0.09) * s
    for _ in range(30):
      c = rng.uniform(0.06 * s + r, 0.94 * s - r, 2)
      if all(math.hypot(c[0] - o["centre"][0], c[1] - o["centre"][1])
             >= o["radius"] + r + 0.02 * s for o in objects):
        break
    else:
      continue
    item = dict(kind=kind, centre=[round(float(c[0]), 3), round(float(c[1]), 3)],
                radius=round(float(r), 3), aspect=round(float(rng.uniform(0.5, 1.0)), 3),
                angle=round(float(rng.uniform(0, math.pi)), 3),
                grey=round(float(rng.uniform(-1, 1)), 3),
                tint=[round(float(t), 1) for t in rng.uniform(-12, 12, 3)])
    out.append(item)
  return out


def _background_spec(rng):
  kind = ("gradient", "stripes", "noise")[rng.integers(3)]
  # Muted: a grey level with a small tint, so no background colour is saturated.
  c1 = rng.uniform(60, 190) + rng.uniform(-18, 18, 3)
  c2 = rng.uniform(60, 190) + rng.uniform(-18, 18, 3)
  return dict(kind=kind, c1=c1, c2=c2, angle=rng.uniform(0, 2 * math.pi),
              freq=rng.uniform(3, 9), phase=rng.uniform(0, 2 * math.pi),
              amp=rng.uniform(8, 22), noise_seed=int(rng.integers(2**31)))


# ------------------------------------------------------------------------------------
# Rendering
# ------------------------------------------------------------------------------------
def _render_background(spec, image_size):
  """float32 (S, S, 3): a muted gradient, stripes or smooth noise, plus fine grain."""
  s = image_size
  yy, xx = np.mgrid[0:s, 0:s].astype(np.float32) / s
  ca, sa = math.cos(spec["angle"]), math.sin(spec["angle"])
  t = xx * ca + yy * sa
  t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
  c1, c2 = spec["c1"].astype(np.float32), spec["c2"].astype(np.float32)
  nrng = np.random.default_rng(spec["noise_seed"])
  if spec["kind"] == "gradient":
    bg = c1 + (c2 - c1) * t[..., None]
  elif spec["kind"] == "stripes":
    wave = np.sin(2 * math.pi * spec["freq"] * t + spec["phase"])
    bg = c1 + spec["amp"] * wave[..., None]
  else:
    # Smooth grey noise: low-resolution noise upsampled bilinearly (no Python pixel loop).
    k = max(4, s // 8)
    low = (nrng.normal(0, 1, (k, k)) * 40 + 128).clip(0, 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(low).resize((s, s), Image.BILINEAR), np.float32)
    bg = c1 + (smooth - 128)[..., None] * (spec["amp"] / 40 * 1.5)
  # Grey grain, identical across channels so it adds no colour.
  bg = bg + nrng.normal(0, 4, (s, s, 1)).astype(np.float32)
  return np.clip(bg, 0, 255)


def _regular(cx, cy, r, n, start, radii=None):
  radii = radii or [r]
  return [(cx + radii[i % len(radii)] * math.cos(start + 2 * math.pi * i / n),
           cy + radii[i % len(radii)] * math.sin(start + 2 * math.pi * i / n))
          for i in range(n)]


def _draw_object(draw, obj, rot, colour):
  cx, cy = obj["centre"]
  r = obj["radius"]
  shape = obj["shape"]
  if shape == "circle":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
  elif shape == "ring":
    draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour,
                 width=max(1, math.ceil(0.35 * r)))
  elif shape == "square":
    draw.polygon(_regular(cx, cy, 1.1 * r, 4, math.pi / 4 + rot), fill=colour)
  elif shape == "diamond":
    # Taller than wide, so it never reads as a rotated square.
    pts = [(cx, cy - r), (cx + 0.7 * r, cy), (cx, cy + r), (cx - 0.7 * r, cy)]
    draw.polygon(pts, fill=colour)
  elif shape == "triangle":
    draw.polygon(_regular(cx, cy + 0.15 * r, 1.1 * r, 3, -math.pi / 2 + rot), fill=colour)
  elif shape == "star":
    draw.polygon(_regular(cx, cy, r, 10, -math.pi / 2 + rot, [1.1 * r, 0.45 * r]),
                 fill=colour)
  elif shape == "cross":
    w = 0.34 * r
    pts = [(-w, -r), (w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w),
           (-r, w), (-r, -w), (-w, -w)]
    c, s = math.cos(rot), math.sin(rot)
    draw.polygon([(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts], fill=colour)
  elif shape == "hexagon":
    draw.polygon(_regular(cx, cy, r, 6, rot), fill=colour)
  else:
    raise ValueError(f"Unknown shape {shape!r}; expected one of {SHAPES}.")


def render(scene, image_size) -> np.ndarray:
  """uint8 (S, S, 3) image of a scene record (objects, clutter, background spec)."""
  bg = _render_background(scene["_background"], image_size)
  img = Image.fromarray(bg.astype(np.uint8))
  draw = ImageDraw.Draw(img)
  mean = float(bg.mean())
  s = float(image_size)
  for c in scene["clutter"]:
    # Dull grey, offset from the background so that it is visible, never saturated.
    g = mean - 60 * (1 if mean > 128 else -1) + 20 * c["grey"]
    colour = tuple(int(np.clip(g + t, 0, 255)) for t in c["tint"])
    cx, cy = c["centre"]
    r = c["radius"]
    if c["kind"] == "blob":
      ry = r * c["aspect"]
      draw.ellipse([cx - r, cy - ry, cx + r, cy + ry], fill=colour)
    else:
      dx, dy = r * math.cos(c["angle"]), r * math.sin(c["angle"])
      draw.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=colour,
                width=max(1, round(0.025 * s)))
  for obj, rot, jitter in zip(scene["objects"], scene["_rot"], scene["_jitter"]):
    colour = tuple(int(np.clip(v + j, 0, 255)) for v, j in zip(COLOURS[obj["colour"]], jitter))
    _draw_object(draw, obj, rot, colour)
  return np.asarray(img)


# ------------------------------------------------------------------------------------
# Captions
# ------------------------------------------------------------------------------------
def _article(word):
  return "an" if word[0] in "aeiou" else "a"


def _phrase(rng, obj, with_size):
  words = [obj["colour"], obj["shape"]]
  if with_size:
    syn = SIZE_WORDS[obj["size"]]
    words.insert(0, syn[0] if rng.random() < 0.75 else syn[1])
  return f"{_article(words[0])} {' '.join(words)}"


def _join(items):
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def relation(a, b):
  """The relation of object a to object b along the axis where they differ most.

  Image y grows downwards, so "above" means a smaller y. Returns "left", "right",
  "above" or "below".
  """
  dx = a["centre"][0] - b["centre"][0]
  dy = a["centre"][1] - b["centre"][1]
  if abs(dx) >= abs(dy):
    return "left" if dx < 0 else "right"
  return "above" if dy < 0 else "below"


def _pick(rng, options):
  return options[rng.integers(len(options))]


def _full_caption(rng, scene):
  objs = scene["objects"]
  n = len(objs)
  order = [int(i) for i in rng.permutation(n)]
  phrases = [_phrase(rng, objs[i], True) for i in order]
  listed = _join(phrases)
  xs = sorted(o["centre"][0] for o in objs)
  x_separable = min(b - a for a, b in zip(xs, xs[1:])) >= 0.1 * scene["_size"]
  choices = ["plain", "prefix", "count", "there", "background", "relation"]
  if x_separable:
    choices.append("left_to_right")
  kind = _pick(rng, choices)
  if kind == "plain":
    text = listed
  elif kind == "prefix":
    text = f"{_pick(rng, ('a photo of', 'a picture of', 'an image of', 'a drawing of'))} {listed}"
  elif kind == "count":
    text = f"{COUNT_WORDS[n]} {_pick(rng, ('shapes', 'objects'))}: {listed}"
  elif kind == "there":
    text = (f"there are {COUNT_WORDS[n]} shapes: {listed}" if rng.random() < 0.5
            else f"there is {listed}")
  elif kind == "background":
    word = _pick(rng, BACKGROUND_WORDS[scene["_background"]["kind"]])
    text = f"{listed} on a {word} background"
  elif kind == "left_to_right":
    order = sorted(range(n), key=lambda i: objs[i]["centre"][0])
    text = "from left to right: " + _join([_phrase(rng, objs[i], True) for i in order])
  else:  # relation between the first two listed, the rest appended
    a, b = order[0], order[1]
    rel = _pick(rng, RELATION_WORDS[relation(objs[a], objs[b])])
    text = f"{phrases[0]} {rel} {phrases[1]}"
    if n > 2:
      text += ", and also " + _join(phrases[2:])
    return text, dict(kind="full", objects=order, relation=[a, b])
  return text, dict(kind="full", objects=order)


def _single_caption(rng, scene):
  i = int(rng.integers(len(scene["objects"])))
  p = _phrase(rng, scene["objects"][i], rng.random() < 0.5)
  template = _pick(rng, ("there is {}", "{}", "a photo of {}", "a picture with {} in it",
                         "{} among other shapes", "one of the shapes is {}",
                         "{} somewhere in the picture"))
  return template.format(p), dict(kind="single", objects=[i])


def _relation_caption(rng, scene):
  objs = scene["objects"]
  a, b = [int(i) for i in rng.choice(len(objs), 2, replace=False)]
  with_size = rng.random() < 0.5
  pa, pb = _phrase(rng, objs[a], with_size), _phrase(rng, objs[b], with_size)
  rel = _pick(rng, RELATION_WORDS[relation(objs[a], objs[b])])
  template = _pick(rng, ("{} {} {}", "{} is {} {}", "there is {} {} {}",
                         "a picture of {} {} {}"))
  return template.format(pa, rel, pb), dict(kind="relation", objects=[a, b],
                                            relation=[a, b])


def _subset_caption(rng, scene):
  n = len(scene["objects"])
  k = int(rng.integers(2, n))
  idx = [int(i) for i in rng.choice(n, k, replace=False)]
  listed = _join([_phrase(rng, scene["objects"][i], rng.random() < 0.5) for i in idx])
  template = _pick(rng, ("{}", "there is {}", "a photo of {} among other shapes",
                         "{} and more"))
  return template.format(listed), dict(kind="subset", objects=idx)


def _captions(rng, scene):
  """Five captions: two full, one single, and a mix (expected single share ~1/4)."""
  n = len(scene["objects"])
  slots = ["full", "full", "single", "relation" if rng.random() < 0.6 else "full"]
  if rng.random() < 0.25:
    slots.append("single")
  else:
    slots.append(_pick(rng, ("relation", "subset", "full") if n > 2 else ("relation", "full")))
  makers = dict(full=_full_caption, single=_single_caption, relation=_relation_caption,
                subset=_subset_caption)
  out, seen = [], set()
  for slot in slots:
    for _ in range(10):  # avoid two identical captions for one image
      text, rec = makers[slot](rng, scene)
      if text not in seen:
        break
    seen.add(text)
    out.append((text, rec))
  return [out[i] for i in rng.permutation(len(out))]


# ------------------------------------------------------------------------------------
# Writing
# ------------------------------------------------------------------------------------
def _write_atomic(path, data: bytes):
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(data)
  os.replace(tmp, path)


def _dump_json(obj) -> bytes:
  return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")


def is_complete(root: str) -> bool:
  """True when `generate` finished writing `root` (its marker file exists)."""
  return os.path.isfile(os.path.join(root, MARKER))


def make_scenes(*, num_train, num_dev, num_test, image_size, seed) -> list[dict]:
  """The scenes of a set, in imgid order, exactly as `generate` draws them (images are
  drawn from these; nothing is written). Each holds imgid, split, objects, captions
  [(text, record)], and the private keys render() reads."""
  rng = np.random.default_rng(seed)
  counts = dict(train=num_train, dev=num_dev, test=num_test)
  scenes = []
  for split, karpathy_split in SPLITS:
    start = len(scenes)
    # Pairs stay inside one split, so that the hard negatives meet at evaluation too.
    while len(scenes) - start < counts[split]:
      objects = _new_scene(rng, image_size)
      group = [(objects, None)]
      if rng.random() < _PAIR_PROB and len(scenes) - start + 2 <= counts[split]:
        twin = _swapped(rng, objects)
        if twin is not None:
          group.append((twin, len(scenes)))
      for objs, swap_of in group:
        scene = dict(imgid=len(scenes), split=split, karpathy_split=karpathy_split,
                     objects=objs, swap_of=swap_of, _size=image_size)
        scene["clutter"] = _clutter(rng, objs, image_size)
        scene["_background"] = _background_spec(rng)
        scene["_rot"] = [float(rng.uniform(-0.15, 0.15)) for _ in objs]
        scene["_jitter"] = [rng.integers(-15, 16, 3).tolist() for _ in objs]
        scene["captions"] = _captions(rng, scene)
        scenes.append(scene)
  return scenes


def _fname(scene) -> str:
  return f"{scene['imgid']:06d}.jpg"


def scene_record(scenes, *, image_size, seed) -> dict:
  """make_scenes' scenes -> the content of scenes.json."""
  return dict(image_size=image_size, seed=seed, scenes=[dict(
      imgid=s["imgid"], split=s["split"], filename=_fname(s), objects=s["objects"],
      clutter=s["clutter"], background=s["_background"]["kind"], swap_of=s["swap_of"],
      captions=[dict(raw=t, **rec) for t, rec in s["captions"]]) for s in scenes])


def _write_set(folder, *, num_train, num_dev, num_test, image_size, seed, vocab_size):
  """Writes the whole set into `folder` (an empty folder), the marker last."""
  os.makedirs(os.path.join(folder, IMAGE_DIR))
  os.makedirs(os.path.join(folder, "precomp"))
  scenes = make_scenes(num_train=num_train, num_dev=num_dev, num_test=num_test,
                       image_size=image_size, seed=seed)
  for scene in scenes:
    buf = io.BytesIO()
    Image.fromarray(render(scene, image_size)).save(buf, "JPEG", quality=90,
                                                    subsampling=0)
    _write_atomic(os.path.join(folder, IMAGE_DIR, f"{scene['imgid']:06d}.jpg"),
                  buf.getvalue())

  images = []
  for s in scenes:
    sentids = [s["imgid"] * 5 + k for k in range(5)]
    images.append(dict(
        filename=_fname(s), imgid=s["imgid"], split=s["karpathy_split"], sentids=sentids,
        sentences=[dict(raw=t, tokens=t.replace(":", " ").replace(",", " ").split(),
                        imgid=s["imgid"], sentid=sid)
                   for (t, _), sid in zip(s["captions"], sentids)]))
  _write_atomic(os.path.join(folder, KARPATHY_JSON),
                _dump_json(dict(dataset="synthetic", images=images)))
  _write_atomic(os.path.join(folder, "id_mapping.json"),
                _dump_json({str(s["imgid"]): _fname(s) for s in scenes}))
  for split, _ in SPLITS:
    mine = [s for s in scenes if s["split"] == split]
    _write_atomic(os.path.join(folder, "precomp", f"{split}_ids.txt"),
                  "".join(f"{s['imgid']}\n" for s in mine).encode("utf-8"))
    caps = "".join(t + "\n" for s in mine for t, _ in s["captions"])
    _write_atomic(os.path.join(folder, "precomp", f"{split}_caps.txt"),
                  caps.encode("utf-8"))
  record = scene_record(scenes, image_size=image_size, seed=seed)
  _write_atomic(os.path.join(folder, SCENES_JSON), _dump_json(record))
  train_caps = [t for s in scenes if s["split"] == "train" for t, _ in s["captions"]]
  text_lib.train_wordpiece(train_caps, os.path.join(folder, "tokenizer"), vocab_size)
  # The folder started empty, so everything in it now is ours: the manifest that lets a
  # later run delete exactly these files and nothing else.
  files = [f for f in _walk_files(folder) if f not in (MARKER, OWNER_STAMP)]
  _write_atomic(os.path.join(folder, MARKER), _dump_json(dict(
      num_train=num_train, num_dev=num_dev, num_test=num_test, image_size=image_size,
      seed=seed, vocab_size=vocab_size, files=files)))


# ------------------------------------------------------------------------------------
# Where to write: nothing lost, nothing half-written
# ------------------------------------------------------------------------------------
_ACTIVE = set()  # partial folders this process is writing right now


def _walk_files(folder):
  """Sorted relative paths ("/"-separated) of every file under folder."""
  out = []
  for d, _, names in os.walk(folder):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    out += [n if rel == "." else f"{rel}/{n}" for n in names]
  return sorted(out)


def _manifest(folder):
  """The set of files an earlier `generate` wrote into folder, or None if unknown."""
  try:
    with open(os.path.join(folder, MARKER), encoding="utf-8") as f:
      files = json.load(f)["files"]
  except (OSError, ValueError, KeyError, TypeError):
    return None
  return set(files) if isinstance(files, list) else None


def _raise(error):
  raise error


def _foreign(folder, listed):
  """Sorted files of folder that `listed` does not hold, plus (ending in "/") links to
  folders and empty folders that no listed file lies in. The marker is always ours."""
  allowed = set()  # every folder above a listed file
  for p in listed:
    d = posixpath.dirname(p)
    while d and d not in allowed:
      allowed.add(d)
      d = posixpath.dirname(d)
  out = []
  for d, dirs, names in os.walk(folder, onerror=_raise):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    rel = "" if rel == "." else rel + "/"
    # os.walk does not enter links to folders; we never write one.
    out += [rel + n + "/" for n in dirs if os.path.islink(os.path.join(d, n))]
    if rel and rel[:-1] not in allowed and not dirs and not names:
      out.append(rel)
    out += [rel + n for n in names if rel + n not in listed and rel + n != MARKER]
  return sorted(out)


# Names the generator gives its files: listed after the others in an error message,
# which are more likely the user's.
_LAYOUT = re.compile(r"(images/\d{6}\.jpg|dataset_synthetic\.json|id_mapping\.json|"
                     r"scenes\.json|precomp/(train|dev|test)_(ids|caps)\.txt|"
                     r"tokenizer/[^/]+)(\.tmp)?")


def _describe(paths, n=5):
  """A few of `paths`, those not named like the generator's files first."""
  odd = [p for p in paths if not _LAYOUT.fullmatch(p)]
  like = len(paths) - len(odd)
  text = ", ".join(odd[:n]) + (f" and {len(odd) - n} more" if len(odd) > n else "")
  if like:
    text += f"{'; also ' if odd else ''}{like} file(s) named like the synthetic set's"
  return text


def _remove_own(folder) -> bool:
  """Deletes what folder's manifest lists (marker last) and the folders left empty.

  Anything else stays, with the folders that hold it. True when folder is gone.
  """
  listed = _manifest(folder) or set()
  for d, dirs, names in os.walk(folder, topdown=False):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    rel = "" if rel == "." else rel + "/"
    for n in names:
      if rel + n in listed:
        os.remove(os.path.join(d, n))
    for n in dirs:
      try:
        os.rmdir(os.path.join(d, n))
      except OSError:
        pass  # not empty (something not ours) or a link: it stays
  # The marker goes last, so that an interrupted removal can be resumed from its list.
  if os.path.isfile(os.path.join(folder, MARKER)):
    os.remove(os.path.join(folder, MARKER))
  try:
    os.rmdir(folder)
  except OSError:
    pass
  return not os.path.lexists(folder)


def _check_target(root, shown) -> str:
  """"absent", "empty" or "ours" (an earlier set whose files are all in its manifest).

  Raises when generating into root could delete something generate did not write.
  """
  if not os.path.exists(root):
    return "absent"
  if not os.path.isdir(root):
    raise NotADirectoryError(
        f"Cannot generate the synthetic set into {shown!r}: it is a file; expected a "
        "folder that is new, empty or holds an earlier synthetic set.")
  try:
    if not os.listdir(root):
      return "empty"
    listed = _manifest(root)
    foreign = _foreign(root, listed or set())
  except PermissionError as e:
    raise PermissionError(
        f"Cannot generate the synthetic set into {shown!r}: {e.filename} cannot be read "
        "(permission denied). Pick a folder you can read and write.") from e
  if foreign:
    why = (f"has no list of generated files ({MARKER} is missing or from an older "
           "version)" if listed is None else "holds files the generator did not write")
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {shown!r}: the folder is not empty "
        f"and {why}: {_describe(foreign)}. The generator deletes only files it wrote "
        "itself. Pick an empty or new folder or, to train on the folder as it is, set "
        "--config.data.synthetic.generate=false.")
  return "ours"


def _owner_alive(owner, partial) -> bool:
  """False only when the stamp surely names a process that is gone."""
  pid = owner.get("pid")
  if owner.get("host") != socket.gethostname() or not isinstance(pid, int) or pid <= 0:
    return True  # another host's (or a stamp we cannot read): we cannot tell
  if pid == os.getpid():
    return partial in _ACTIVE
  if os.name == "nt":
    return True  # os.kill(pid, 0) would terminate the process on Windows
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True  # alive, another user's
  return True


def _clear_leftover(path, shown):
  """Removes a partial or set-aside folder of an earlier run if it is surely ours."""
  if not os.path.lexists(path):
    return
  if not os.path.isdir(path):
    raise FileExistsError(f"Cannot generate the synthetic set into {shown!r}: {path} is "
                          "in the way (a file where generate keeps its work); delete it.")
  try:
    with open(os.path.join(path, OWNER_STAMP), encoding="utf-8") as f:
      owner = json.load(f)
  except FileNotFoundError:
    owner = None
  except (OSError, ValueError):
    owner = "unreadable"
  if owner is not None:
    who = (f"(pid {owner.get('pid')} on host {owner.get('host')})"
           if isinstance(owner, dict) else f"(its {OWNER_STAMP} cannot be read)")
    if not isinstance(owner, dict) or _owner_alive(owner, path):
      raise FileExistsError(
          f"Refusing to generate the synthetic set into {shown!r}: another process "
          f"{who} is generating into {path}. Wait for it to finish or, if no such "
          "process runs, delete that folder.")
    shutil.rmtree(path)  # a dead process of this host wrote it, and only it
    return
  # No stamp: empty (its owner stopped right after creating it), or a finished set that
  # was not yet renamed, or a set moved aside: ours when its manifest lists everything.
  foreign = _foreign(path, _manifest(path) or set())
  if foreign or not _remove_own(path):
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {shown!r}: {path}, left by an "
        f"earlier run, holds files the generator did not write: {_describe(foreign)}. "
        "Move them elsewhere or delete that folder.")


def generate(root: str, *, num_train: int = 8000, num_dev: int = 500,
             num_test: int = 1000, image_size: int = 64, seed: int = 0,
             vocab_size: int = 1000) -> None:
  """Writes the synthetic scenes set to `root` (layout in the module docstring).

  Raises:
    ValueError: a split size or image_size is too small.
    NotADirectoryError: root is a file.
    PermissionError: root cannot be read.
    FileExistsError: root holds files generate did not write, or another process is
      generating the set there.
  """
  if min(num_train, num_dev, num_test) < 1:
    raise ValueError(f"Every split needs at least one image, got train={num_train}, "
                     f"dev={num_dev}, test={num_test}.")
  if image_size < 16:
    raise ValueError(f"image_size must be >= 16 to draw shapes, got {image_size}.")
  # Through links, so that the sibling folders lie on the target's file system.
  real = os.path.realpath(root)
  parent, name = os.path.split(real)
  partial = os.path.join(parent, f".{name}.partial")
  old = os.path.join(parent, f".{name}.old")
  _check_target(real, root)  # fail before the work, not after it
  _clear_leftover(partial, root)
  _clear_leftover(old, root)
  os.makedirs(parent, exist_ok=True)
  try:
    os.mkdir(partial)
  except FileExistsError:
    raise FileExistsError(
        f"Refusing to generate the synthetic set into {root!r}: another process has just "
        f"started generating into {partial}.") from None
  _ACTIVE.add(partial)
  try:
    _write_atomic(os.path.join(partial, OWNER_STAMP),
                  _dump_json(dict(pid=os.getpid(), host=socket.gethostname())))
    _write_set(partial, num_train=num_train, num_dev=num_dev, num_test=num_test,
               image_size=image_size, seed=seed, vocab_size=vocab_size)
    state = _check_target(real, root)  # again: something may have arrived meanwhile
    os.remove(os.path.join(partial, OWNER_STAMP))
    if state == "empty":
      os.rmdir(real)
    elif state == "ours":
      os.rename(real, old)  # the earlier set, whole, out of the way in one step
    try:
      os.rename(partial, real)
    except BaseException:
      if state == "ours":
        os.rename(old, real)
      raise
  except BaseException:
    # Interrupted or failed: no half-written root, and no leftover to trip the next run.
    shutil.rmtree(partial, ignore_errors=True)
    raise
  finally:
    _ACTIVE.discard(partial)
  if state == "ours":
    _remove_own(old)


# ------------------------------------------------------------------------------------
# The scene record of a set written without one
# ------------------------------------------------------------------------------------
def _written_captions(root) -> list[str] | None:
  """Every caption of the set on disk in imgid order (precomp files), or None."""
  caps = []
  for split, _ in SPLITS:
    path = os.path.join(root, "precomp", f"{split}_caps.txt")
    if not os.path.isfile(path):
      return None
    with open(path, encoding="utf-8") as f:
      caps += f.read().splitlines()
  return caps


def load_scene_record(root: str, log=print) -> dict:
  """root/scenes.json; for a complete set written without one, the record drawn again
  from the parameters in its marker, and written there when root can be written.

  The generator is deterministic given its parameters, so the scenes drawn again are
  those the images show; the captions on disk are compared with the drawn ones
  before the record is trusted. Only a missing scenes.json is written (never one
  that exists), and the marker's file list gains it so that a later `generate`
  treats it as its own.

  Raises:
    FileNotFoundError: no scenes.json and no marker to draw it from (not a set that
      `generate` wrote).
    ValueError: the marker's parameters do not draw the captions on disk.
  """
  path = os.path.join(root, SCENES_JSON)
  if os.path.isfile(path):
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  marker = os.path.join(root, MARKER)
  if not os.path.isfile(marker):
    raise FileNotFoundError(
        f"{root} holds no {SCENES_JSON} and no {MARKER} marker to draw one from: "
        "expected a synthetic scenes set written by gralign_jax.data.synthetic_scenes.")
  with open(marker, encoding="utf-8") as f:
    params = json.load(f)
  kw = {k: params[k] for k in ("num_train", "num_dev", "num_test", "image_size", "seed")}
  scenes = make_scenes(**kw)
  drawn = [t for s in scenes for t, _ in s["captions"]]
  if _written_captions(root) != drawn:
    raise ValueError(
        f"{root}: the captions on disk are not those its {MARKER} parameters ({kw}) "
        f"draw, so no {SCENES_JSON} can be written for it; generate the set again.")
  record = scene_record(scenes, image_size=kw["image_size"], seed=kw["seed"])
  try:  # whole or not at all, and never over a file that appeared meanwhile
    fd, tmp = tempfile.mkstemp(dir=root, prefix=".scenes.", suffix=".tmp")
  except OSError as e:
    log(f"{root} has no {SCENES_JSON} and it cannot be written there ({e.strerror}); "
        "using the record drawn again in memory.")
    return record
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(_dump_json(record))
    os.chmod(tmp, 0o644)
    os.link(tmp, path)  # fails if path exists: nothing is replaced
  except FileExistsError:
    return load_scene_record(root, log)
  finally:
    os.remove(tmp)
  files = params.get("files")
  if isinstance(files, list) and SCENES_JSON not in files:
    params["files"] = sorted(files + [SCENES_JSON])
    _write_atomic(marker, _dump_json(params))
  log(f"Wrote {path}: the scene record of {root}, drawn again from its {MARKER} "
      "parameters (the captions on disk match).")
  return record
