"""Drawing a scene: a muted textured background, the objects, the clutter."""
import math

import numpy as np
from PIL import Image, ImageDraw

from gralign_jax.data.synthetic.vocabulary import COLOURS, SHAPES


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
