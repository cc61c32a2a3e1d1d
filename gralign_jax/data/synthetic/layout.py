"""Writing a set into an empty folder in the public releases' layouts (the package
docstring lists them), the marker last. The folder is a private one that publish.py
renames into place whole, so the files in it need no atomic writes of their own."""
import io
import os

from PIL import Image

from gralign_jax.data import text as text_lib
from gralign_jax.data.synthetic.render import render
from gralign_jax.data.synthetic.scenes import (dump_json, file_name, make_scenes,
                                               scene_record)
from gralign_jax.data.synthetic.vocabulary import (IMAGE_DIR, KARPATHY_JSON, MARKER,
                                                   OWNER_STAMP, SCENES_JSON, SPLITS)


def _write(path, data: bytes):
  with open(path, "wb") as f:
    f.write(data)


def walk_files(folder):
  """Sorted relative paths ("/"-separated) of every file under folder."""
  out = []
  for d, _, names in os.walk(folder):
    rel = os.path.relpath(d, folder).replace(os.sep, "/")
    out += [n if rel == "." else f"{rel}/{n}" for n in names]
  return sorted(out)


def write_set(folder, *, num_train, num_dev, num_test, image_size, seed, vocab_size):
  """Writes the whole set into `folder` (an empty folder), the marker last."""
  os.makedirs(os.path.join(folder, IMAGE_DIR))
  os.makedirs(os.path.join(folder, "precomp"))
  scenes = make_scenes(num_train=num_train, num_dev=num_dev, num_test=num_test,
                       image_size=image_size, seed=seed)
  for scene in scenes:
    buf = io.BytesIO()
    Image.fromarray(render(scene, image_size)).save(buf, "JPEG", quality=90,
                                                    subsampling=0)
    _write(os.path.join(folder, IMAGE_DIR, f"{scene['imgid']:06d}.jpg"),
                  buf.getvalue())

  images = []
  for s in scenes:
    sentids = [s["imgid"] * 5 + k for k in range(5)]
    images.append(dict(
        filename=file_name(s), imgid=s["imgid"], split=s["karpathy_split"],
        sentids=sentids,
        sentences=[dict(raw=t, tokens=t.replace(":", " ").replace(",", " ").split(),
                        imgid=s["imgid"], sentid=sid)
                   for (t, _), sid in zip(s["captions"], sentids)]))
  _write(os.path.join(folder, KARPATHY_JSON),
                dump_json(dict(dataset="synthetic", images=images)))
  _write(os.path.join(folder, "id_mapping.json"),
                dump_json({str(s["imgid"]): file_name(s) for s in scenes}))
  for split, _ in SPLITS:
    mine = [s for s in scenes if s["split"] == split]
    _write(os.path.join(folder, "precomp", f"{split}_ids.txt"),
                  "".join(f"{s['imgid']}\n" for s in mine).encode("utf-8"))
    caps = "".join(t + "\n" for s in mine for t, _ in s["captions"])
    _write(os.path.join(folder, "precomp", f"{split}_caps.txt"),
                  caps.encode("utf-8"))
  record = scene_record(scenes, image_size=image_size, seed=seed)
  _write(os.path.join(folder, SCENES_JSON), dump_json(record))
  train_caps = [t for s in scenes if s["split"] == "train" for t, _ in s["captions"]]
  text_lib.train_wordpiece(train_caps, os.path.join(folder, "tokenizer"), vocab_size)
  # The folder started empty, so everything in it now is ours: the manifest that lets a
  # later run delete exactly these files and nothing else.
  files = [f for f in walk_files(folder) if f not in (MARKER, OWNER_STAMP)]
  _write(os.path.join(folder, MARKER), dump_json(dict(
      num_train=num_train, num_dev=num_dev, num_test=num_test, image_size=image_size,
      seed=seed, vocab_size=vocab_size, files=files)))
