"""Where each visual token lies: the one definition of the visual token grid, used by
everything that names or draws a token (the retrieval's alignment, the pictures, the
read-outs).

A ViT (and DINOv2) puts a CLS token first and then its patches row by row; Swin's tokens
are its final stage's grid, row by row, with no CLS; BUTD region features have no grid
(kind "regions").
"""
import dataclasses
import math
from typing import Mapping, Optional

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenLayout:
  """Where visual token j lies. kind "grid": tokens [first:] are the patches of a
  grid (rows x cols), row-major, after `first` tokens with no place (ViT's CLS);
  kind "regions": every token is a region, with no place on a grid."""
  kind: str
  first: int = 0
  grid: Optional[tuple[int, int]] = None

  @property
  def num_patches(self) -> int:
    return self.grid[0] * self.grid[1] if self.grid else 0


def _pair(x) -> tuple[int, int]:
  return (int(x), int(x)) if np.isscalar(x) else (int(x[0]), int(x[1]))


def visual_layout(vision: Mapping, num_tokens: int) -> TokenLayout:
  """config.model.vision and the number of visual tokens L_v -> TokenLayout.

  Raises:
    ValueError: the token count does not fit the backbone's grid.
  """
  name = vision["name"]
  if name == "butd":
    return TokenLayout("regions", 0, None)
  size = _pair(vision["image_size"])
  if name in ("vit", "dinov2"):  # CLS, then the patches
    first, cell = 1, int(vision["patch_size"])
    grid = (size[0] // cell, size[1] // cell)
  elif name == "swin":  # every stage after the first halves the grid (padding odd sizes)
    first, cell = 0, int(vision["patch_size"]) * 2 ** (len(vision["depths"]) - 1)
    grid = (math.ceil(size[0] / cell), math.ceil(size[1] / cell))
  else:
    raise ValueError(f"unknown model.vision.name {name!r}; expected vit, dinov2, swin "
                     "or butd")
  if first + grid[0] * grid[1] != num_tokens:
    raise ValueError(f"{name} at {size[0]}x{size[1]} px should give {first} + "
                     f"{grid[0]}x{grid[1]} visual tokens, the encoder gave {num_tokens}")
  return TokenLayout("grid", first, grid)


def patch_cell(index: int, layout: TokenLayout) -> tuple[int, int]:
  """Patch index -> (row, col) on the grid."""
  return divmod(int(index), layout.grid[1])


def token_names(layout: TokenLayout, num_tokens: int) -> list[str]:
  """Visual token j -> "CLS", "patch (row, col)" or "region j"."""
  if layout.kind == "regions":
    return [f"region {j}" for j in range(num_tokens)]
  return ["CLS"] * layout.first + ["patch ({}, {})".format(*patch_cell(j, layout))
                                   for j in range(num_tokens - layout.first)]
