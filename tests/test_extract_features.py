"""experiments.extract_features and inference/features.py: frozen tokens in the precomp
layout."""
import json
import os
import subprocess
import sys

import jax
import ml_collections
import numpy as np
import pytest

from experiments.configs import common
from experiments.configs import demo
from gralign_jax import configs
from gralign_jax import train
from gralign_jax.data import datasets
from gralign_jax.inference import features as extract_features
from gralign_jax.data import images
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.models import backbones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config(root):
  config = demo.get_config("smoke")
  config.data.root = root
  return configs.finalize(config)


def test_tokens_equal_the_backbone_on_each_image_and_train_a_frozen_run(smoke_root,
                                                                         tmp_path):
  config = _config(smoke_root)
  out = str(tmp_path / "feats")
  manifest = extract_features.extract(config, out, ("train", "dev"), batch_size=5,
                             log=lambda *a: None)
  l, c = manifest["feature_shape"]
  assert (l, c) == (5, 32)  # 4 patches of 16 px at 32 px + CLS; smoke width
  # Reference: the same random-init backbone, applied to one whole-split batch.
  module = backbones.build(config.model, "vision")
  params = module.init(jax.random.key(config.seed), *module.example_inputs())["params"]
  dev = datasets.read_split(config, "dev")
  pixels = next(pipeline.eval_image_batches(dev, config, dev.num_images))["image"]
  want = module.apply({"params": params}, images.model_input(
      pixels, config.data.pixel_mean, config.data.pixel_std))
  got = np.load(os.path.join(out, "dev_ims.npy"))
  np.testing.assert_allclose(got, np.asarray(want), atol=1e-5)
  read = readers.read_split(out, "dev", format="precomp", feature_shape=(l, c))
  assert read.captions == dev.captions and read.image_ids == dev.image_ids
  assert not any(n.startswith(".") for n in os.listdir(tmp_path))  # no partial left

  frozen = demo.get_config("smoke")
  frozen.model.vision = ml_collections.ConfigDict(common.precomputed_tokens(l, c))
  frozen.data.update(root=out, format="precomp", test_split="", tokenizer=os.path.join(
      smoke_root, "tokenizer"))
  frozen.train.num_steps = 2
  results = train.train_and_evaluate(frozen, str(tmp_path / "run"))
  assert 0 <= results["dev"]["rsum"] <= 600


def test_nothing_in_a_used_folder_is_replaced(smoke_root, tmp_path):
  config = _config(smoke_root)
  used = tmp_path / "used"
  used.mkdir()
  (used / "mine.txt").write_text("keep")
  with pytest.raises(FileExistsError, match="not empty"):
    extract_features.extract(config, str(used), log=lambda *a: None)
  assert os.listdir(used) == ["mine.txt"]
  stranger = tmp_path / ".new.partial"  # a folder of that name that is not ours
  stranger.mkdir()
  (stranger / "x").write_text("keep")
  with pytest.raises(FileExistsError, match="not written by an extraction"):
    extract_features.extract(config, str(tmp_path / "new"), log=lambda *a: None)
  assert (stranger / "x").read_text() == "keep"


def test_command_line(smoke_root, tmp_path):
  out = tmp_path / "f"
  done = subprocess.run(
      [sys.executable, "-m", "experiments.extract_features",
       "--config=experiments/configs/demo.py:smoke", f"--config.data.root={smoke_root}",
       f"--out={out}", "--splits=dev"], cwd=REPO, capture_output=True, text=True,
      timeout=600)
  assert done.returncode == 0, done.stderr
  manifest = json.loads((out / "features.json").read_text())
  assert list(manifest["splits"]) == ["dev"] and manifest["feature_shape"] == [5, 32]
  again = subprocess.run(
      [sys.executable, "-m", "experiments.extract_features",
       "--config=experiments/configs/demo.py:smoke", f"--config.data.root={smoke_root}",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=600)
  assert again.returncode == 1
  assert again.stderr.strip().splitlines()[-1].startswith("Error: --out=")
