"""experiments.evaluate and inference/evaluate.py: a run's checkpoint on any split."""
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax import train
from gralign_jax.inference import evaluate as evaluate_split

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")


@pytest.fixture(scope="module")
def run(smoke_root, tmp_path_factory):
  """A smoke run trained with its test split, and one without (data.test_split "")."""
  workdir = str(tmp_path_factory.mktemp("eval") / "run")
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  results = train.train_and_evaluate(config, workdir)
  return workdir, results


def test_evaluate_reproduces_the_runs_own_test_figures(run):
  workdir, results = run
  saved = evaluate_split.saved_config(workdir)
  config = ml_collections.ConfigDict(saved)
  assert evaluate_split.check_overrides(saved, config) == {}
  got = evaluate_split.evaluate_run(workdir, config, "test", log=lambda *a: None)
  assert got["step"] == results["best_step"]
  for key in KEYS:  # the trainer's final test, computed again from the checkpoint
    assert got["test"][key] == pytest.approx(results["test"][key]), key
  dev = evaluate_split.evaluate_run(workdir, config, "dev", log=lambda *a: None)
  assert dev["dev"]["rsum"] == pytest.approx(results["dev"]["rsum"])


def test_model_changes_are_refused_data_changes_accepted(run, tmp_path):
  workdir, _ = run
  saved = evaluate_split.saved_config(workdir)
  config = ml_collections.ConfigDict(saved)
  config.data.root = str(tmp_path)
  config.eval.block_texts = 7
  changes = evaluate_split.check_overrides(saved, config)
  assert set(changes) == {"data.root", "eval.block_texts"}
  for key, value in (("model.embed_dim", 64), ("data.image_size", 48),
                     ("data.pixel_mean", (0.0, 0.0, 0.0)), ("data.max_len", 8)):
    bad = ml_collections.ConfigDict(saved)
    node, leaf = bad, key.split(".")
    for part in leaf[:-1]:
      node = node[part]
    node[leaf[-1]] = value
    with pytest.raises(configs.ConfigError, match=key.replace(".", r"\.")):
      evaluate_split.check_overrides(saved, bad)


def _evaluate(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.evaluate", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


def test_command_line_writes_json_and_keeps_foreign_files(run, tmp_path):
  workdir, results = run
  out = tmp_path / "test.json"
  done = _evaluate(f"--workdir={workdir}", "--split=test", f"--out={out}",
                   "--config.eval.protocol=coco")
  assert done.returncode == 0, done.stderr
  written = json.loads(out.read_text())
  assert set(KEYS) <= set(written["test_1k"]) and set(KEYS) <= set(written["test_5k"])
  assert written["step"] == results["best_step"]
  assert written["config_changes"] == {"eval.protocol": ["1k", "coco"]}
  assert "test_5k" in done.stdout
  again = _evaluate(f"--workdir={workdir}", f"--out={out}")  # its own file: replaced
  assert again.returncode == 0, again.stderr
  assert "test" in json.loads(out.read_text())

  foreign = tmp_path / "notes.json"
  foreign.write_text('{"mine": 1}')
  refused = _evaluate(f"--workdir={workdir}", f"--out={foreign}")
  assert refused.returncode == 1
  assert refused.stderr.strip().splitlines()[-1].startswith("Error: --out=")
  assert foreign.read_text() == '{"mine": 1}'

  model = _evaluate(f"--workdir={workdir}", "--config.model.embed_dim=64")
  assert model.returncode == 1
  assert "model.embed_dim: 32 -> 64" in model.stderr.strip().splitlines()[-1]
  typo = _evaluate(f"--workdir={workdir}", "--config.data.rooot=x")
  assert typo.returncode == 1
  assert typo.stderr.strip().splitlines()[-1].startswith("Unknown config key 'rooot'")


def test_a_run_without_test_split_reports_dev_only(smoke_root, tmp_path, capsys):
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  config.data.test_split = ""
  config.train.num_steps = 2
  results = train.train_and_evaluate(config, str(tmp_path / "run"))
  assert "test" not in results and set(KEYS) <= set(results["dev"])
  with open(tmp_path / "run" / "results.json") as f:
    assert set(json.load(f)) == {"dev", "best_step"}
  assert "No test split" in capsys.readouterr().out
  config.data.dev_split = ""
  with pytest.raises(configs.ConfigError, match="data.dev_split"):
    configs.finalize(config)
