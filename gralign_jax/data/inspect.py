"""Look at a data set before training on it: counts, caption lengths, sample images.

Used by `python -m experiments.inspect_data`; each piece works from a notebook too:
  stats = split_stats(split, tokenizer, max_len)   # numbers
  print(format_report({"train": stats, ...}))        # a table
  sample_grid(split, 12).save("samples.png")         # images with their captions
  check_images(split)                                # every image decoded, bad ones listed
"""
import concurrent.futures
import textwrap

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from gralign_jax.data import images as images_lib
from gralign_jax.data import readers


def _summary(lengths: np.ndarray) -> dict:
  if len(lengths) == 0:
    return {"min": 0, "mean": 0.0, "median": 0.0, "p95": 0.0, "max": 0}
  return {"min": int(lengths.min()), "mean": float(lengths.mean()),
          "median": float(np.median(lengths)), "p95": float(np.percentile(lengths, 95)),
          "max": int(lengths.max())}


def split_stats(split: readers.Split, tokenizer=None, max_len: int = 0) -> dict:
  """Counts and caption-length statistics of one split.

  Returns {"images", "captions", "captions_per_image", "kind", "words": {min, mean,
  median, p95, max}} and, with a tokenizer, "tokens" (with [CLS] and [SEP]) and
  "truncated" (captions longer than max_len tokens, which training cuts).
  """
  words = np.array([len(c.split()) for c in split.captions])
  out = {"images": split.num_images, "captions": split.num_captions,
         "captions_per_image": split.captions_per_image, "kind": split.kind,
         "words": _summary(words)}
  if tokenizer is not None:
    ids = tokenizer(list(split.captions), add_special_tokens=True,
                    truncation=False)["input_ids"]
    tokens = np.array([len(x) for x in ids])
    out["tokens"] = _summary(tokens)
    out["truncated"] = int((tokens > max_len).sum()) if max_len > 0 else 0
  return out


def format_report(stats: dict[str, dict], max_len: int = 0) -> str:
  """A plain-text table, one row per split."""
  has_tokens = all("tokens" in s for s in stats.values())
  head = f"{'split':<10}{'images':>9}{'captions':>10}  words min/mean/p95/max"
  if has_tokens:
    head += f"   tokens min/mean/p95/max  truncated@{max_len}"
  lines = [head, "-" * len(head)]
  for name, s in stats.items():
    w = s["words"]
    row = (f"{name:<10}{s['images']:>9}{s['captions']:>10}  "
           f"{w['min']:>5} /{w['mean']:>5.1f} /{w['p95']:>5.1f} /{w['max']:>4}")
    if has_tokens:
      t = s["tokens"]
      pct = 100.0 * s["truncated"] / max(s["captions"], 1)
      row += (f"   {t['min']:>5} /{t['mean']:>5.1f} /{t['p95']:>5.1f} /{t['max']:>4}"
              f"  {s['truncated']:>6} ({pct:.2f}%)")
    lines.append(row)
  return "\n".join(lines)


def _tile_picture(split: readers.Split, i: int, size: int) -> tuple[Image.Image, str]:
  """The image (pixels) or a heat map of its region features; a note if unreadable."""
  try:
    x = split.load_image(i)
  except images_lib.ImageDecodeError as e:
    return Image.new("RGB", (size, size), (90, 0, 0)), f"UNREADABLE: {e}"
  if split.kind == "features":  # regions x dims, each row scaled to its own range
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    grey = (255 * (x - lo) / np.maximum(hi - lo, 1e-6)).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB").resize((size, size), Image.NEAREST), (
        f"region features {x.shape[0]} x {x.shape[1]}")
  return Image.fromarray(images_lib.resize(x, size)), ""


def sample_grid(split: readers.Split, num: int = 12, size: int = 192, cols: int = 4,
                captions: int = 2, seed: int = 0) -> Image.Image:
  """A PNG-ready grid of `num` random images of a split, each with its first captions."""
  rng = np.random.default_rng(seed)
  picks = sorted(rng.choice(split.num_images, size=min(num, split.num_images),
                            replace=False).tolist())
  font = ImageFont.load_default()
  chars = max(12, size // 6)
  text_h = 12 * (captions * 3 + 2)
  rows = -(-len(picks) // cols)
  grid = Image.new("RGB", (cols * (size + 8), rows * (size + text_h + 8)), "white")
  draw = ImageDraw.Draw(grid)
  cpi = split.captions_per_image
  for k, i in enumerate(picks):
    x0, y0 = (k % cols) * (size + 8) + 4, (k // cols) * (size + text_h + 8) + 4
    picture, note = _tile_picture(split, i, size)
    grid.paste(picture, (x0, y0))
    lines = [f"#{i} id {split.image_ids[i]} {note}"[:chars]]
    for n, c in enumerate(split.captions[i * cpi:i * cpi + captions], 1):
      lines += textwrap.wrap(f"{n}. {c}", chars, subsequent_indent="   ")[:3]
    draw.multiline_text((x0, y0 + size + 2), "\n".join(lines), fill="black", font=font,
                        spacing=1)
  return grid


def check_images(split: readers.Split, workers: int = 8) -> list[str]:
  """Decodes every image, `workers` threads at a time -> one message per unreadable
  image (each naming the file or record and the reason), all of them, in split order.

  Threads: PIL decodes with the GIL released, and a network disk keeps several busy.
  """
  def failure(i):
    try:
      split.load_image(i)
    except images_lib.ImageDecodeError as e:
      return str(e)
    return None

  with concurrent.futures.ThreadPoolExecutor(max(1, workers)) as pool:
    return [m for m in pool.map(failure, range(split.num_images)) if m is not None]
