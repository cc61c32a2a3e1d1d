"""Train and evaluate end to end through each of the five data formats (a few steps).

The same trainer, pipeline, evaluator and recall code run for all five; only
config.data.format (and, for precomp, the region-feature backbone) changes.
"""
import json
import os
import shutil

import ml_collections
import pytest

import format_fixtures
from experiments.configs import demo
from gralign_jax import metrics as metrics_lib
from gralign_jax import train

RECALL_KEYS = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  return format_fixtures.build(str(tmp_path_factory.mktemp("formats")))


def config_for(fmt, roots):
  config = format_fixtures.configure(demo.get_config("smoke"), fmt, roots)
  config.train.update(batch_size=8, num_steps=2, log_every=1, ckpt_every=2)
  config.eval.update(every_steps=2)
  if fmt == "precomp":
    r, d = format_fixtures.FEATURE_SHAPE
    config.model.vision = ml_collections.ConfigDict(dict(
        name="butd", num_regions=r, feature_dim=d, width=32, mlp=True, dropout=0.0,
        weights=""))
  return config


def run(config, workdir):
  results = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, "results.json")) as f:
    assert json.load(f) == json.loads(json.dumps(results))
  for split in ("dev", "test"):
    assert RECALL_KEYS <= set(results[split])
    assert 0 <= results[split]["rsum"] <= 600
    assert results[split]["rsum"] == pytest.approx(
        sum(results[split][k] for k in RECALL_KEYS - {"rsum"}))
  return results, metrics_lib.read_metrics(workdir)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", format_fixtures.FORMATS)
def test_train_and_evaluate_through_each_format(roots, fmt, tmp_path):
  results, records = run(config_for(fmt, roots), str(tmp_path / fmt))
  data = [r for r in records if r["split"] == "data"]
  assert data and data[0]["train_images"] == 24 and data[0]["train_captions"] == 120
  assert data[0]["dev_images"] == 5 and data[0]["test_captions"] == 25
  assert data[0]["train_truncated_captions"] == 0  # max_len 28 fits every caption
  assert [r["step"] for r in records if r["split"] == "train"] == [1, 2]
  assert all("bad_images" not in r for r in records)  # only counted when skipping


@pytest.mark.slow
def test_laps_karpathy_and_flickr8k_train_identically(roots, tmp_path):
  """Same images, captions, ids and order from three layouts -> the same run, bit for
  bit."""
  a, _ = run(config_for("laps", roots), str(tmp_path / "laps"))
  b, _ = run(config_for("karpathy", roots), str(tmp_path / "karpathy"))
  c, _ = run(config_for("flickr8k", roots), str(tmp_path / "flickr8k"))
  assert a == b == c


@pytest.mark.slow
def test_skip_bad_images_counts_in_the_metrics(roots, tmp_path):
  root = str(tmp_path / "broken")
  shutil.copytree(roots["laps"], root)
  for name in ("000002.jpg", "000026.jpg"):  # one train image, one dev image
    path = os.path.join(root, "images", name)
    with open(path, "rb") as f:
      data = f.read()
    with open(path, "wb") as f:
      f.write(data[:len(data) // 3])
  config = config_for("laps", dict(roots, laps=root))
  with pytest.raises(Exception, match=r"000002\.jpg"):
    train.train_and_evaluate(config, str(tmp_path / "stops"))
  config.data.skip_bad_images = True
  config.train.update(num_steps=15, log_every=15, ckpt_every=15)  # one epoch
  config.eval.update(every_steps=15)
  results, records = run(config, str(tmp_path / "skips"))
  last = [r for r in records if r["split"] == "train"][-1]
  assert last["step"] == 15 and last["bad_images"] == 5  # image 2's five captions
  assert results["dev"]["bad_images"] == 1 and results["test"]["bad_images"] == 0
