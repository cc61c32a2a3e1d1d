"""One image and a few captions through a trained run's encoders, in evaluation form.

Everything here is deterministic (train=False: the saliency gates are softmax keep
probabilities, the regions their means) and keeps all of GRM.encode_image's outputs
(the evaluator keeps only what the score needs): the region assignment A_hat and
log sigma^2 are what the regions picture draws.

  run = inference.load_run("runs/demo")
  image = encode_image(run, load_image("photo.jpg"), name="photo.jpg")
  (caption,) = encode_captions(run, ["a red circle left of a blue square"])
  scores = pair_scores(run, image, [caption])      # {"ori", "key", "unc", "total"}
"""
import dataclasses
import functools
import os
from typing import Optional, Sequence

import jax
import numpy as np

from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.models import token_grid
from gralign_jax.scores import similarity
from gralign_jax.visualize import figure_data

_TEXT_BATCH = 256  # captions encoded at a time


@dataclasses.dataclass
class ImageView:
  """One encoded image. encoded: GRM.encode_image's outputs without the batch axis
  (tokens (L_v, d), mask, gates (L_v,), and with regions on: regions (S, K, d),
  region_mu, region_logvar (K, d), assign (L_v, K)); pixels: uint8 (H, W, 3) to draw
  on, None for region features; features: float32 (R, D) for region features."""
  encoded: dict
  layout: token_grid.TokenLayout
  pixels: Optional[np.ndarray] = None
  features: Optional[np.ndarray] = None
  name: str = ""


@dataclasses.dataclass
class CaptionView:
  """One encoded caption: words[l] is token l's word piece (padding included);
  encoded: tokens (L, d), mask (L,), gates (L,), global (d,)."""
  caption: str
  words: list[str]
  encoded: dict
  truncated: bool = False


@dataclasses.dataclass
class Pair:
  """An image and a caption with their scores ("ori", "key", "unc" where on, or
  "global"; and "total", the inference score), labelled for the picture."""
  image: ImageView
  caption: CaptionView
  label: str
  scores: dict


class InputError(ValueError):
  """An image, feature file or caption that cannot be used (said in full)."""


def load_image(path: str) -> np.ndarray:
  """An image file -> uint8 (H, W, 3).

  Raises:
    InputError: the file is missing, a folder, unreadable or not a decodable image.
  """
  try:
    return images_lib.decode_image(path)
  except images_lib.ImageDecodeError as e:
    message = str(e).rstrip(".")
    if "UnidentifiedImageError" in message:  # its text repeats a file object's repr
      message = f"Image file {path} is not an image (PIL cannot identify it)"
    if "expected" not in message:
      message += "; expected a JPEG or PNG image file"
    raise InputError(message + ".") from e


def load_features(path: str, feature_shape: Sequence[int]) -> np.ndarray:
  """A .npy file of one image's region features -> float32 feature_shape. A
  (1, R, D) array is taken as its single row.

  Raises:
    InputError: missing, not a .npy file, pickled objects, or another shape.
  """
  want = tuple(int(x) for x in feature_shape)
  expect = f"a .npy file of float (R, D) = {want} region features of one image"
  if not os.path.exists(path):
    raise InputError(f"Feature file {path} does not exist; expected {expect}.")
  if os.path.isdir(path):
    raise InputError(f"Feature file {path} is a folder; expected {expect}.")
  try:
    array = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as e:
    raise InputError(f"Feature file {path} cannot be read as .npy ({e}); expected "
                     f"{expect}.") from e
  if array.ndim == 3 and array.shape[0] == 1:
    array = array[0]
  if tuple(array.shape) != want or not np.issubdtype(array.dtype, np.floating):
    raise InputError(f"Feature file {path} holds {array.dtype} {tuple(array.shape)}; "
                     f"expected {expect} (the run's data.feature_shape).")
  return array.astype(np.float32)


@functools.partial(jax.jit, static_argnums=0)
def _apply_image(model, params, x):
  return model.apply({"params": params}, x, train=False, method=model.encode_image)


@functools.partial(jax.jit, static_argnums=0)
def _apply_text(model, params, ids, mask):
  return model.apply({"params": params}, ids, mask, train=False,
                     method=model.encode_text)


def _host(tree) -> dict:
  return jax.tree.map(np.asarray, jax.device_get(tree))


def encode_image(run, image: np.ndarray, name: str = "") -> ImageView:
  """uint8 (H, W, 3) pixels (resized to data.image_size as evaluation does) or float32
  (R, D) region features -> ImageView."""
  config = run.config
  if config.model.vision.name == "butd":
    want = tuple(config.data.feature_shape)
    if image.dtype == np.uint8 or tuple(image.shape) != want:
      raise InputError(f"The run reads region features {want} (model.vision.name=butd), "
                       f"got an array {image.dtype} {tuple(image.shape)} for {name}.")
    x, pixels, features = image[None].astype(np.float32), None, image
  else:
    if image.dtype != np.uint8 or image.ndim != 3:
      raise InputError(f"The run reads images (model.vision.name="
                       f"{config.model.vision.name}), got an array {image.dtype} "
                       f"{tuple(image.shape)} for {name}.")
    size = int(config.data.image_size)
    method = str(config.data.get("resize_method", "bilinear"))  # as the run evaluates
    x = images_lib.model_input(images_lib.resize(image, size, method)[None],
                               config.data.pixel_mean, config.data.pixel_std)
    pixels, features = image, None
  out = _host(_apply_image(run.evaluator.model, run.params, x))
  return image_view(run, {k: v[0] for k, v in out.items()}, pixels, features, name)


def image_view(run, encoded: dict, pixels: Optional[np.ndarray] = None,
               features: Optional[np.ndarray] = None, name: str = "") -> ImageView:
  """One image's encoder outputs (no batch axis; at least tokens, mask, gates), e.g.
  a row of an encoded gallery, as an ImageView laid out on the run's token grid."""
  layout = token_grid.visual_layout(run.config.model.vision, encoded["tokens"].shape[0])
  return ImageView(encoded, layout, pixels, features, name)


def _encode_ids(run, ids: np.ndarray, mask: np.ndarray) -> dict:
  """ids, mask (M, L) -> encode_text outputs (M, ...), at most _TEXT_BATCH at a time,
  each batch padded to a power of two (few shapes to compile, little padding)."""
  parts = []
  for start in range(0, len(ids), _TEXT_BATCH):
    chunk = slice(start, start + _TEXT_BATCH)
    n = len(ids[chunk])
    size = 1 << (n - 1).bit_length()
    pad = lambda x: np.concatenate([x, np.zeros((size - n, *x.shape[1:]), x.dtype)])
    out = _host(_apply_text(run.evaluator.model, run.params, pad(ids[chunk]),
                            pad(mask[chunk])))
    parts.append({k: v[:n] for k, v in out.items()})
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _tokenize(run, captions: Sequence[str]):
  for m, c in enumerate(captions):
    if not isinstance(c, str) or not c.strip():
      raise InputError(f"Caption {m} is {c!r}: expected text with at least one word.")
  return pipeline.encode_captions(list(captions), run.tokenizer,
                                  int(run.config.data.max_len))


def encode_captions(run, captions: Sequence[str]) -> list[CaptionView]:
  """Captions -> one CaptionView each (cut at data.max_len tokens, as the run
  reads them; `truncated` says where)."""
  enc = _tokenize(run, captions)
  out = _encode_ids(run, enc.ids, enc.mask)
  views = []
  for m, caption in enumerate(captions):
    full = len(run.tokenizer(caption, add_special_tokens=True)["input_ids"])
    views.append(caption_view(run, caption, enc.ids[m], {k: v[m] for k, v in out.items()},
                              truncated=full > enc.ids.shape[1]))
  return views


def caption_view(run, caption: str, ids: np.ndarray, encoded: dict,
                 truncated: bool = False) -> CaptionView:
  """One caption's word-piece ids (L,) and encoder outputs (no batch axis), e.g. a row
  of a query's encoded captions, as a CaptionView."""
  words = run.tokenizer.convert_ids_to_tokens([int(i) for i in ids])
  return CaptionView(caption, list(words), encoded, truncated=truncated)


def _scores(run, image: ImageView, texts: dict) -> dict[str, np.ndarray]:
  """One image against a block of encoded captions (M, ...) -> {name: (M,)}."""
  img = {k: v[None] for k, v in image.encoded.items() if k in similarity.SCORE_KEYS}
  txt = {k: v for k, v in texts.items() if k in similarity.SCORE_KEYS}
  scores = similarity.pair_scores(img, txt, run.config.model)
  scores["total"] = similarity.total_score(scores, run.config.model)
  return {k: np.asarray(v)[0] for k, v in scores.items()}


def pair_scores(run, image: ImageView, captions: Sequence[CaptionView]
                ) -> list[dict[str, float]]:
  """-> per caption {"ori", "key", "unc" (those on) or "global", "total"}."""
  texts = {k: np.stack([c.encoded[k] for c in captions]) for k in captions[0].encoded}
  scores = _scores(run, image, texts)
  return [{k: float(v[m]) for k, v in scores.items()} for m in range(len(captions))]


def caption_scores(run, image: ImageView, captions: Sequence[str]) -> np.ndarray:
  """The total score of the image with each caption -> (M,) float32."""
  enc = _tokenize(run, captions)
  parts = []
  for start in range(0, len(captions), 4 * _TEXT_BATCH):  # bounds the cosine tensor
    rows = slice(start, start + 4 * _TEXT_BATCH)
    texts = _encode_ids(run, enc.ids[rows], enc.mask[rows])
    parts.append(_scores(run, image, texts)["total"])
  return np.concatenate(parts).astype(np.float32)


def pick_negative_caption(run, image: ImageView, candidates: Sequence[str],
                          positives: Sequence[int] = ()) -> tuple[int, float]:
  """The hard negative caption for `image`: the highest-scoring candidate that is not
  one of `positives` (indices into candidates) -> (index, its total score)."""
  scores = caption_scores(run, image, candidates)
  best = figure_data.hardest_negative(scores, positives)
  return best, float(scores[best])


def pick_negative_image(run, caption: CaptionView, images: Sequence[ImageView],
                        positives: Sequence[int] = ()) -> tuple[int, float]:
  """The hard negative image for `caption`: the highest-scoring of `images` that is not
  one of `positives` -> (index, its total score)."""
  scores = [pair_scores(run, image, [caption])[0]["total"] for image in images]
  best = figure_data.hardest_negative(scores, positives)
  return best, float(scores[best])


def make_pair(run, image: ImageView, caption: CaptionView, label: str) -> Pair:
  """An image and a caption, scored."""
  return Pair(image, caption, label, pair_scores(run, image, [caption])[0])
