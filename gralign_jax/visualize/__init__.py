"""See what a trained run learnt: saliency, regions, word-to-patch alignment, curves.

  from gralign_jax import inference, visualize as vis
  run = inference.load_run("runs/demo")
  image = vis.encode_image(run, vis.load_image("photo.jpg"), name="photo.jpg")
  caption, other = vis.encode_captions(run, ["a red circle", "a blue square"])
  vis.saliency_figure(image).savefig("saliency.png")
  vis.regions_figure(image).savefig("regions.png")
  vis.alignment_figure([vis.make_pair(run, image, caption, "matched pair"),
                        vis.make_pair(run, image, other, "hard negative caption")]
                       ).savefig("alignment.png")
  vis.run_curves_figure("runs/demo").savefig("curves.png")

figure_data.py holds the numbers each picture shows (pure NumPy, tested), encode.py runs
one image and a few captions through the run's encoders (evaluation form, with every
output kept), figures.py draws. The command line is experiments/visualize.py.
"""
from gralign_jax.visualize.encode import (CaptionView, ImageView, InputError, Pair,
                                          caption_scores, caption_view, encode_captions,
                                          encode_image, image_view, load_features,
                                          load_image, make_pair, pair_scores,
                                          pick_negative_caption, pick_negative_image)
from gralign_jax.visualize.figures import (alignment_figure, curves_figure,
                                           message_figure, regions_figure,
                                           saliency_figure)
from gralign_jax.models.token_grid import TokenLayout, patch_cell, visual_layout
from gralign_jax.visualize.figure_data import (best_patches, hardest_negative,
                                               region_maps, region_sigma,
                                               saliency_grid, token_cosines,
                                               training_series)


def lr_schedule(config, records):
  """The run's learning-rate schedule (heads; backbones run at train.backbone_lr_mult
  times it), rebuilt from its config and the training set size that metrics.jsonl's
  "data" record holds; None where that record is missing."""
  from gralign_jax import optim  # pylint: disable=g-import-not-at-top
  data = [r for r in records if r.get("split") == "data" and "train_captions" in r]
  if not data:
    return None
  steps_per_epoch = int(data[0]["train_captions"]) // int(config.train.batch_size)
  return optim.schedule(config, steps_per_epoch)


def run_curves_figure(workdir: str, config=None):
  """The training curves of a run directory (its metrics.jsonl and config.json; a
  local folder or a gs:// one)."""
  import json  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from gralign_jax import metrics, paths  # pylint: disable=g-import-not-at-top
  path = paths.join(workdir, "metrics.jsonl")
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: expected the metrics log of a "
                            "training run.")
  records = metrics.read_metrics(workdir)
  if config is None and paths.isfile(paths.join(workdir, "config.json")):
    config = ml_collections.ConfigDict(json.loads(paths.read_text(
        paths.join(workdir, "config.json"))))
  logged_lr = any(r.get("split") == "train" and "lr" in r for r in records)
  schedule = None if logged_lr or config is None else lr_schedule(config, records)
  series = training_series(records, schedule)
  note = (" (heads; from the config's schedule)" if schedule is not None and "lr" in series
          else "")
  return curves_figure(series, f"Training curves: {paths.resolve(workdir)}", note)


__all__ = [
    "CaptionView", "ImageView", "InputError", "Pair", "TokenLayout", "alignment_figure",
    "best_patches", "caption_scores", "caption_view", "curves_figure", "encode_captions",
    "encode_image", "hardest_negative", "image_view", "load_features", "load_image",
    "lr_schedule",
    "make_pair", "message_figure", "pair_scores", "patch_cell", "pick_negative_caption",
    "pick_negative_image", "region_maps", "region_sigma", "regions_figure",
    "run_curves_figure", "saliency_figure", "saliency_grid", "token_cosines",
    "training_series", "visual_layout"]
