"""A run directory in a bucket: `--workdir=gs://...` through paths.py, against a local
GCS emulator (tests/gcs_emulator.py: gcp-storage-emulator from PyPI on 127.0.0.1, with
GCS's generation headers and upload preconditions). gcsfs finds it through
$STORAGE_EMULATOR_HOST, orbax's tensorstore through $TENSORSTORE_GCS_HTTP_URL."""
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import fsspec
import jax
import numpy as np
import pytest
from PIL import Image

from gralign_jax import paths
from gralign_jax import run_dir
from test_distributed import _free_port, final_params
from test_train import kill_after_mid_run_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BUCKET = "gralign-test"
FLAGS = ["--config=experiments/configs/demo.py:smoke", "--config.train.num_steps=12",
         "--config.train.ckpt_every=3", "--config.train.log_every=3",
         "--config.eval.every_steps=6"]


@pytest.fixture(scope="module")
def bucket(tmp_path_factory):
  """gs://gralign-test on an emulator of this test module's own; the environment that
  points gcsfs and tensorstore at it is set for this process and its children."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  log = open(tmp_path_factory.mktemp("gcs") / "emulator.log", "w")
  emulator = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), f"--port={port}",
       f"--bucket={BUCKET}"], stdout=log, stderr=subprocess.STDOUT)
  deadline = time.time() + 60
  while True:
    try:
      socket.create_connection(("127.0.0.1", port), timeout=1).close()
      break
    except OSError:
      assert emulator.poll() is None and time.time() < deadline, "emulator did not start"
      time.sleep(0.2)
  env = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
         "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false"}
  saved = {k: os.environ.get(k) for k in env}
  os.environ.update(env)
  fsspec.filesystem("gs").invalidate_cache()
  yield f"gs://{BUCKET}"
  for k, v in saved.items():
    if v is None:
      os.environ.pop(k, None)
    else:
      os.environ[k] = v
  emulator.terminate()
  emulator.wait()
  log.close()


def _fresh(path: str) -> list[str]:
  """Names under a bucket folder as the bucket has them now (no listing cache)."""
  fs, inner = fsspec.core.url_to_fs(path)
  fs.invalidate_cache()
  return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(inner, detail=False)
                ) if fs.exists(inner) else []


def _complete(path: str) -> list[str]:
  """_fresh, less the step folders that orbax has not committed yet (in a bucket a step
  is written in place and marked complete by its commit_success.txt)."""
  return [n for n in _fresh(path)
          if not n.isdigit() or "commit_success.txt" in _fresh(f"{path}/{n}")]


def test_the_path_layer_on_a_bucket(bucket, tmp_path):
  root = paths.join(bucket, "layer")
  assert paths.resolve(root + "/") == root and paths.is_remote(root)
  paths.makedirs(root)
  f = paths.join(root, "a.jsonl")
  paths.append_text(f, "one\n")
  paths.append_text(f, "two\n")  # an object cannot grow: it is rewritten whole
  assert paths.read_text(f) == "one\ntwo\n"
  paths.write_text(f, "replaced")
  assert paths.read_bytes(f) == b"replaced" and paths.isfile(f) and not paths.isdir(f)
  lock = paths.join(root, "x.lock")
  assert paths.create_exclusive(lock, "mine")
  assert not paths.create_exclusive(lock, "theirs")
  assert paths.read_text(lock) == "mine"
  paths.write_text(paths.join(root, "sub", "b.txt"), "b")
  assert paths.isdir(paths.join(root, "sub")) and paths.listdir(root) == [
      "a.jsonl", "sub", "x.lock"]
  paths.move(paths.join(root, "sub"), paths.join(root, "moved"))
  assert _fresh(root) == ["a.jsonl", "moved", "x.lock"]
  with paths.local_folder(paths.join(root, "moved")) as local:
    assert os.listdir(local) == ["b.txt"] and not paths.is_remote(local)
  assert not os.path.exists(local)  # the local copy is gone afterwards
  paths.remove(lock)
  paths.remove(lock)  # already gone: not an error
  assert not paths.exists(lock)


def test_a_bucket_lock_names_its_holder(bucket):
  workdir = paths.join(bucket, "locked")
  with run_dir.WorkdirLock(workdir) as held:
    holder = json.loads(paths.read_text(held.path))
    assert holder["pid"] == os.getpid()
    with pytest.raises(run_dir.RunDirError, match=f"pid {os.getpid()} on this host"):
      run_dir.WorkdirLock(workdir).acquire()
  assert not paths.exists(held.path)  # released


def _last_line(proc) -> str:
  lines = proc.stderr.strip().splitlines()
  assert lines, proc.stdout
  return lines[-1]


def test_mistyped_and_missing_buckets_are_one_line_before_anything_runs(bucket,
                                                                         smoke_root,
                                                                         tmp_path):
  """Issue 22, finding 8: gs:/bucket/run became a local folder "gs:" whose saves then
  failed mid-run; gs:///run was read as bucket "run"; an invalid name and a missing
  bucket ended in a traceback or a bare URL."""
  cases = {
      "gs:/gralign-test/run": "looks like a gs:// URL with its slashes mistyped",
      "gs:///run": "names no bucket",
      "gs://Not_A_Bucket/run": "'Not_A_Bucket' is not a valid Cloud Storage bucket name",
      "gs://no-such-bucket-here/run": "The bucket of gs://no-such-bucket-here/run does "
                                      "not exist, or these credentials cannot see it",
  }
  for workdir, message in cases.items():
    cmd, _ = _run(workdir, smoke_root)
    cmd = [a.replace("experiments/configs/", f"{REPO}/experiments/configs/") for a in cmd]
    proc = subprocess.run(cmd, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=REPO),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, (workdir, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _last_line(proc).startswith("Error: ") and message in _last_line(proc), (
        workdir, _last_line(proc))
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)  # no local "gs:" folder


def test_retrieve_and_visualize_without_gcsfs_say_what_to_install(tmp_path):
  """gcsfs missing gave 60-line tracebacks in retrieve and visualize."""
  fake = tmp_path / "site"
  (fake / "gcsfs").mkdir(parents=True)
  (fake / "gcsfs" / "__init__.py").write_text(
      "raise ImportError('No module named gcsfs (hidden by the test)')\n")
  env = dict(os.environ, PYTHONPATH=f"{fake}{os.pathsep}{REPO}")
  photos = tmp_path / "photos"
  photos.mkdir()
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(photos / "x.png")
  for cmd in (["experiments.retrieve", f"--images={photos}", "--query=a red circle"],
              ["experiments.visualize", "--caption=a red circle",
               f"--image={photos}/x.png", f"--out={tmp_path}/vis"]):
    proc = subprocess.run([sys.executable, "-m", cmd[0], "--workdir=gs://some-bucket/run",
                           *cmd[1:]], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert _last_line(proc).startswith(
        "Error: Cannot open gs://some-bucket/run: no filesystem for gs:// is installed"), (
            _last_line(proc))
    assert "pip install 'gralign_jax[cloud]'" in _last_line(proc)


def _run(workdir, root, **popen):
  return [sys.executable, "-m", "experiments.demo", *FLAGS, f"--config.data.root={root}",
          f"--workdir={workdir}"], dict(cwd=REPO, **popen)


def _params(workdir):
  return final_params(workdir, listdir=_fresh)


@pytest.mark.slow
def test_train_kill_resume_and_retrieve_in_a_bucket(bucket, smoke_root, tmp_path):
  local, remote = str(tmp_path / "local"), paths.join(bucket, "runs", "smoke")
  cmd, kw = _run(local, smoke_root)
  subprocess.run(cmd, check=True, capture_output=True, **kw)

  cmd, kw = _run(remote, smoke_root)
  proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                          start_new_session=True, **kw)
  kill_after_mid_run_checkpoint(proc, remote, first=3, last=12, listdir=_complete)
  assert paths.exists(paths.join(remote, "run.lock"))  # a kill leaves it: it is stale
  resumed = subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)
  assert "Took over a stale lock" in resumed.stdout and "Resumed from step" in resumed.stdout

  # The bucket's run equals the local one, bit for bit, and holds the whole record.
  (step_a, pa), (step_b, pb) = _params(local), _params(remote)
  assert step_a == step_b == 12
  jax.tree.map(np.testing.assert_array_equal, pa, pb)
  with open(os.path.join(local, "results.json")) as f:
    assert json.loads(paths.read_text(paths.join(remote, "results.json"))) == json.load(f)
  assert {"config.json", "metrics.jsonl", "results.json", "tokenizer", "tensorboard",
          "checkpoints"} <= set(_fresh(remote))
  assert "run.lock" not in _fresh(remote)
  records = [json.loads(line) for line in
             paths.read_text(paths.join(remote, "metrics.jsonl")).splitlines()]
  keys = [(r["step"], r["split"]) for r in records]
  assert len(keys) == len(set(keys)) and (12, "train") in keys
  assert _fresh(paths.join(remote, "tensorboard"))[0].startswith("events.out.tfevents")

  # Retrieval from the bucket: gallery cache and retrieval.json go there.
  images = str(tmp_path / "photos")
  shutil.copytree(os.path.join(smoke_root, "images"), images)
  query = ["--images=" + images, "--query=a red circle", "--k=3"]
  out = {}
  for name, workdir in (("local", local), ("remote", remote)):
    subprocess.run([sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
                    *query], cwd=REPO, check=True, capture_output=True)
    out[name] = json.loads(paths.read_text(paths.join(workdir, "retrieval.json")))
  hits = lambda r: [(h["image"], h["score"]) for q in r["captions_to_images"]
                    for h in q["top"]]
  assert hits(out["remote"]) == hits(out["local"])
  (digest,) = _fresh(paths.join(remote, "galleries"))
  assert out["remote"]["gallery_cache"] == paths.join(remote, "galleries", digest)
  assert "manifest.json" in _fresh(out["remote"]["gallery_cache"])


@pytest.mark.slow  # about 3 minutes: gcsfs retries each call for about 30 s first
@pytest.mark.exclusive  # it times how soon the run ends
def test_a_bucket_that_goes_away_mid_run_ends_the_run_in_one_line(smoke_root, tmp_path):
  """Issue 22, finding 2: the run hung for good (0% CPU) once its bucket stopped
  answering: tensorboardX's writer thread died on the failed upload, leaving every later
  flush waiting, and orbax's writes retried without end. Now the run ends within
  $GRALIGN_SAVE_TIMEOUT (here 20 s) of waiting on a save, plus gcsfs' retries."""
  port = _free_port()
  url = f"http://127.0.0.1:{port}"
  emulator = subprocess.Popen(
      [sys.executable, os.path.join(REPO, "tests", "gcs_emulator.py"), f"--port={port}",
       "--bucket=going-away"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  try:
    deadline = time.time() + 60
    while socket.socket().connect_ex(("127.0.0.1", port)) != 0:
      assert emulator.poll() is None and time.time() < deadline, "emulator did not start"
      time.sleep(0.2)
    env = dict(os.environ, STORAGE_EMULATOR_HOST=url, TENSORSTORE_GCS_HTTP_URL=url,
               GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false", GRALIGN_SAVE_TIMEOUT="20",
               PYTHONUNBUFFERED="1")
    log = open(tmp_path / "train.log", "w+")
    train = subprocess.Popen(
        [sys.executable, "-m", "experiments.demo",
         "--config=experiments/configs/demo.py:smoke", f"--config.data.root={smoke_root}",
         "--config.train.num_steps=100000", "--config.train.ckpt_every=5",
         "--config.train.log_every=5", "--config.eval.every_steps=100000",
         "--workdir=gs://going-away/run"], cwd=REPO, env=env, stdout=log,
        stderr=subprocess.STDOUT)
    deadline = time.time() + 300
    while "[train @ 10/" not in (tmp_path / "train.log").read_text():
      assert train.poll() is None, (tmp_path / "train.log").read_text()[-3000:]
      assert time.time() < deadline, "the run did not reach step 10"
      time.sleep(0.5)
  finally:
    emulator.kill()
    emulator.wait()
  gone = time.time()
  try:
    status = train.wait(timeout=600)
  finally:
    train.kill()
  text = (tmp_path / "train.log").read_text()
  lines = text.strip().splitlines()
  assert status == 1, text[-3000:]
  assert lines[-1].startswith("Error: "), text[-3000:]
  assert ("did not finish within 20 s: the storage stopped answering" in lines[-1]
          or "the storage did not answer" in lines[-1]), lines[-1]
  print(f"ended {time.time() - gone:.0f} s after the bucket went away")
