"""Nothing lost, nothing hidden: the run directory under misuse and failure.

Each test is a case a user met: a resume with a changed config, a damaged latest
checkpoint, an error or a failed save mid-run, two runs in one workdir, a config value
that cannot work, replayed steps in metrics.jsonl.
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time

import pytest

from experiments.configs import demo
from gralign_jax import checkpoint as ckpt_lib
from gralign_jax import configs
from gralign_jax import metrics as metrics_lib
from gralign_jax import processes
from gralign_jax import run_dir
from gralign_jax import train
from test_train import REPO, smoke_config


@pytest.fixture(scope="module")
def trained(smoke_root, tmp_path_factory):
  """A finished smoke run (checkpoints latest/2, latest/4, best/4) and its results."""
  workdir = str(tmp_path_factory.mktemp("trained") / "run")
  results = train.train_and_evaluate(smoke_config(smoke_root), workdir)
  return workdir, results


def copy_run(trained, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(trained[0], workdir)
  return workdir


def run_main(args, tmp_path, prelude="", timeout=240):
  """experiments.demo in a fresh process; `prelude` is Python run before it."""
  script = tmp_path / "main.py"
  script.write_text(prelude + "\nfrom experiments import entry_point\n"
                    "entry_point.run('demo.py', 'runs/demo')\n")
  env = dict(os.environ, PYTHONPATH=REPO, XLA_FLAGS="")
  return subprocess.run([sys.executable, str(script), *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=timeout)


# ------------------------------------------------------------------------------------
# 2. Resume with a changed config
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value", [("train.batch_size", 32),        # same shapes
                                       ("model.embed_dim", 64)])         # other shapes
def test_resume_with_a_changed_config_is_refused_and_the_record_kept(
    trained, smoke_root, tmp_path, key, value):
  workdir = copy_run(trained, tmp_path)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    saved = f.read()
  config = smoke_config(smoke_root)
  section, leaf = key.split(".")
  old = config[section][leaf]
  config[section][leaf] = value
  with pytest.raises(run_dir.RunDirError) as e:
    train.train_and_evaluate(config, workdir)
  assert f"{key}: {old} -> {value}" in str(e.value)
  assert "new --workdir" in str(e.value)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == saved
  # Even when asked to allow changes: these alter the model or its training.
  with pytest.raises(run_dir.RunDirError):
    train.train_and_evaluate(config, workdir, allow_config_changes=True)


def test_safe_changes_resume_only_when_allowed_and_are_logged_beside_the_record(
    trained, smoke_root, tmp_path):
  workdir = copy_run(trained, tmp_path)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    saved = f.read()
  config = smoke_config(smoke_root)
  config.eval.batch_size = 8
  with pytest.raises(run_dir.RunDirError, match="--allow_config_changes"):
    train.train_and_evaluate(config, workdir)
  results = train.train_and_evaluate(config, workdir, allow_config_changes=True)
  # Another eval batch size is another per-device shape, so other XLA code: the scores
  # may move by rounding (CI saw score_std 0.12154679 vs 0.12154678), the rankings not.
  assert results["test"] == pytest.approx(trained[1]["test"], rel=1e-6)
  with open(os.path.join(workdir, "config.json"), "rb") as f:
    assert f.read() == saved
  with open(os.path.join(workdir, "config_changes.jsonl")) as f:
    change = json.loads(f.readline())
  assert change["changes"] == {"eval.batch_size": [16, 8]} and change["step"] == 4


def test_config_changes_lists_every_key():
  saved = {"a": {"b": 1, "c": [1, 2]}, "d": "x"}
  new = {"a": {"b": 2, "c": [1, 2]}, "e": 3}
  assert run_dir.config_changes(saved, new) == {
      "a.b": (1, 2), "d": ("x", "(absent)"), "e": ("(absent)", 3)}
  assert run_dir.is_safe("eval.batch_size") and run_dir.is_safe("train.num_steps")
  assert not run_dir.is_safe("train.batch_size")
  assert not run_dir.is_safe("model.embed_dim")


def test_a_run_saved_before_a_key_existed_resumes_with_what_it_did():
  saved = {"data": {"image_size": 64}, "loss": {"kind": "triplet"}}
  same = {"data": {"image_size": 64, "resize_method": "bilinear"},
          "loss": {"kind": "triplet", "regularizer_scale": 1.0, "entropy_form": "paper"}}
  assert run_dir.config_changes(saved, same) == {}
  new = dict(same, loss=dict(same["loss"], regularizer_scale="batch"))
  assert run_dir.config_changes(saved, new) == {
      "loss.regularizer_scale": (1.0, "batch")}
  # issue 23's keys: a run saved before them resumes with their defaults
  assert run_dir.config_changes(
      {"train": {"lr": 1e-4}},
      {"train": {"lr": 1e-4, "grad_cache_chunks": 1, "profile_steps": ""}}) == {}


def test_a_saved_config_loads_with_the_values_of_the_keys_it_predates():
  saved = {"model": {"gumbel_tau": 1.0}, "loss": {"entropy_form": "mi"}}
  full = configs.fill_added_keys(saved)
  assert full["model"] == {"gumbel_tau": 1.0, "gumbel_tau_final": 1.0}
  assert full["loss"]["entropy_form"] == "mi"  # a saved value is kept
  assert full["data"]["resize_method"] == "bilinear"
  assert saved == {"model": {"gumbel_tau": 1.0}, "loss": {"entropy_form": "mi"}}


# ------------------------------------------------------------------------------------
# 4. A damaged latest checkpoint
# ------------------------------------------------------------------------------------
def _damage(step_dir, how):
  if how == "truncated array file":
    # Every data file: with only the biggest one cut, a full suite run (2026-12-07) once
    # restored the step anyway (the cause was not found; alone the test passed).
    data = os.path.join(step_dir, "state", "ocdbt.process_0", "d")
    for name in os.listdir(data):
      if os.path.getsize(os.path.join(data, name)) > 100:
        os.truncate(os.path.join(data, name), 100)
  elif how == "empty meta":
    open(os.path.join(step_dir, "meta", "metadata"), "w").close()
  elif how == "truncated manifest":
    os.truncate(os.path.join(step_dir, "state", "manifest.ocdbt"), 50)


@pytest.mark.parametrize("how", ["truncated array file", "empty meta",
                                 "truncated manifest"])
def test_damaged_latest_checkpoint_falls_back_to_the_newest_that_restores(
    trained, smoke_root, tmp_path, capsys, how):
  workdir = copy_run(trained, tmp_path)
  _damage(os.path.join(workdir, "checkpoints", "latest", "4"), how)
  capsys.readouterr()
  results = train.train_and_evaluate(smoke_config(smoke_root), workdir)
  out = capsys.readouterr().out
  skipped = [line for line in out.splitlines() if "cannot be restored" in line]
  assert len(skipped) == 1 and skipped[0].startswith("Checkpoint latest/4 cannot be")
  assert "using step 2" in skipped[0] and "Resumed from step 2" in out
  # The damaged step is kept, moved aside; steps 3-4 are replayed to the same end.
  aside = os.listdir(os.path.join(workdir, "checkpoints", "unreadable"))
  assert len(aside) == 1 and aside[0].startswith("latest-4-")
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["2", "4"]
  assert results["test"] == trained[1]["test"]


def test_no_restorable_checkpoint_is_an_error_that_moves_nothing(trained, smoke_root,
                                                                  tmp_path):
  workdir = copy_run(trained, tmp_path)
  for step in ("2", "4"):
    _damage(os.path.join(workdir, "checkpoints", "latest", step), "empty meta")
  with pytest.raises(ckpt_lib.CheckpointError, match="step 4: .*; step 2: "):
    train.train_and_evaluate(smoke_config(smoke_root), workdir)
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints", "latest"))) == ["2", "4"]
  assert not os.path.exists(os.path.join(workdir, "checkpoints", "unreadable"))


# ------------------------------------------------------------------------------------
# 5. Errors after training started: saves finish, one line last, the process exits
# ------------------------------------------------------------------------------------
def test_error_mid_run_finishes_pending_saves_and_ends_with_one_line(smoke_root,
                                                                      tmp_path):
  data = tmp_path / "data"
  shutil.copytree(smoke_root, data)
  path = data / "images" / "000005.jpg"  # first met at step 7 (seed 0)
  path.write_bytes(path.read_bytes()[:100])
  proc = run_main(["--config=experiments/configs/demo.py:smoke",
                   f"--config.data.root={data}", f"--workdir={tmp_path / 'run'}",
                   "--config.data.check_images=false", "--config.train.ckpt_every=1",
                   "--config.train.num_steps=40"], tmp_path)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: Could not decode image file"), last
  latest = os.listdir(tmp_path / "run" / "checkpoints" / "latest")
  assert latest and not [n for n in latest if "tmp" in n], latest
  assert not os.path.exists(tmp_path / "run" / "run.lock")


FAILING_SAVES = textwrap.dedent("""
    # The commit of every save from the second on fails: a full disk, a lost mount.
    import orbax.checkpoint._src.path.atomicity as atomicity
    calls = [0]
    original = atomicity.AtomicRenameTemporaryPath.finalize
    async def finalize(self, *args, **kwargs):
      calls[0] += 1
      if calls[0] >= 2:
        raise OSError(28, "No space left on device")
      return await original(self, *args, **kwargs)
    atomicity.AtomicRenameTemporaryPath.finalize = finalize
    """)


def test_a_failed_save_is_one_line_and_the_process_exits(smoke_root, tmp_path):
  proc = run_main(["--config=experiments/configs/demo.py:smoke",
                   f"--config.data.root={smoke_root}", f"--workdir={tmp_path / 'run'}",
                   "--config.train.ckpt_every=1", "--config.train.num_steps=40"],
                  tmp_path, prelude=FAILING_SAVES)
  assert proc.returncode == 1
  assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: Saving a checkpoint under ") and "No space left" in last
  assert not os.path.exists(tmp_path / "run" / "run.lock")


# ------------------------------------------------------------------------------------
# 6. One run per workdir
# ------------------------------------------------------------------------------------
def test_a_second_run_in_a_locked_workdir_is_refused_naming_the_holder(smoke_root,
                                                                       tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
  try:
    (workdir / "run.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": holder.pid,
        "start": processes.process_start(holder.pid), "since": "2026-11-30 10:00:00"}))
    with pytest.raises(run_dir.RunDirError, match=f"Another run is using workdir .*"
                                                  f"pid {holder.pid} on this host"):
      train.train_and_evaluate(smoke_config(smoke_root), str(workdir))
    assert sorted(os.listdir(workdir)) == ["run.lock"]  # nothing else written
  finally:
    holder.kill()
    holder.wait()
  # The holder is gone: its lock is stale, taken over, and released at the end.
  train.train_and_evaluate(smoke_config(smoke_root), str(workdir))
  assert not (workdir / "run.lock").exists()


def test_lock_of_a_zombie_is_stale(tmp_path):
  """A killed run whose process is not yet reaped (a zombie) holds the workdir no more."""
  child = subprocess.Popen([sys.executable, "-c", "pass"])
  deadline = time.time() + 60
  while processes._proc_stat(child.pid)[:1] != ["Z"] and time.time() < deadline:
    time.sleep(0.01)  # not reaped: exited, it stays a zombie until wait()
  try:
    assert processes._proc_stat(child.pid)[:1] == ["Z"]
    (tmp_path / "run.lock").write_text(json.dumps({
        "host": socket.gethostname(), "pid": child.pid,
        "start": processes.process_start(child.pid), "since": "earlier"}))
    with run_dir.WorkdirLock(str(tmp_path)) as lock:
      assert lock.held and f"pid {child.pid}" in lock.message and "is gone" in lock.message
  finally:
    child.wait()


def test_lock_of_another_host_is_respected_and_released_only_by_its_owner(tmp_path):
  (tmp_path / "run.lock").write_text(json.dumps({"host": "tpu-vm-7", "pid": 1}))
  with pytest.raises(run_dir.RunDirError, match="pid 1 on host tpu-vm-7"):
    run_dir.WorkdirLock(str(tmp_path)).acquire()
  os.remove(tmp_path / "run.lock")
  with run_dir.WorkdirLock(str(tmp_path)) as lock:
    assert lock.held and json.loads((tmp_path / "run.lock").read_text())["pid"] == (
        os.getpid())
    with pytest.raises(run_dir.RunDirError, match="this host"):
      run_dir.WorkdirLock(str(tmp_path)).acquire()
  assert not (tmp_path / "run.lock").exists()


# ------------------------------------------------------------------------------------
# 7. Values that cannot work, refused before anything is built
# ------------------------------------------------------------------------------------
@pytest.mark.parametrize("key,value,expected", [
    ("train.lr", 0.0, "a value > 0"),
    ("train.lr", -1e-3, "a value > 0"),
    ("train.batch_size", 0, "a value > 0"),
    ("train.num_steps", 0, "a number of steps > 0, or -1"),
    ("model.num_regions", 0, "K >= 1"),
    ("model.vision.image_size", 60, "a multiple of model.vision.patch_size=16"),
    ("model.score", "fine", "one of 'grm', 'global'"),
    ("loss.kind", "hinge", "one of 'triplet', 'infonce'"),
])
def test_bad_values_are_one_line_naming_key_value_and_what_is_allowed(
    tmp_path, key, value, expected):
  config = demo.get_config()
  node, leaf = config, key.split(".")
  for part in leaf[:-1]:
    node = node[part]
  node[leaf[-1]] = value
  if key == "model.vision.image_size":
    config.data.image_size = value
  with pytest.raises(configs.ConfigError) as e:
    train.train_and_evaluate(config, str(tmp_path / "run"))
  assert str(e.value).startswith(f"config.{key}={value!r}: expected {expected}")
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "run")  # refused before anything was written


def test_batch_larger_than_the_training_set_is_refused(smoke_root, tmp_path):
  with pytest.raises(configs.ConfigError,
                     match=r"config.train.batch_size=512: expected at most the 320 "):
    train.train_and_evaluate(smoke_config(smoke_root, batch_size=512),
                             str(tmp_path / "run"))


def test_every_config_holds_the_keys_the_readme_documents():
  from experiments.configs import coco, flickr30k
  documented = {"model.vision.weights", "model.text.weights", "model.compute_dtype",
                "data.tokenizer", "data.skip_bad_images", "data.check_images",
                "train.max_train_seconds"}
  blocks = {"model.vision.remat", "model.text.remat"}  # transformer backbones only
  for config, keys in ((demo.get_config(), documented | blocks),
                       (demo.get_config("smoke"), documented | blocks),
                       (coco.get_config(), documented | blocks),
                       (flickr30k.get_config("butd_bigru,smoke"), documented)):
    configs.finalize(config)
    flat = run_dir.flatten(config.to_dict())
    assert keys <= set(flat), keys - set(flat)


# ------------------------------------------------------------------------------------
# 12. One metrics record per step and split
# ------------------------------------------------------------------------------------
def test_replayed_steps_are_not_logged_twice_and_the_final_eval_has_its_own_step(
    trained, smoke_root, tmp_path):
  workdir = copy_run(trained, tmp_path)
  # As if killed after logging steps 3-4 but before checkpoint 4 landed.
  shutil.move(os.path.join(workdir, "checkpoints", "latest", "4"),
              str(tmp_path / "aside"))
  results = train.train_and_evaluate(smoke_config(smoke_root), workdir)
  records = metrics_lib.read_metrics(workdir)
  keys = [(r["step"], r["split"]) for r in records]
  assert len(keys) == len(set(keys)), keys
  assert [r["step"] for r in records if r["split"] == "train"] == [2, 4]
  dev = [r for r in records if r["split"] == "dev"]
  assert [r["step"] for r in dev] == [4] and dev[0]["rsum"] == results["dev"]["rsum"]
  test = [r for r in records if r["split"] == "test"]
  assert [r["step"] for r in test] == [results["best_step"]]


def test_metrics_file_cut_short_by_a_kill_reads_and_appends(tmp_path):
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 1.0})
  writer.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 2, "split": "tra')  # the kill
  writer = metrics_lib.MetricWriter(str(tmp_path))
  writer.write(1, "train", {"loss": 5.0})  # a replay: already recorded
  writer.write(2, "train", {"loss": 2.0})
  writer.close()
  records = metrics_lib.read_metrics(str(tmp_path))
  assert [(r["step"], r["loss"]) for r in records] == [(1, 1.0), (2, 2.0)]


# ------------------------------------------------------------------------------------
# 9. A damaged image is found before training, not when first sampled
# ------------------------------------------------------------------------------------
def test_damaged_image_stops_the_run_before_training_unless_skipped(smoke_root, tmp_path,
                                                                    capsys):
  from gralign_jax.data import images  # pylint: disable=g-import-not-at-top
  data = tmp_path / "data"
  shutil.copytree(smoke_root, data)
  damaged = data / "images" / "000063.jpg"  # the last training image
  damaged.write_bytes(damaged.read_bytes()[:200])
  with pytest.raises(images.ImageDecodeError,
                     match=r"Split 'train': 1 of 64 image files unreadable.*000063.jpg"):
    train.train_and_evaluate(smoke_config(str(data)), str(tmp_path / "run"))
  assert not os.path.exists(tmp_path / "run" / "checkpoints")  # before any training
  config = smoke_config(str(data))
  config.data.skip_bad_images = True
  capsys.readouterr()
  train.train_and_evaluate(config, str(tmp_path / "run2"))
  out = capsys.readouterr().out
  assert "000063.jpg is not a readable image" in out and "Passed over" in out


def test_a_failed_tensorboard_upload_reaches_the_trainer_instead_of_hanging_it(
    monkeypatch):
  """A bucket's TensorBoard events are uploaded from tensorboardX's writer thread; its
  death on a failed upload left every later flush waiting for ever (issue 22, finding
  2). The failure is now raised in the writing thread, where the run's error path
  takes it."""
  from gralign_jax import paths  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(paths, "exists", lambda path: False)
  monkeypatch.setattr(paths, "append_text", lambda path, text: None)

  def gone(path, data):
    raise paths.PathError(f"Cannot write {path}: the storage did not answer")

  monkeypatch.setattr(paths, "write_bytes", gone)
  writer = metrics_lib.MetricWriter("gs://some-bucket/run")
  try:
    with pytest.raises(paths.PathError, match="the storage did not answer"):
      for step in range(3):
        writer.write(step, "train", {"loss": 1.0})
  finally:  # while the stand-ins are in place: no upload may reach the real gcsfs later
    writer.close()
