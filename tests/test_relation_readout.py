"""benchmarks/relation_readout.py: the read-outs recover what tokens built to hold it
hold, and find nothing in tokens that do not."""
import importlib.util
import os

import numpy as np
import pytest

from gralign_jax.models import token_grid

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def readout():
  spec = importlib.util.spec_from_file_location(
      "relation_readout", os.path.join(REPO, "benchmarks", "relation_readout.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _scenes(n: int, rng) -> list[dict]:
  """Scenes of two objects at random centres (64 px), each with one relation caption."""
  out = []
  for _ in range(n):
    objs = [{"centre": [float(v) for v in rng.uniform(2, 62, 2)]} for _ in range(2)]
    out.append({"objects": objs, "captions": [{"relation": [0, 1]}, {"kind": "single"}]})
  return out


def test_object_token_is_the_patch_under_the_centre(readout):
  layout = token_grid.visual_layout({"name": "vit", "image_size": 64, "patch_size": 16}, 17)
  index = lambda centre: readout.object_token(layout, 64, centre)
  assert index((5.0, 60.0)) == 1 + 3 * 4 + 0  # x 5, y 60: bottom row, first column
  assert index((63.9, 0.0)) == 1 + 3  # top right
  assert index((64.0, 64.0)) == 16  # the far edge stays on the grid


def test_tokens_that_hold_their_patch_place_give_the_relation(readout):
  rng = np.random.default_rng(0)
  scenes = _scenes(600, rng)
  layout = token_grid.visual_layout({"name": "vit", "image_size": 64, "patch_size": 8}, 65)
  # Token of patch p: its (row, col) on the grid and noise; the CLS token: noise.
  rows, cols = np.divmod(np.arange(64), 8)
  place = np.c_[rows, cols, np.zeros((64, 6))].astype(np.float32)
  tokens = np.concatenate([np.zeros((1, 8)), place])[None] + 0.01 * rng.normal(
      size=(600, 65, 8))
  got = readout.vision_readouts(tokens, scenes, layout, 64)
  assert got["objects"] == 1200 and got["pairs"] == 600
  assert got["centre_r2"] > 0.95
  # The patch's place is the centre to within a patch: the read-out from both tokens
  # comes within a few points of the one from the true centres.
  assert got["relation_from_a_b"] > got["relation_from_true_centres"] - 8
  assert got["relation_from_true_centres"] > 85
  # Tokens of noise alone hold no place and no relation.
  noise = readout.vision_readouts(rng.normal(size=(600, 65, 8)), scenes, layout, 64)
  assert noise["centre_r2"] < 0.05
  assert noise["relation_from_a_b"] < got["majority"] + 10


def test_text_readouts_see_identical_tokens_as_blind(readout):
  rng = np.random.default_rng(1)
  pieces = [["a", "red", "circle", "left", "of", "a", "blue", "square"]] * 200
  flips = ["left->right", "right->left"] * 100
  true = rng.normal(size=(200, 8, 16))
  same = readout.text_readouts(true, true.copy(), pieces, flips)
  assert same["object_word_cos"] == pytest.approx(1.0)
  assert same["relation_word_cos"] == pytest.approx(1.0)
  assert same["relation_from_shape_word"] < 65  # equal tokens, two labels: a coin
  # A shape word whose token carries the stated relation along one direction.
  carried = true.copy()
  sign = np.array([1.0 if f.startswith("left") else -1.0 for f in flips])
  false = true.copy()
  carried[:, 2, 0] += 3 * sign
  false[:, 2, 0] -= 3 * sign
  got = readout.text_readouts(carried, false, pieces, flips)
  assert got["relation_from_shape_word"] > 95
  assert got["object_word_cos"] < same["object_word_cos"]
