"""Evaluation with the standard protocol: encode every image and caption once, score
the whole split blockwise over the devices, then rank.

The encoders run jitted with the batch split over the mesh; only the token sets the
score needs (similarity.SCORE_KEYS) are kept on the host. The score matrix is built by
scorer.Scorer (config.eval.backend: XLA blocks or the fused Pallas kernel) over
blockwise.py's blocks, so the images x captions x tokens x tokens tensor never exists.
"""

import jax
import ml_collections
import numpy as np

from gralign_jax import sharding
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.evaluation import recall
from gralign_jax.scores import blockwise
from gralign_jax.scores import scorer as scorer_lib
from gralign_jax.scores import similarity


class Evaluator:
  """Encodes splits and computes recall metrics for one model and config."""

  def __init__(self, model, config: ml_collections.ConfigDict, mesh):
    self.model, self.config, self.mesh = model, config, mesh
    n_dev = mesh.devices.size
    self.batch = -(-config.eval.batch_size // n_dev) * n_dev
    keys = similarity.SCORE_KEYS
    mean, std = config.data.pixel_mean, config.data.pixel_std
    data_sharding, rep = sharding.batch_sharded(mesh), sharding.replicated(mesh)

    def encode_images(params, pixels):
      out = model.apply({"params": params}, images_lib.model_input(pixels, mean, std),
                        train=False, method=model.encode_image)
      return {k: v for k, v in out.items() if k in keys}

    def encode_texts(params, ids, mask):
      out = model.apply({"params": params}, ids, mask, train=False,
                        method=model.encode_text)
      return {k: v for k, v in out.items() if k in keys}

    self._encode_images = jax.jit(encode_images, in_shardings=(rep, data_sharding),
                                  out_shardings=data_sharding)
    self._encode_texts = jax.jit(encode_texts, in_shardings=(rep, data_sharding,
                                                             data_sharding),
                                 out_shardings=data_sharding)
    self.scorer = scorer_lib.Scorer.from_config(config, mesh)

  def encode(self, params, split: readers.Split, captions: pipeline.EncodedCaptions):
    """-> (image token sets, caption token sets): dicts of host arrays, leading N / M."""
    return self.encode_images(params, split), self.encode_texts(params, captions)

  def encode_images(self, params, split: readers.Split) -> dict:
    """Every image of `split`, in order -> dict of host arrays with leading axis N.
    Each host reads its rows of every batch; every host gets all N encodings."""
    return self.encode_images_and_count_bad(params, split)[0]

  def encode_images_and_count_bad(self, params, split: readers.Split
                                  ) -> tuple[dict, int]:
    """encode_images, and how many of the images the pipeline zeroed because they do
    not decode (data.skip_bad_images; 0 without it, where a bad image raises)."""
    parts, bad = [], 0
    hosts = jax.process_index(), jax.process_count()
    for batch in pipeline.eval_image_batches(split, self.config, self.batch, *hosts):
      bad += int(batch["bad_images"].sum())
      out = self._encode_images(params, sharding.global_batch(
          blockwise.pad_rows(batch["image"], self.batch // hosts[1]), self.mesh))
      parts.append(jax.tree.map(blockwise.to_host, out))
    images = jax.tree.map(lambda x: x[:split.num_images], _concat(parts))
    return images, sharding.sum_over_hosts(bad)

  def encode_texts(self, params, captions: pipeline.EncodedCaptions) -> dict:
    """Every caption, in order -> dict of host arrays with leading axis M (each host
    encodes its rows of every batch, as for images)."""
    parts, local = [], self.batch // jax.process_count()
    mine = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
    for start in range(0, len(captions.ids), self.batch):
      rows = slice(start, start + self.batch)
      ids, mask = (blockwise.pad_rows(x[rows], self.batch)[mine] for x in (captions.ids,
                                                                         captions.mask))
      out = self._encode_texts(params, *sharding.global_batch((ids, mask), self.mesh))
      parts.append(jax.tree.map(blockwise.to_host, out))
    return jax.tree.map(lambda x: x[:len(captions.ids)], _concat(parts))

  def scores(self, params, split, captions) -> np.ndarray:
    """The (num_images, num_captions) score matrix of a split."""
    imgs, txts = self.encode(params, split, captions)
    return self.scorer.matrix(imgs, txts)

  def evaluate(self, params, split, captions, protocol: str = "1k") -> dict:
    """Recall metrics; protocol "coco" -> {"test_1k": ..., "test_5k": ...}.

    Each result also holds "nan_scores": how many entries of the score matrix were NaN
    (they rank lowest, recall.py); for "test_1k" the NaNs inside its five folds.
    """
    images, bad_images = self.encode_images_and_count_bad(params, split)
    sims = self.scorer.matrix(images, self.encode_texts(params, captions))
    cpi = split.captions_per_image
    bad = {"bad_images": bad_images} if self.config.data.skip_bad_images else {}
    if protocol == "coco":
      out = {k: dict(m, **bad) for k, m in
             recall.coco_metrics(sims, captions_per_image=cpi).items()}
      out["test_5k"]["nan_scores"] = recall.count_nan(sims)
      out["test_1k"]["nan_scores"] = sum(map(recall.count_nan,
                                             recall.coco_folds(sims, cpi)))
      return out
    metrics = recall.recall_metrics(sims, captions_per_image=cpi)
    metrics["score_std"] = float(sims.std())  # ~0 means a collapsed model
    metrics["nan_scores"] = recall.count_nan(sims)
    return dict(metrics, **bad)


  def evaluate_as(self, params, split, captions, name: str) -> dict:
    """evaluate() under config.eval.protocol, named: {name: metrics}, or for the COCO
    protocol {name_1k: metrics over the five 1K folds, name_5k: metrics}."""
    if self.config.eval.protocol != "coco":
      return {name: self.evaluate(params, split, captions)}
    return {f"{name}_{k.split('_')[-1]}": m
            for k, m in self.evaluate(params, split, captions, "coco").items()}

def _concat(parts: list[dict]) -> dict:
  return jax.tree.map(lambda *xs: np.concatenate(xs, 0), *parts)
