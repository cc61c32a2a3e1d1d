"""experiments.inspect_data and gralign_jax/data/inspect.py: numbers against references,
the sample grid, unreadable images listed, unknown config keys refused."""
import os
import shutil
import subprocess
import sys

import numpy as np
from PIL import Image
import pytest

from gralign_jax.data import inspect
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.data import synthetic
from gralign_jax.data import text

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
  r = str(tmp_path_factory.mktemp("insp") / "syn")
  synthetic.generate(r, num_train=6, num_dev=2, num_test=3, image_size=32)
  return r


def test_stats_against_references(root):
  split = readers.read_split(root, "train")
  tok = text.load_tokenizer(os.path.join(root, "tokenizer"))
  s = inspect.split_stats(split, tok, max_len=12)
  words = [len(c.split()) for c in split.captions]
  assert (s["images"], s["captions"], s["kind"]) == (6, 30, "pixels")
  assert s["words"]["min"] == min(words) and s["words"]["max"] == max(words)
  assert s["words"]["mean"] == pytest.approx(np.mean(words))
  # the truncation count is the one training reports
  assert s["truncated"] == pipeline.encode_captions(split.captions, tok, 12).num_truncated > 0
  assert s["tokens"]["max"] > 12
  table = inspect.format_report({"train": s}, 12)
  assert f"{s['truncated']:>6}" in table and "truncated@12" in table


def test_grid_size(root):
  split = readers.read_split(root, "train")
  grid = inspect.sample_grid(split, num=5, size=64, cols=4)
  assert grid.size[0] == 4 * 72 and grid.size[1] > 2 * 72


def _truncate(path):
  with open(path, "rb") as f:
    data = f.read()
  with open(path, "wb") as f:
    f.write(data[:len(data) // 2])


def test_check_images_lists_every_unreadable_image(root, tmp_path):
  split = readers.read_split(root, "train")
  paths = []
  for i in range(12):  # more than any "first N" a listing might stop at
    path = str(tmp_path / f"{i}.jpg")
    shutil.copy(split.image_paths[i % 6], path)
    if i != 5:
      _truncate(path)
    paths.append(path)
  many = readers.Split("many", tuple(paths), tuple(range(12)), split.captions * 2)
  messages = inspect.check_images(many, workers=3)
  assert len(messages) == 11
  assert [next(p for p in paths if p + ":" in m) for m in messages] == (
      paths[:5] + paths[6:])


def _main(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.inspect_data",
                         "--config=experiments/configs/demo.py:smoke", *flags],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def test_command_reports_splits_writes_the_grid_and_exits_0(root, tmp_path):
  out_png = str(tmp_path / "grid.png")
  proc = _main(f"--config.data.root={root}", f"--out={out_png}", "--samples=4",
               "--check_images")
  assert proc.returncode == 0, proc.stderr[-2000:]
  lines = proc.stdout.splitlines()
  row = lambda name: next(l.split() for l in lines if l.startswith(name + " "))
  assert row("train")[1:3] == ["6", "30"] and row("dev")[1:3] == ["2", "10"]
  assert row("test")[1:3] == ["3", "15"]
  assert "train: 0 of 6 images unreadable" in lines
  assert lines[-1] == ("inspect_data OK: 3 split(s) read without a fault; every image "
                       "decoded.")
  with Image.open(out_png) as im:
    assert im.size[0] == 4 * (192 + 8)


def test_faults_are_one_line_each_and_every_bad_image_is_listed(root, tmp_path):
  """An empty dev split and two truncated images in train and test: the fault is one
  line and the other splits are still read, both images are listed, the exit code is
  1 and the summary comes last."""
  broken = str(tmp_path / "broken")
  shutil.copytree(root, broken)
  train_image = os.path.join(broken, "images", "000002.jpg")
  test_image = os.path.join(broken, "images", "000009.jpg")
  _truncate(train_image)
  _truncate(test_image)
  for name in ("dev_ids.txt", "dev_caps.txt"):
    open(os.path.join(broken, "precomp", name), "w").close()
  proc = _main(f"--config.data.root={broken}", f"--out={tmp_path / 'grid.png'}",
               "--samples=4", "--check_images")
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr
  errors = proc.stderr.strip().splitlines()
  caps = os.path.join(broken, "precomp", "dev_caps.txt")
  assert errors[0].startswith(f"Error in split 'dev': Split 'dev' is empty: {broken}/"
                              f"precomp/dev_ids.txt and {caps} hold no images.")
  assert errors[-1] == ("inspect_data FAILED: 1 data fault(s) (split 'dev') and 2 "
                        "unreadable image(s) (1 in train, 1 in test); each is listed "
                        "above.")
  assert len(errors) == 2
  out = proc.stdout.splitlines()
  assert "train: 1 of 6 images unreadable" in out
  assert "test: 1 of 3 images unreadable" in out
  assert any(train_image in l and "truncated" in l for l in out)
  assert any(test_image in l and "truncated" in l for l in out)
  assert os.path.exists(tmp_path / "grid.png")


def test_unknown_data_key_is_refused(root, tmp_path):
  proc = _main(f"--config.data.root={root}", "--config.data.skip_bad_image=true",
               f"--out={tmp_path / 'x.png'}")
  assert proc.returncode != 0
  assert ("Unknown config key 'skip_bad_image' in ['--config.data.skip_bad_image']: "
          "the config has no such field (gralign_jax/configs.py lists them all); did you "
          "mean 'skip_bad_images'?") in proc.stderr
  assert "Traceback" not in proc.stderr


def test_bad_flags_and_a_missing_config_are_one_line(tmp_path):
  """Issue 22, finding 11: --samples=0 and -3, --out=x.txt and a missing --config file
  ended in tracebacks (PIL's, numpy's, ml_collections')."""
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  smoke = "--config=experiments/configs/demo.py:smoke"
  cases = [
      (["experiments.inspect_data", smoke, "--samples=0"],
       "Error: --samples=0: expected 1 or more images in the grid."),
      (["experiments.inspect_data", smoke, "--samples=-3"], "Error: --samples=-3"),
      (["experiments.inspect_data", smoke, f"--out={tmp_path}/x.txt"],
       "the grid is a picture; expected a .png or .jpg file name."),
      (["experiments.inspect_data", f"--config={tmp_path}/nope.py"],
       f"Error: --config={tmp_path}/nope.py cannot be loaded ([Errno 2] No such file"),
      (["experiments.demo", "--config=experiments/configs/nope.py",
        f"--workdir={tmp_path}/run"],
       "Error: --config=experiments/configs/nope.py cannot be loaded"),
  ]
  for argv, says in cases:
    proc = subprocess.run([sys.executable, "-m", *argv], cwd=repo, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 1, (argv, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")
    assert says in proc.stderr.strip().splitlines()[-1], (argv, proc.stderr[-500:])
  assert os.listdir(tmp_path) == []
