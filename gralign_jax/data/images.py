"""Image decoding and augmentation: NumPy/PIL on the host (grain workers), jnp on device.

Training images go through `random_resized_crop` (torchvision's RandomResizedCrop
algorithm) and `hflip`; evaluation images through `resize`. All return uint8 (H, W, 3),
the cheapest thing to ship to the device, where `normalize` turns them into float inside
the jitted step.

How pixels are resized (`data.resize_method`, a PIL filter named as in RESAMPLE) and
normalised (`data.pixel_mean`, `data.pixel_std`) follows the vision checkpoint: the
paper configs preset them per backbone (PIXEL_PRESETS in experiments/configs/
common.py) and a checkpoint's own preprocessor_config.json wins where present
(configs.resolve_preprocessing, through `preprocessor_settings` here). The demo keeps
mean = std = 0.5 and bilinear.
"""
import io
import math
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageFile

from gralign_jax import paths


# data.resize_method -> PIL filter; HF_RESAMPLE: the integer codes of Hugging Face image
# processors' "resample" (PIL's own enumeration) -> those names.
RESAMPLE = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR,
            "bicubic": Image.BICUBIC, "lanczos": Image.LANCZOS, "box": Image.BOX,
            "hamming": Image.HAMMING}
HF_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box",
               5: "hamming"}


def _filter(method: str):
  if method not in RESAMPLE:
    raise ValueError(f"resize method {method!r}: expected one of {sorted(RESAMPLE)} "
                     "(config.data.resize_method).")
  return RESAMPLE[method]


def preprocessor_settings(preprocessor: dict, where: str = "preprocessor_config.json"
                          ) -> dict:
  """A Hugging Face preprocessor_config.json (as a dict) -> the data.* keys it settles.

  Returns a subset of {"pixel_mean", "pixel_std", "resize_method", "image_size"}:
  only what the file states (image_mean, image_std, resample, size), so that a key it
  leaves out keeps the config's value. A file with do_normalize false means mean 0 and
  std 1 (pixels in [0, 1]). `size` is an int, {"height", "width"} or
  {"shortest_edge"}; only a square size is reported.
  """
  out = {}
  if preprocessor.get("do_normalize", True) is False:
    out["pixel_mean"], out["pixel_std"] = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
  else:
    for key, name in (("image_mean", "pixel_mean"), ("image_std", "pixel_std")):
      if key in preprocessor:
        value = preprocessor[key]
        value = [value] * 3 if isinstance(value, (int, float)) else list(value)
        if len(value) != 3:
          raise ValueError(f"{where}: {key}={preprocessor[key]!r}, expected 3 values "
                           "(RGB).")
        out[name] = tuple(float(v) for v in value)
  if "resample" in preprocessor:
    code = preprocessor["resample"]
    if code not in HF_RESAMPLE:
      raise ValueError(f"{where}: resample={code!r}, expected one of "
                       f"{sorted(HF_RESAMPLE)} (PIL's filter codes).")
    out["resize_method"] = HF_RESAMPLE[code]
  size = preprocessor.get("size")
  if isinstance(size, dict):
    if "height" in size and size.get("height") == size.get("width"):
      out["image_size"] = int(size["height"])
    elif "shortest_edge" in size:
      out["image_size"] = int(size["shortest_edge"])
  elif isinstance(size, int):
    out["image_size"] = size
  return out


class ImageDecodeError(ValueError):
  """An image file is missing, unreadable, corrupt or truncated."""


def decode_image(path: str) -> np.ndarray:
  """Reads an image file fully and returns uint8 (H, W, 3) RGB.

  The whole file is decoded here (`img.load()`), so a truncated or corrupt file fails
  now with the file named, not later inside a batch. PIL's LOAD_TRUNCATED_IMAGES must
  stay False: with it, a truncated JPEG decodes to grey silently.

  Raises:
    ImageDecodeError: the file is missing, unreadable (no permission, a folder, an I/O
      error), not an image, corrupt or truncated: every reason that data.skip_bad_images
      passes over.
  """
  try:
    special = paths.not_a_regular_file(path)
    if special:  # open() would wait for a writer on a FIFO for ever
      raise ImageDecodeError(f"Image file {path} {special}.")
    with open(path, "rb") as f:
      return _decode(f, f"image file {path}")
  except OSError as e:  # open's; read errors inside PIL leave _decode as ImageDecodeError
    raise ImageDecodeError(f"Image file {path} {unreadable_reason(e)}.") from e


def unreadable_reason(e: OSError) -> str:
  """Why open/read failed, completing "Image file <path> ..."."""
  if isinstance(e, FileNotFoundError):
    return "does not exist"
  if isinstance(e, IsADirectoryError):
    return "is a folder, expected a file"
  if isinstance(e, PermissionError):
    return "cannot be read (permission denied)"
  return f"cannot be read: {type(e).__name__}: {e.strerror or e}"


def decode_image_bytes(data: bytes, where: str) -> np.ndarray:
  """decode_image for encoded bytes held elsewhere (a TFDS record); `where` names them."""
  return _decode(io.BytesIO(data), where)


def _decode(f, where: str) -> np.ndarray:
  if ImageFile.LOAD_TRUNCATED_IMAGES:
    raise ImageDecodeError(
        f"PIL.ImageFile.LOAD_TRUNCATED_IMAGES is True (set elsewhere in this process); "
        f"truncated images would decode silently. Set it back to False before reading "
        f"{where}.")
  try:
    with Image.open(f) as img:
      img.load()
      return to_rgb(img, where)
  except Image.DecompressionBombError as e:
    raise ImageDecodeError(f"Could not decode {where}: implausibly large: {e}") from e
  except (OSError, SyntaxError, ValueError, EOFError) as e:
    # OSError covers UnidentifiedImageError ("cannot identify image file") and
    # "image file is truncated"; some PIL decoders raise SyntaxError or ValueError.
    raise ImageDecodeError(f"Could not decode {where}: {type(e).__name__}: {e}") from e


# PIL's modes for 16-bit greyscale (PNG, TIFF): "I;16*" and, from some files and PIL
# versions, 32-bit "I" holding 16-bit values. PIL's own convert("RGB") clips them to 255
# (a 16-bit photo reads as pure white), so they are scaled here: 65535 -> 255.
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def to_rgb(img: Image.Image, where: str) -> np.ndarray:
  """A loaded PIL image -> uint8 (H, W, 3) RGB, 16-bit greyscale scaled to 8 bits.

  Raises:
    ImageDecodeError: floating-point pixels (mode F, whose range no file states), or
      32-bit integers beyond 16 bits.
  """
  if img.mode == "F":
    raise ImageDecodeError(
        f"Could not decode {where}: its pixels are 32-bit floating point (PIL mode F), "
        "whose range the file does not state; expected 8- or 16-bit integer pixels. "
        "Save it as an 8- or 16-bit PNG or JPEG.")
  if img.mode in SIXTEEN_BIT_MODES:
    grey = np.asarray(img).astype(np.int64)
    if grey.size and (grey.min() < 0 or grey.max() > 65535):
      raise ImageDecodeError(
          f"Could not decode {where}: 32-bit integer pixels from {grey.min()} to "
          f"{grey.max()}; expected 8- or 16-bit pixels (0 to 65535).")
    grey = ((grey * 255 + 32767) // 65535).astype(np.uint8)  # 65535 -> 255, rounded
    return np.repeat(grey[:, :, None], 3, axis=2)
  return np.asarray(img.convert("RGB"), dtype=np.uint8)


def sample_crop_box(height: int, width: int, rng: np.random.Generator,
                    scale: Sequence[float] = (0.6, 1.0),
                    ratio: Sequence[float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop.get_params: (top, left, h, w) inside the image.

  Ten tries at an area fraction in `scale` and a log-uniform aspect ratio in `ratio`;
  if none fits, a centre crop with the aspect ratio clamped to `ratio`.
  """
  area = height * width
  log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
  for _ in range(10):
    target_area = area * rng.uniform(scale[0], scale[1])
    aspect = math.exp(rng.uniform(log_lo, log_hi))
    w = int(round(math.sqrt(target_area * aspect)))
    h = int(round(math.sqrt(target_area / aspect)))
    if 0 < w <= width and 0 < h <= height:
      top = int(rng.integers(0, height - h + 1))
      left = int(rng.integers(0, width - w + 1))
      return top, left, h, w
  in_ratio = width / height
  if in_ratio < min(ratio):
    w, h = width, int(round(width / min(ratio)))
  elif in_ratio > max(ratio):
    h, w = height, int(round(height * max(ratio)))
  else:
    w, h = width, height
  return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(image: np.ndarray, rng: np.random.Generator, size: int,
                        scale: Sequence[float] = (0.6, 1.0),
                        ratio: Sequence[float] = (3 / 4, 4 / 3),
                        method: str = "bilinear") -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size, size, 3): a random crop resized with `method`
  (a RESAMPLE name)."""
  resample = _filter(method)
  top, left, h, w = sample_crop_box(image.shape[0], image.shape[1], rng, scale, ratio)
  # Crop, then resize (as torchvision does): PIL's box= would let the filter reach pixels
  # just outside the crop.
  out = Image.fromarray(np.ascontiguousarray(image[top:top + h, left:left + w])).resize(
      (size, size), resample)
  return np.asarray(out, dtype=np.uint8)


def resize(image: np.ndarray, size: int, method: str = "bilinear") -> np.ndarray:
  """uint8 (H, W, 3) -> uint8 (size, size, 3) with `method` (the evaluation path)."""
  resample = _filter(method)
  if image.shape[0] == size and image.shape[1] == size:
    return image
  return np.asarray(Image.fromarray(image).resize((size, size), resample),
                    dtype=np.uint8)


def hflip(image: np.ndarray) -> np.ndarray:
  """(H, W, C) mirrored left-right (a contiguous copy, so batching stays cheap)."""
  return np.ascontiguousarray(image[:, ::-1])


def normalize(images, mean: Sequence[float], std: Sequence[float],
              dtype=jnp.float32) -> jnp.ndarray:
  """uint8 (..., H, W, 3) -> (x / 255 - mean) / std in `dtype`; meant for the device."""
  x = jnp.asarray(images).astype(jnp.float32) / 255.0
  mean = jnp.asarray(mean, jnp.float32)
  std = jnp.asarray(std, jnp.float32)
  return ((x - mean) / std).astype(dtype)


def model_input(images, mean: Sequence[float], std: Sequence[float]) -> jnp.ndarray:
  """What the vision backbone takes: uint8 pixels normalised, float features as they are.

  Region-feature splits (format "precomp") carry float32 (..., R, D) in the batch's
  "image" slot; only uint8 pixels have a mean and std to remove.
  """
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return normalize(images, mean, std)
  return images.astype(jnp.float32)
