"""Retrieval with a trained run on your own images and captions, and what aligned.

  run = load_run("runs/demo")                      # config.json + best-on-dev params
  images = gallery_split("my_photos/")             # every JPEG/PNG in the folder
  result = retrieve(run, images, ["a red circle left of a blue square"], k=5)

The image gallery is encoded once and kept (gallery.py) under
<workdir>/galleries/<digest>, keyed by the checkpoint step and the files' names, sizes
and modification times, so asking new captions of the same photos only encodes the
captions. For each caption's best image, `alignment` lists every word piece with its
saliency gate a_t and the visual token it matches best (its patch row and column, or
region), the cosine that decides S_ori (method.md section 4).
"""
import dataclasses
import hashlib
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gralign_jax import checkpoint as ckpt_lib
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax.data import datasets
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.evaluation import evaluator as evaluator_lib
from gralign_jax.evaluation import gallery
from gralign_jax.models import grm
from gralign_jax.models import similarity

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclasses.dataclass
class Run:
  """A trained run, ready to encode: its config, model, params and tokenizer."""
  workdir: str
  config: ml_collections.ConfigDict
  params: dict
  step: int
  evaluator: evaluator_lib.Evaluator
  tokenizer: object


def load_run(workdir: str, which: str = "best") -> Run:
  """The run in `workdir`: its best-on-dev checkpoint ("best") or its last ("latest")."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: expected the run directory of a "
                            "training run (python -m experiments.demo --workdir=...).")
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  model = grm.build_model(config.model)
  mesh = sharding.make_mesh()
  like = train.abstract_state(model, optim.make_optimizer(config, 1), config, mesh)
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  restore = {"best": checkpointer.restore_best,
             "latest": checkpointer.restore_latest}[which]
  restored = restore(like) or checkpointer.restore_latest(like)
  checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints: the run has "
                            "not saved one yet.")
  return Run(workdir, config, restored.state["params"], int(restored.step),
             evaluator_lib.Evaluator(model, config, mesh), datasets.load_tokenizer(config))


def gallery_split(images) -> readers.Split:
  """A folder of images (or a list of files) -> a Split with no captions."""
  if isinstance(images, str):
    if not os.path.isdir(images):
      raise FileNotFoundError(f"Image folder {images!r} does not exist.")
    paths = sorted(os.path.join(images, f) for f in os.listdir(images)
                   if f.lower().endswith(IMAGE_SUFFIXES))
    if not paths:
      raise FileNotFoundError(f"No {'/'.join(IMAGE_SUFFIXES)} files in {images!r}; it "
                              f"holds {sorted(os.listdir(images))[:10]}.")
  else:
    paths = [str(p) for p in images]
  return readers.Split("gallery", tuple(os.path.abspath(p) for p in paths),
                       tuple(range(len(paths))), (), captions_per_image=0)


def encode_gallery(run: Run, split: readers.Split) -> dict:
  """The gallery's image token sets, from its cache when the same files were encoded
  by the same checkpoint before."""
  stamp = [(p, os.path.getsize(p), os.path.getmtime(p)) for p in split.image_paths]
  digest = hashlib.sha256(json.dumps(stamp).encode()).hexdigest()[:16]
  folder = os.path.join(run.workdir, "galleries", digest)
  meta = {"step": run.step, "images": digest}
  if os.path.isfile(os.path.join(folder, gallery.MANIFEST)):
    try:
      sides, _ = gallery.load(folder, expect_meta=meta)
      return sides["images"][0]
    except ValueError:
      pass  # another checkpoint encoded it: encode again, replacing the cache
  images = run.evaluator.encode_images(run.params, split)
  gallery.save(folder, {"images": (images, np.asarray(split.image_ids))}, meta)
  return images


def _visual_token_names(config: ml_collections.ConfigDict, n: int) -> list[str]:
  """Visual token j -> "CLS", "patch (row, col)" or "region j"."""
  vision = config.model.vision
  if vision.name == "butd":
    return [f"region {j}" for j in range(n)]
  first = 1 if vision.name == "vit" else 0      # ViT puts CLS first; Swin has none
  grid = int(round((n - first) ** 0.5))
  return (["CLS"] * first) + [f"patch ({j // grid}, {j % grid})" for j in range(n - first)]


def alignment(run: Run, image: dict, text: dict, ids: np.ndarray) -> list[dict]:
  """Per word piece of one caption: its gate, best visual token and that token
  similarity c_lj = leaky_relu(cos) (similarity.token_cosine, what S_ori max-pools).

  image / text: one item's encoder outputs (tokens (L, d), mask (L,), gates (L,)).
  """
  cos = np.asarray(similarity.token_cosine(
      jnp.asarray(text["tokens"])[None], jnp.asarray(image["tokens"])[None],
      run.config.model.leaky_slope)[0, 0])                      # (L_t, L_v)
  cos = np.where(np.asarray(image["mask"])[None], cos, -np.inf)
  names = _visual_token_names(run.config, cos.shape[1])
  words = run.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
  out = []
  for l in np.flatnonzero(np.asarray(text["mask"])):
    j = int(np.argmax(cos[l]))
    out.append({"token": words[l], "gate": round(float(text["gates"][l]), 4),
                "visual_token": names[j], "cos": round(float(cos[l, j]), 4)})
  return out


def retrieve(run: Run, split: readers.Split, captions: list[str], k: int = 5) -> dict:
  """Top-k images per caption (with the best pair's word alignment) and top-k captions
  per image. Scores are the model's total score (0.4 S_ori + 0.4 S_key + 0.2 S_unc)."""
  if not captions:
    raise ValueError("No captions to retrieve with.")
  images = encode_gallery(run, split)
  encoded = _encode(run, captions)
  texts = run.evaluator.encode_texts(run.params, encoded)
  scorer = run.evaluator.scorer
  k_img, k_txt = min(k, split.num_images), min(k, len(captions))
  prepared = scorer.prepare(images, texts)  # once for both directions
  img_vals, img_idx = scorer.topk_images(*prepared, k_img, prepared=True)
  txt_vals, txt_idx = scorer.topk_texts(*prepared, k_txt, prepared=True)
  pick = lambda d, i: jax.tree.map(lambda x: x[i], d)
  by_caption = []
  for m, caption in enumerate(captions):
    best = int(img_idx[m, 0])
    by_caption.append({
        "caption": caption,
        "top": [{"index": int(i), "image": split.image_paths[int(i)],
                 "score": round(float(s), 4)}
                for s, i in zip(img_vals[m], img_idx[m])],
        "alignment": alignment(run, pick(images, best), pick(texts, m), encoded.ids[m])})
  by_image = [{"image": path,
               "top": [{"index": int(i), "caption": captions[int(i)],
                        "score": round(float(s), 4)}
                       for s, i in zip(txt_vals[n], txt_idx[n])]}
              for n, path in enumerate(split.image_paths)]
  return {"workdir": run.workdir, "step": run.step, "captions_to_images": by_caption,
          "images_to_captions": by_image}


def _encode(run: Run, captions: list[str]) -> pipeline.EncodedCaptions:
  blank = [i for i, c in enumerate(captions) if not c.strip()]
  if blank:
    raise ValueError(f"Caption(s) {blank} are empty.")
  return pipeline.encode_captions(captions, run.tokenizer, run.config.data.max_len)
