"""Pictures of what a trained run learnt, for one image and one caption.

  python -m experiments.visualize --workdir=runs/demo --image=photo.jpg \
      --caption="a red circle left of a blue square" --out=vis/ \
      [--negative_caption="a blue circle" ...] [--negative_image=other.jpg ...]
  # a run on BUTD region features (data.format=precomp): a .npy of one image's
  # (R, D) features, or an image id of the run's data (--split, default its test split)
  python -m experiments.visualize --workdir=runs/f30k_butd --image_id=1007129816 \
      --caption="a man in an orange hat" --out=vis/

writes to --out (default <workdir>/visualize/) and prints the path of each:
  saliency.png   the visual keep gates over the patch grid (a bar per BUTD region)
  regions.png    each region prompt's assignment over the patches, with its sigma
  alignment.png  per word piece: its text gate and the patch it matches best, for the
                 matched pair and for a hard negative
  curves.png     loss, score spread, dev rSum and lr against step (metrics.jsonl)

The hard negative caption is the highest-scoring --negative_caption; without one, the
highest-scoring of the first --negative_pool captions of the run's --split that does
not belong to the image (when the image is one of that split's) and is not --caption
itself (this needs the run's data.root). --negative_image adds a
row for the highest-scoring of those images with --caption. Wrong flags or files stop
with one line, "Error: ...", before the model is loaded where possible.
"""
import io
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import entry_point
from gralign_jax.logs import shown  # imports no jax (flags first: XLA_FLAGS)

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a training run.")
_IMAGE = flags.DEFINE_string("image", None, "A JPEG/PNG image (runs on pixels).")
_FEATURES = flags.DEFINE_string("features", None, "A .npy file of one image's (R, D) "
                                "region features (runs on BUTD features).")
_IMAGE_ID = flags.DEFINE_integer("image_id", None, "An image id of the run's data "
                                 "split --split (needs the run's data.root).")
_SPLIT = flags.DEFINE_string("split", None, "Split for --image_id and for the hard "
                             "negative captions (default: the run's data.test_split, "
                             "else its dev_split).")
_CAPTION = flags.DEFINE_string("caption", None, "The caption to align with the image.")
_NEG_CAPTION = flags.DEFINE_multi_string("negative_caption", [], "Candidate hard "
                                         "negative caption (repeatable; the "
                                         "highest-scoring is drawn).")
_NEG_IMAGE = flags.DEFINE_multi_string("negative_image", [], "Candidate hard negative "
                                       "image (repeatable; the highest-scoring is drawn).")
_NEG_POOL = flags.DEFINE_integer("negative_pool", 1000, "Without --negative_caption: how "
                                 "many captions of --split (the first ones) compete "
                                 "for the hard negative.")
_OUT = flags.DEFINE_string("out", None, "Output folder (default <workdir>/visualize).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "The best-on-dev checkpoint or the last one.")


class UsageError(ValueError):
  """A flag, file or setting that cannot be used."""


def _read_config(workdir: str) -> dict:
  """The run's config.json as a dict, or a UsageError that says what is wrong."""
  from gralign_jax import paths  # pylint: disable=g-import-not-at-top
  if not workdir:
    raise UsageError("--workdir is required: the run directory of a training run.")
  path = paths.join(workdir, "config.json")
  if not paths.isdir(workdir):
    raise UsageError(f"--workdir={workdir!r} is not a folder; expected the run directory "
                     "of a training run (with config.json, checkpoints/).")
  if not paths.isfile(path):
    raise UsageError(f"--workdir={workdir!r} holds no config.json; expected the run "
                     "directory of a training run (python -m experiments.demo --workdir=...).")
  try:
    return json.loads(paths.read_text(path))
  except (OSError, json.JSONDecodeError) as e:
    raise UsageError(f"{path} cannot be read as JSON ({e}).") from e


def _check_flags(config: dict) -> None:
  caption = _CAPTION.value
  if caption is None or not caption.strip():
    raise UsageError(f"--caption={caption!r}: expected a caption with at least one word, "
                     "e.g. --caption=\"a red circle\".")
  for c in _NEG_CAPTION.value:
    if not c.strip():
      raise UsageError(f"--negative_caption={c!r} is empty; expected a caption.")
  given = [n for n, v in (("--image", _IMAGE.value), ("--features", _FEATURES.value),
                          ("--image_id", _IMAGE_ID.value)) if v is not None]
  butd = config["model"]["vision"]["name"] == "butd"
  want = ("--features=FILE.npy or --image_id=N" if butd else
          "--image=FILE (or --image_id=N of the run's data)")
  if len(given) != 1:
    raise UsageError(f"Give exactly one image: {want}; got "
                     f"{', '.join(given) if given else 'none'}.")
  if butd and (_IMAGE.value is not None or _NEG_IMAGE.value):
    raise UsageError(f"{_WORKDIR.value} reads BUTD region features (model.vision.name="
                     f"butd), not image files: give {want} (and no --negative_image).")
  if not butd and _FEATURES.value is not None:
    raise UsageError(f"{_WORKDIR.value} reads images (model.vision.name="
                     f"{config['model']['vision']['name']}), not region features: "
                     f"give {want}.")
  if _NEG_POOL.value < 1:
    raise UsageError(f"--negative_pool={_NEG_POOL.value}: expected a positive number of "
                     "captions.")
  out = _OUT.value
  if out and "://" not in out and os.path.exists(out) and not os.path.isdir(out):
    raise UsageError(f"--out={out!r} is a file; expected a folder for the PNGs.")


def _split(config):
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  name = _SPLIT.value or config.data.test_split or config.data.dev_split
  return datasets.read_split(config, name)


def _flagged(flag: str, load, *args):
  """load(*args), its InputError said as a UsageError that names the flag."""
  from gralign_jax import visualize as vis  # pylint: disable=g-import-not-at-top
  try:
    return load(*args)
  except vis.InputError as e:
    raise UsageError(f"{flag}: {e}") from e


def _load_input(config, vis):
  """-> (pixels or features, name, the split it came from or None, its index)."""
  if _IMAGE.value is not None:
    return _flagged("--image", vis.load_image, _IMAGE.value), _IMAGE.value, None, None
  if _FEATURES.value is not None:
    return (_flagged("--features", vis.load_features, _FEATURES.value,
                     config.data.feature_shape), _FEATURES.value, None, None)
  split = _split(config)
  if _IMAGE_ID.value not in split.image_ids:
    some = ", ".join(map(str, split.image_ids[:8]))
    raise UsageError(f"--image_id={_IMAGE_ID.value} is not in split {split.name!r} of "
                     f"{config.data.root} ({split.num_images} images, ids {some}, ...); "
                     "pick one of its ids, or another --split.")
  index = split.image_ids.index(_IMAGE_ID.value)
  return (split.load_image(index), f"{split.name} image id {_IMAGE_ID.value}", split,
          index)


def _negative_caption(run, vis, image, config, split, index, log):
  """-> (caption, how it was chosen) or (None, why there is none)."""
  if _NEG_CAPTION.value:
    candidates = list(_NEG_CAPTION.value)
    best, score = vis.pick_negative_caption(run, image, candidates)
    how = (f"the highest-scoring of {len(candidates)} --negative_caption"
           if len(candidates) > 1 else "--negative_caption")
    return candidates[best], f"{how} (score {score:.3f})"
  if split is None:
    try:
      split = _split(config)
    except Exception as e:  # pylint: disable=broad-exception-caught
      return None, (f"no --negative_caption, and the run's data cannot be read for one "
                    f"({type(e).__name__}: {str(e).splitlines()[0][:160]})")
    if _IMAGE.value is not None:  # a file of the split: its own captions are positives
      files = [os.path.abspath(p) for p in split.image_paths]
      here = os.path.abspath(_IMAGE.value)
      index = files.index(here) if here in files else None
  captions = list(split.captions[:_NEG_POOL.value])
  cpi = split.captions_per_image
  own = set(range(index * cpi, (index + 1) * cpi)) if index is not None else set()
  given = " ".join(_CAPTION.value.split()).lower()
  positives = sorted(m for m in range(len(captions))
                     if m in own or " ".join(captions[m].split()).lower() == given)
  if len(positives) == len(captions):
    return None, f"every caption of split {split.name!r} describes the image"
  log(f"Scoring {len(captions)} captions of split {split.name!r} for the hard negative...")
  best, score = vis.pick_negative_caption(run, image, captions, positives)
  whose = "not the image's own" if own else "other than --caption"
  return captions[best], (f"the highest-scoring of {len(captions)} {split.name!r} "
                          f"captions, {whose} (score {score:.3f})")


def _negative_image(run, vis, caption, log):
  """-> ImageView of the highest-scoring --negative_image with the caption, or None."""
  if not _NEG_IMAGE.value:
    return None, ""
  views = [vis.encode_image(run, vis.load_image(p), name=p) for p in _NEG_IMAGE.value]
  best, score = vis.pick_negative_image(run, caption, views)
  n = len(views)
  return views[best], (f"the highest-scoring of {n} --negative_image" if n > 1 else
                       "--negative_image") + f" (score {score:.3f})"


def visualize(log=print) -> dict[str, str]:
  """The whole command, after flag parsing -> {picture: path written}."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gralign_jax import inference  # pylint: disable=g-import-not-at-top
  from gralign_jax import paths  # pylint: disable=g-import-not-at-top
  from gralign_jax import visualize as vis  # pylint: disable=g-import-not-at-top
  config_dict = _read_config(_WORKDIR.value)
  _check_flags(config_dict)
  config = ml_collections.ConfigDict(config_dict)
  for p in _NEG_IMAGE.value:  # before the model: fails fast
    _flagged("--negative_image", vis.load_image, p)
  array, name, split, index = _load_input(config, vis)
  out = _OUT.value or paths.join(_WORKDIR.value, "visualize")
  try:
    paths.makedirs(out)
  except OSError as e:
    raise UsageError(f"--out={out!r} cannot be created ({e.strerror or e}); give another "
                     "folder.") from e
  run = inference.load_run(_WORKDIR.value, _CHECKPOINT.value, log=lambda *a: None)
  log(f"Run {run.workdir}, step {run.step} ({_CHECKPOINT.value} checkpoint)")
  image = vis.encode_image(run, array, name=os.path.basename(name) if _IMAGE.value
                           else name)
  (caption,) = vis.encode_captions(run, [_CAPTION.value])
  if caption.truncated:
    log(f"--caption is longer than the run's data.max_len={config.data.max_len} tokens; "
        "the rest is cut, as the run reads it.")
  pairs = [vis.make_pair(run, image, caption, "matched pair")]
  negative, how = _negative_caption(run, vis, image, config, split, index, log)
  if negative is not None:
    (neg,) = vis.encode_captions(run, [negative])
    pairs.append(vis.make_pair(run, image, neg, "hard negative caption"))
    log(f"Hard negative caption: \"{shown(negative)}\": {how}")
  else:
    log(f"No hard negative caption: {how}. alignment.png shows the matched pair only.")
  neg_image, how = _negative_image(run, vis, caption, log)
  if neg_image is not None:
    pairs.append(vis.make_pair(run, neg_image, caption, "hard negative image"))
    log(f"Hard negative image: {shown(neg_image.name)}: {how}")
  figures = {"saliency": lambda: vis.saliency_figure(image),
             "regions": lambda: vis.regions_figure(image),
             "alignment": lambda: vis.alignment_figure(pairs),
             "curves": lambda: vis.run_curves_figure(_WORKDIR.value, config)}
  written = {}
  for key, make in figures.items():
    path = paths.join(out, f"{key}.png")
    png = io.BytesIO()
    make().savefig(png, format="png")
    try:
      paths.write_bytes(path, png.getvalue())  # whole or not at all; gs:// too
    except OSError as e:
      raise UsageError(f"Cannot write {path} ({e.strerror or e}); give another "
                       "--out.") from e
    written[key] = path
    print(shown(path))
  return written


def main(argv):
  if len(argv) > 1:
    sys.exit(f"Error: unexpected arguments {argv[1:]}; every input is a --flag "
             "(quote a caption with spaces: --caption=\"a red circle\").")
  logging.set_verbosity(logging.ERROR)  # orbax warns about every read-only restore
  from gralign_jax import visualize as vis  # pylint: disable=g-import-not-at-top
  user_errors = entry_point.user_errors() + (UsageError, vis.InputError)
  try:
    visualize()
  except user_errors as e:
    # Something about the user's files or flags, said in full by the message itself;
    # a traceback would only bury it. Bugs still raise with one.
    sys.exit(f"Error: {shown(str(e))}")


if __name__ == "__main__":
  app.run(main)
