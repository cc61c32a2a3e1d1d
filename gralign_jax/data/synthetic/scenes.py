"""Drawing the scenes of a set: 2-4 objects at non-overlapping places, clutter, a
background, attribute-swapped pairs, five captions each; and scenes.json, the record
of them (drawn again for a set written without one)."""
import json
import math
import os

import numpy as np

from gralign_jax import paths
from gralign_jax.data.synthetic.captions import draw_captions
from gralign_jax.data.synthetic.vocabulary import (COLOURS, MARKER, SCENES_JSON, SHAPES,
                                                   SIZES, SPLITS)

_BORDER = 0.12    # objects keep this fraction of the side free at every border
_GAP = 0.04       # minimum free space between two objects, fraction of the side
_PAIR_PROB = 0.2  # chance that a scene starts an attribute-swapped pair


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
        scene["captions"] = draw_captions(rng, scene)
        scenes.append(scene)
  return scenes


def file_name(scene) -> str:
  return f"{scene['imgid']:06d}.jpg"


def scene_record(scenes, *, image_size, seed) -> dict:
  """make_scenes' scenes -> the content of scenes.json."""
  return dict(image_size=image_size, seed=seed, scenes=[dict(
      imgid=s["imgid"], split=s["split"], filename=file_name(s), objects=s["objects"],
      clutter=s["clutter"], background=s["_background"]["kind"], swap_of=s["swap_of"],
      captions=[dict(raw=t, **rec) for t, rec in s["captions"]]) for s in scenes])


def dump_json(obj) -> bytes:
  return (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode("utf-8")



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
        "expected a synthetic scenes set written by gralign_jax.data.synthetic.")
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
    created = paths.create_exclusive(path, dump_json(record).decode("utf-8"))
  except OSError as e:
    log(f"{root} has no {SCENES_JSON} and it cannot be written there "
        f"({paths.os_reason(e)}); using the record drawn again in memory.")
    return record
  if not created:
    return load_scene_record(root, log)
  files = params.get("files")
  if isinstance(files, list) and SCENES_JSON not in files:
    params["files"] = sorted(files + [SCENES_JSON])
    paths.write_bytes(marker, dump_json(params))
  log(f"Wrote {path}: the scene record of {root}, drawn again from its {MARKER} "
      "parameters (the captions on disk match).")
  return record
