"""The trainer end to end on a tiny synthetic set: run directory, resume, sharding, kill -9."""
import glob
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax import metrics as metrics_lib
from gralign_jax import optim
from gralign_jax import preemption
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.data import datasets
from gralign_jax.data import pipeline
from gralign_jax.models import grm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def smoke_config(root, **train):
  config = demo.get_config("smoke")
  config.data.root = root
  config.train.update(train)
  return config


def _events(xplane: str) -> set[str]:
  """The names of every event in a jax.profiler trace, read back as TensorBoard does."""
  planes = jax.profiler.ProfileData.from_file(xplane).planes
  return {e.name for plane in planes for line in plane.lines for e in line.events}


def test_run_directory_and_resume(smoke_root, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  results = train.train_and_evaluate(smoke_config(smoke_root, profile_steps="3:3"),
                                     workdir)
  for name in ("config.json", "metrics.jsonl", "results.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, "tensorboard"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["2", "4"]
  with open(os.path.join(workdir, "results.json")) as f:
    on_disk = json.load(f)
  keys = {"i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum"}
  assert keys <= set(on_disk["test"]) and keys <= set(on_disk["dev"])
  assert on_disk["test"]["rsum"] == pytest.approx(
      sum(on_disk["test"][k] for k in keys - {"rsum"}))
  records = metrics_lib.read_metrics(workdir)
  assert {r["split"] for r in records} >= {"train", "dev", "test"}
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
  for r in (r for r in records if r["split"] == "train"):  # issue 23: throughput, MFU
    assert r["step_time"] > 0 and r["examples_per_s"] == pytest.approx(
        16 / r["step_time"])  # the smoke batch
    assert r["tflops"] > 0 and 0 < r["mfu"] < 1
  traces = glob.glob(os.path.join(workdir, "profile", "plugins", "profile", "*",
                                  "*.xplane.pb"))
  assert len(traces) == 1
  assert {"train", "PjitFunction(train_step)"} <= _events(traces[0])  # step 3 traced
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["text"]["vocab_size"] > 0  # resolved from the tokenizer

  capsys.readouterr()
  again = train.train_and_evaluate(smoke_config(smoke_root, profile_steps="3:3"), workdir)
  out = capsys.readouterr().out
  assert "Resumed from step 4" in out
  assert again["test"] == results["test"]  # same best state, same scores


def test_sharded_update_equals_single_device(smoke_root):
  """One update with the batch split over 8 devices == the same update on one device."""
  assert jax.device_count() == 8
  config = smoke_config(smoke_root, batch_size=16)
  tokenizer = datasets.load_tokenizer(config)
  configs.finalize(config, vocab_size=len(tokenizer))
  split = datasets.read_split(config, "train")
  caps = pipeline.encode_captions(split.captions, tokenizer, config.data.max_len)
  batch = next(pipeline.train_iterator(split, caps, config, seed=0))
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch=10)
  out = {}
  for n in (1, 8):
    mesh = sharding.make_mesh(jax.devices()[:n])
    state = train_state.create_state(model, tx, config, mesh)
    step = train.make_train_step(model, tx, config, mesh)
    state, aux = step(state, sharding.global_batch(batch, mesh))
    state, aux = step(state, sharding.global_batch(batch, mesh))
    out[n] = jax.device_get((state["params"], aux["loss"]))
  np.testing.assert_allclose(out[1][1], out[8][1], rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               out[1][0], out[8][0])


def test_coco_protocol_reports_1k_folds_and_5k(smoke_root, tmp_path):
  config = smoke_config(smoke_root, num_steps=2)
  config.eval.protocol = "coco"  # 20 test images: five folds of 4
  results = train.train_and_evaluate(config, str(tmp_path / "coco"))
  assert {"test_1k", "test_5k", "dev"} <= set(results)
  assert 0 <= results["test_1k"]["rsum"] <= 600 and 0 <= results["test_5k"]["rsum"] <= 600
  with open(os.path.join(tmp_path, "coco", "results.json")) as f:
    assert set(json.load(f)) >= {"test_1k", "test_5k"}


def test_collapse_is_detected_and_reported(smoke_root, tmp_path, capsys, monkeypatch):
  """A model whose every score is equal: the log and metrics.jsonl say COLLAPSE."""
  from gralign_jax.scores import similarity
  real = similarity.pair_scores
  monkeypatch.setattr(similarity, "pair_scores", lambda i, t, c: {
      k: 0.0 * v for k, v in real(i, t, c).items()})
  config = smoke_config(smoke_root, num_steps=4, warmup_steps=0, log_every=2)
  config.loss.update(kind="triplet", warmup_epochs=0.0)
  config.eval.backend = "reference"  # evaluation through pair_scores too (patched above)
  workdir = str(tmp_path / "collapsed")
  train.train_and_evaluate(config, workdir)
  out = capsys.readouterr().out
  assert "[train @ 2] COLLAPSE" in out and "[dev @ 4] COLLAPSE" in out
  records = metrics_lib.read_metrics(workdir)
  assert any(r.get("collapsed") == 1 for r in records)
  losses = [r["l_ori"] for r in records if r["split"] == "train" and "l_ori" in r]
  assert losses and all(l == pytest.approx(2 * 16 * 0.2) for l in losses)


def test_a_dev_rsum_at_chance_is_reported(smoke_root, tmp_path, capsys, monkeypatch):
  """Scores that differ (no equality collapse) but rank as randomly as noise: the dev
  line says AT CHANCE, with the chance level of the dev split's size."""
  from gralign_jax.evaluation import collapse
  from gralign_jax.scores import similarity
  real = similarity.pair_scores
  monkeypatch.setattr(similarity, "pair_scores", lambda i, t, c: {
      k: 0.05 * jnp.sin(1e4 * v) for k, v in real(i, t, c).items()})
  config = smoke_config(smoke_root, num_steps=4, warmup_steps=0, log_every=2)
  config.eval.backend = "reference"  # evaluation through pair_scores too (patched above)
  train.train_and_evaluate(config, str(tmp_path / "noise"))
  out = capsys.readouterr().out
  chance = collapse.chance_rsum(16)  # the smoke dev split
  assert "[dev @ 4] AT CHANCE: dev rSum" in out
  assert f"that of random scores ({chance:.1f} on 16 images" in out
  assert "[dev @ 4] COLLAPSE" not in out  # the scores are not all equal


def test_missing_data_root_is_a_clear_error(tmp_path):
  from experiments.configs import flickr30k
  config = flickr30k.get_config("smoke")
  config.data.root = str(tmp_path / "nowhere")
  with pytest.raises(FileNotFoundError, match="nowhere"):
    train.train_and_evaluate(config, str(tmp_path / "run"))


def _main(workdir, root, *flags, entry="experiments.demo"):
  cmd = [sys.executable, "-m", entry, "--config=experiments/configs/demo.py:smoke",
         f"--config.data.root={root}", f"--workdir={workdir}", *flags]
  return cmd


def _names(folder: str) -> list[str]:
  return os.listdir(folder) if os.path.isdir(folder) else []


def kill_after_mid_run_checkpoint(proc, workdir, first: int, last: int,
                                  listdir=_names) -> None:
  """SIGKILLs proc's process group as soon as a checkpoint of a step in [first, last)
  appears under workdir, and checks that the run had not finished. listdir(folder) ->
  names ([] for no folder): how to look (a bucket's listing, for one)."""
  latest = f"{workdir}/checkpoints/latest"
  deadline = time.time() + 600  # a loaded machine (parallel test workers) starts slowly
  while True:
    steps = [int(s) for s in listdir(latest) if s.isdigit()]
    if steps and first <= max(steps) < last:
      break
    if time.time() > deadline or proc.poll() is not None:
      os.killpg(proc.pid, signal.SIGKILL)
      raise AssertionError(f"no checkpoint of a step in [{first}, {last}) under {latest} "
                           f"(steps {sorted(steps)}; the run "
                           f"{'ended' if proc.poll() is not None else 'took 600 s'})")
    time.sleep(0.05)
  os.killpg(proc.pid, signal.SIGKILL)
  proc.wait()
  # proc's children (a launcher's processes) die a moment later, and stay zombies until
  # reaped: wait for the group to go (the lock takes a zombie's over anyway).
  gone_by = time.time() + 30
  while time.time() < gone_by:
    try:
      os.killpg(proc.pid, 0)
    except ProcessLookupError:
      break
    time.sleep(0.05)
  assert "results.json" not in listdir(workdir), "killed too late"


def _final_params(workdir):
  latest = os.path.join(workdir, "checkpoints", "latest")
  step = max(int(s) for s in os.listdir(latest) if s.isdigit())
  state = ocp.PyTreeCheckpointer().restore(os.path.join(latest, str(step), "state"))
  return step, state["params"]


FLAGS_30 = ["--config.train.num_steps=30", "--config.train.ckpt_every=5",
            "--config.train.log_every=5", "--config.eval.every_steps=10"]


@pytest.fixture(scope="module")
def uninterrupted(smoke_root, tmp_path_factory):
  """A 30-step smoke run, start to end: what an interrupted run must end as."""
  whole = str(tmp_path_factory.mktemp("whole") / "run")
  subprocess.run(_main(whole, smoke_root, *FLAGS_30), cwd=REPO, check=True,
                 capture_output=True)
  return whole


def _assert_ends_as(whole, killed):
  step_a, params_a = _final_params(whole)
  step_b, params_b = _final_params(killed)
  assert step_a == step_b == 30
  jax.tree.map(np.testing.assert_array_equal, params_a, params_b)
  with open(os.path.join(whole, "results.json")) as fa, \
      open(os.path.join(killed, "results.json")) as fb:
    assert json.load(fa) == json.load(fb)


@pytest.mark.slow
def test_kill9_then_resume_gives_bitwise_identical_params(uninterrupted, smoke_root,
                                                          tmp_path):
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen(_main(killed, smoke_root, *FLAGS_30), cwd=REPO,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True)
  kill_after_mid_run_checkpoint(proc, killed, first=10, last=30)

  resumed = subprocess.run(_main(killed, smoke_root, *FLAGS_30), cwd=REPO, check=True,
                           capture_output=True, text=True)
  assert "Resumed from step" in resumed.stdout
  _assert_ends_as(uninterrupted, killed)


@pytest.mark.slow
def test_sigterm_saves_the_step_exits_resume_me_and_resumes_bitwise(uninterrupted,
                                                                    smoke_root, tmp_path):
  """Issue 23: a preemption notice. The run finishes its step, saves it (not a
  checkpoint step of its own), exits 75, and the same command ends as if never
  stopped."""
  stopped = str(tmp_path / "stopped")
  proc = subprocess.Popen(_main(stopped, smoke_root, *FLAGS_30), cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
  for line in proc.stdout:
    if line.startswith("[train @ 10/30]"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == preemption.EXIT_CODE, err[-3000:]
  last = err.strip().splitlines()[-1]
  assert last.startswith("Preempted (SIGTERM) at step "), last
  step = int(last.split("at step ")[1].split(":")[0])
  assert 10 <= step < 30
  latest = os.path.join(stopped, "checkpoints", "latest")
  assert max(int(s) for s in os.listdir(latest) if s.isdigit()) == step
  assert not os.path.exists(os.path.join(stopped, "results.json"))

  resumed = subprocess.run(_main(stopped, smoke_root, *FLAGS_30), cwd=REPO, check=True,
                           capture_output=True, text=True)
  assert f"Resumed from step {step}" in resumed.stdout
  _assert_ends_as(uninterrupted, stopped)


@pytest.mark.slow
def test_demo_config_runs_through_the_flickr30k_entry_point(smoke_root, tmp_path):
  """The demo is not a special path: the Flickr30K main reads the same layout."""
  workdir = str(tmp_path / "f30k")
  subprocess.run(_main(workdir, smoke_root, entry="experiments.flickr30k"), cwd=REPO,
                 check=True, capture_output=True)
  with open(os.path.join(workdir, "results.json")) as f:
    assert "rsum" in json.load(f)["test"]
