"""Retrieval from a trained run: it reproduces the run's own test recall, caches the
gallery, explains the best pair word by word, and the command line prints it."""
import os
import subprocess
import sys

import numpy as np
import pytest

from experiments.configs import demo
from gralign_jax import retrieval
from gralign_jax import train
from gralign_jax.data import datasets
from gralign_jax.evaluation import recall

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained(smoke_root, tmp_path_factory):
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  workdir = str(tmp_path_factory.mktemp("run"))
  results = train.train_and_evaluate(config, workdir)
  return workdir, datasets.read_split(config, "test"), results


def test_retrieval_reproduces_the_runs_test_recall(trained):
  workdir, test, results = trained
  run = retrieval.load_run(workdir)
  split = retrieval.gallery_split(list(test.image_paths))
  out = retrieval.retrieve(run, split, list(test.captions), k=max(test.num_captions, 100))
  n, m = test.num_images, test.num_captions
  # The rankings -> a score matrix with the same orders -> the recall protocol.
  sims = np.full((n, m), -np.inf)
  for item in out["images_to_captions"]:
    row = test.image_paths.index(item["image"])
    for rank, hit in enumerate(item["top"]):
      sims[row, hit["index"]] = -rank
  i2t = recall.recall_metrics(sims, captions_per_image=5)
  t2i_sims = np.full((n, m), -np.inf)
  for col, item in enumerate(out["captions_to_images"]):
    for rank, hit in enumerate(item["top"]):
      t2i_sims[hit["index"], col] = -rank
  t2i = recall.recall_metrics(t2i_sims, captions_per_image=5)
  want = results["test"]
  for key in ("i2t_r1", "i2t_r5", "i2t_r10"):
    assert i2t[key] == pytest.approx(want[key])
  for key in ("t2i_r1", "t2i_r5", "t2i_r10"):
    assert t2i[key] == pytest.approx(want[key])


def test_gallery_is_encoded_once_and_alignment_names_patches(trained, monkeypatch):
  workdir, test, _ = trained
  run = retrieval.load_run(workdir)
  split = retrieval.gallery_split(list(test.image_paths[:6]))
  first = retrieval.retrieve(run, split, ["a red circle", test.captions[0]], k=3)
  caches = sorted(os.listdir(os.path.join(workdir, "galleries")))
  monkeypatch.setattr(run.evaluator, "encode_images",
                      lambda *a: pytest.fail("the gallery should come from its cache"))
  again = retrieval.retrieve(run, split, ["a red circle", test.captions[0]], k=3)
  assert again["captions_to_images"] == first["captions_to_images"]
  assert sorted(os.listdir(os.path.join(workdir, "galleries"))) == caches
  words = first["captions_to_images"][0]["alignment"]
  assert [w["token"] for w in words] == ["[CLS]", "a", "red", "circle", "[SEP]"]
  grid = run.config.model.vision.image_size // run.config.model.vision.patch_size
  for w in words:
    assert w["visual_token"] == "CLS" or w["visual_token"].startswith("patch (")
    if w["visual_token"] != "CLS":
      r, c = map(int, w["visual_token"][7:-1].split(", "))
      assert 0 <= r < grid and 0 <= c < grid
    assert -1 <= w["cos"] <= 1 and 0 <= w["gate"] <= 1
  scores = [h["score"] for h in first["captions_to_images"][1]["top"]]
  assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_command_line(trained, tmp_path):
  workdir, test, _ = trained
  images = tmp_path / "photos"
  images.mkdir()
  for p in test.image_paths[:3]:
    (images / os.path.basename(p)).write_bytes(open(p, "rb").read())
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
       f"--images={images}", "--query=a blue square", "--k=2",
       f"--out={tmp_path / 'r.json'}"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert '"a blue square"' in proc.stdout and "word piece -> best visual token" in proc.stdout
  assert os.path.isfile(tmp_path / "r.json")
  proc = subprocess.run([sys.executable, "-m", "experiments.retrieve",
                         f"--workdir={tmp_path / 'nothing'}", f"--images={images}",
                         "--query=x"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode != 0 and "config.json does not exist" in proc.stderr
