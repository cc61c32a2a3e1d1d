"""Training beyond one process: jax.distributed over 127.0.0.1, started through
launch/local.sh, sees exactly the global batches of one process, and resumes after a
kill; --distributed's modes."""
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from gralign_jax import distributed
from test_train import kill_after_mid_run_checkpoint

pytestmark = pytest.mark.exclusive  # jax.distributed processes with deadlines
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAGS = ["--config=experiments/configs/demo.py:smoke", "--config.train.num_steps=8",
         "--config.train.ckpt_every=2", "--config.train.log_every=2",
         "--config.eval.every_steps=4"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _local(workdir, root, tmp_path, **popen):
  """launch/local.sh: two processes of four CPU devices each."""
  cmd = ["bash", "launch/local.sh", "--num_processes=2", "--cpu_devices_per_process=4",
         f"--port={_free_port()}", f"--log_dir={tmp_path / 'logs'}", "--",
         sys.executable, "-m", "experiments.demo", *FLAGS,
         f"--config.data.root={root}", f"--workdir={workdir}"]
  return cmd, dict(cwd=REPO, env=dict(os.environ, XLA_FLAGS=""), **popen)


def _single(workdir, root):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
             JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-m", "experiments.demo", *FLAGS,
                  f"--config.data.root={root}", f"--workdir={workdir}"], cwd=REPO,
                 env=env, check=True, capture_output=True)


def final_params(workdir, listdir=os.listdir):
  """The last checkpoint's params, restored onto this process's first device (the
  checkpoint may come from another topology). listdir: how to list a folder."""
  latest = f"{workdir}/checkpoints/latest"
  step = max(int(s) for s in listdir(latest) if s.isdigit())
  path = f"{latest}/{step}/state"
  meta = ocp.PyTreeCheckpointer().metadata(path)
  meta = getattr(meta, "item_metadata", None) or meta  # newer orbax: StepMetadata
  tree = getattr(meta, "tree", meta)
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  like = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                      tree)
  return step, ocp.StandardCheckpointer().restore(path, like)["params"]


def _assert_same_params(a, b):
  (step_a, pa), (step_b, pb) = final_params(a), final_params(b)
  assert step_a == step_b == 8
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=0, atol=1e-6), pa, pb)


@pytest.fixture(scope="module")
def one(smoke_root, tmp_path_factory):
  """The reference: the same run in one process of eight CPU devices."""
  workdir = str(tmp_path_factory.mktemp("one_process") / "run")
  _single(workdir, smoke_root)
  return workdir


@pytest.mark.slow
def test_two_processes_resume_after_a_kill(one, smoke_root, tmp_path):
  killed = str(tmp_path / "killed")
  cmd, kw = _local(killed, smoke_root, tmp_path, start_new_session=True)
  run = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
  kill_after_mid_run_checkpoint(run, killed, first=2, last=8)
  cmd, kw = _local(killed, smoke_root, tmp_path)
  proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert "Took over a stale lock" in proc.stdout and "Resumed from step" in proc.stdout
  _assert_same_params(one, killed)


@pytest.mark.slow
def test_two_processes_train_as_one_and_resume_after_a_preemption(one, smoke_root,
                                                                  tmp_path):
  """Two processes of four devices train as one of eight. Issue 23: SIGTERM to local.sh
  reaches both processes; JAX's preemption sync point has them save the same step; both
  exit 75, local.sh too; the same command resumes to the one-process run's
  parameters."""
  stopped = str(tmp_path / "stopped")
  cmd, kw = _local(stopped, smoke_root, tmp_path)
  proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          **kw)
  for line in proc.stdout:
    if line.startswith("[train @ 2/8]"):
      proc.send_signal(signal.SIGTERM)
      break
  out, err = proc.communicate(timeout=180)
  assert proc.returncode == 75, out[-2000:] + err[-2000:]
  assert "# preempted: every process saved the same step" in out
  logs = [(tmp_path / "logs" / f"process_{i}.log").read_text() for i in (0, 1)]
  saved = set()
  for log in logs:  # the last line but jax.distributed's note on its shutdown barrier
    last = [l for l in log.strip().splitlines() if not l.startswith("jax.distributed")][-1]
    assert last.startswith("Preempted (SIGTERM) at step "), log[-2000:]
    saved.add(int(last.split("at step ")[1].split(":")[0]))
  assert len(saved) == 1 and 2 <= min(saved) < 8, saved
  latest = os.path.join(stopped, "checkpoints", "latest")
  assert max(int(s) for s in os.listdir(latest) if s.isdigit()) == min(saved)

  cmd, kw = _local(stopped, smoke_root, tmp_path)
  proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
  assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
  assert f"Resumed from step {min(saved)}" in proc.stdout
  _assert_same_params(one, stopped)
  # Only process 0 wrote the run's files; both saved the checkpoints together.
  assert sorted(n for n in os.listdir(stopped) if not n.startswith(".")) == [
      "checkpoints", "config.json", "metrics.jsonl", "results.json", "tensorboard",
      "tokenizer"]


# srun as it behaves for a job step of $SLURM_NTASKS tasks on one node: each task gets
# its rank and node list in SLURM's variables; a signal srun gets goes to every task;
# the step's exit status is the highest of its tasks'.
STAND_IN_SRUN = r"""#!/usr/bin/env bash
echo "$*" > "$SRUN_LOG_DIR/argv"
while [ $# -gt 0 ]; do
  case $1 in --*) shift ;; *) break ;; esac
done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
  SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NODELIST=localhost SLURM_STEP_NUM_NODES=1 \
    "$@" >> "$SRUN_LOG_DIR/task_$i.log" 2>&1 &
  pids+=("$!")
done
trap 'kill -TERM "${pids[@]}" 2> /dev/null' TERM
status=0
for pid in "${pids[@]}"; do
  while :; do
    code=0; wait "$pid" || code=$?
    kill -0 "$pid" 2> /dev/null || break
  done
  if [ "$code" -gt "$status" ]; then status=$code; fi
done
exit $status
"""
STAND_IN_SCONTROL = r"""#!/usr/bin/env bash
echo "$*" >> "$SRUN_LOG_DIR/scontrol"
"""


def _slurm_job_id() -> int:
  """A job id whose coordinator port (jax: 61440 + id % 4096) is free here."""
  for port in range(61440 + os.getpid() % 4000, 65536):
    with socket.socket() as s:
      try:
        s.bind(("127.0.0.1", port))
      except OSError:
        continue
    return 4096 * 1000 + port - 61440
  raise RuntimeError("no free port in 61440-65535")


def _sbatch(tmp_path, smoke_root, workdir, **popen):
  """launch/slurm_gpu.sbatch as sbatch runs it for a job of two tasks, with the stand-in
  srun and scontrol; -> its Popen. Task I's output: tmp_path/logs/task_I.log."""
  bin_dir, logs = tmp_path / "bin", tmp_path / "logs"
  for folder in (bin_dir, logs):
    folder.mkdir(exist_ok=True)
  for name, text in (("srun", STAND_IN_SRUN), ("scontrol", STAND_IN_SCONTROL)):
    (bin_dir / name).write_text(text)
    (bin_dir / name).chmod(0o755)
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_COORDINATOR", "JAX_NUM", "JAX_PROCESS"))}
  env.update(  # what sbatch gives the batch script; the tasks' own come from srun
      PATH=os.pathsep.join([str(bin_dir), os.path.dirname(sys.executable), env["PATH"]]),
      SLURM_JOB_ID=str(_slurm_job_id()), SLURM_NTASKS="2", SLURM_SUBMIT_DIR=REPO,
      SLURM_CPUS_PER_TASK="1", SRUN_LOG_DIR=str(logs), JAX_PLATFORMS="cpu",
      XLA_FLAGS="--xla_force_host_platform_device_count=4", PYTHONUNBUFFERED="1")
  return subprocess.Popen(
      ["bash", "launch/slurm_gpu.sbatch", "--experiment=demo", f"--workdir={workdir}",
       "--config=experiments/configs/demo.py:smoke", "--", *FLAGS[1:],
       f"--config.data.root={smoke_root}"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      **popen)


@pytest.mark.slow
def test_the_slurm_recipe_trains_two_tasks_as_one_and_requeues_on_the_signal(
    one, smoke_root, tmp_path):
  """Two SLURM tasks train as one process of eight devices. Issue 23: SIGTERM to the
  batch script (#SBATCH --signal=B:TERM@120) reaches the tasks through srun; they save
  one step and exit 75; the script requeues the job (scontrol requeue JOBID), and the
  requeued job resumes to the one-process run's parameters."""
  workdir, task0 = str(tmp_path / "run"), tmp_path / "logs" / "task_0.log"
  proc = _sbatch(tmp_path, smoke_root, workdir)
  deadline = time.time() + 600
  while not (task0.exists() and "[train @ 2/8]" in task0.read_text()):
    assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
    time.sleep(0.2)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-2000:] + task0.read_text()[-3000:]
  job = re.search(r"requeueing job (\d+)", out)
  assert job, out
  assert (tmp_path / "logs" / "scontrol").read_text() == f"requeue {job.group(1)}\n"
  saved = re.findall(r"Preempted \(SIGTERM\) at step (\d+)", task0.read_text())
  assert len(saved) == 1 and 2 <= int(saved[0]) < 8
  assert (tmp_path / "logs" / "argv").read_text().startswith("python -m experiments.demo")
  # jax.distributed.initialize() with no arguments found the job from SLURM's variables.
  assert "jax.distributed: 2 processes (slurm), 8 devices" in task0.read_text()

  proc = _sbatch(tmp_path, smoke_root, workdir)  # the requeued job: the same script
  _, err = proc.communicate(timeout=900)
  assert proc.returncode == 0, err[-2000:]
  assert f"Resumed from step {saved[0]}" in task0.read_text()
  _assert_same_params(one, workdir)


def test_auto_does_nothing_on_one_machine(monkeypatch):
  for var in ("JAX_COORDINATOR_ADDRESS", "SLURM_JOB_ID", "SLURM_PROCID",
              "GRALIGN_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setattr(distributed, "_on_cloud_tpu_vm", lambda: False)
  called = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: called.append(kw))
  assert distributed.initialize("auto") is False and not called
  assert distributed.initialize("off") is False and not called
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_PROCID", "0")
  monkeypatch.setenv("SLURM_NTASKS", "1")  # a one-task job is one machine too
  assert distributed.initialize("auto") is False and not called
  monkeypatch.setenv("SLURM_NTASKS", "2")
  assert distributed.initialize("auto", log=lambda *a: None) is True
  assert called == [dict(coordinator_address=None, num_processes=None, process_id=None,
                         initialization_timeout=300 + 60, heartbeat_timeout_seconds=60)]


def test_on_without_a_cluster_names_the_flags(tmp_path):
  env = {k: v for k, v in os.environ.items()
         if not k.startswith(("SLURM_", "JAX_COORDINATOR", "GRALIGN_DISTRIBUTED"))}
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--distributed=on",
       "--config=experiments/configs/demo.py:smoke", f"--workdir={tmp_path / 'w'}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: --distributed=on, but no cluster was detected")
  for flag in ("--coordinator_address", "--num_processes", "--process_id"):
    assert flag in last
  assert not os.path.exists(tmp_path / "w")


@pytest.mark.parametrize("process_id", [0, 1])
def test_a_missing_peer_or_coordinator_ends_in_one_line_within_the_deadline(tmp_path,
                                                                          process_id):
  """Issue 22, finding 6: waiting was silent for minutes and ended in a C++ abort (307 s
  for an absent coordinator). Process 1 alone: no coordinator; process 0 alone: it
  hosts the coordinator, and its peer never comes."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, GRALIGN_DISTRIBUTED_TIMEOUT="5", PYTHONUNBUFFERED="1")
  t0 = time.time()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.demo", "--distributed=on",
       f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
       f"--process_id={process_id}", "--config=experiments/configs/demo.py:smoke",
       f"--workdir={tmp_path / 'w'}"], cwd=REPO, env=env, capture_output=True, text=True,
      timeout=120)
  assert time.time() - t0 < 60
  assert proc.returncode == 1, proc.stderr[-2000:]
  assert (f"jax.distributed: process {process_id} waiting for the coordinator at "
          f"127.0.0.1:{port} and all 2 processes (up to 5 s") in proc.stdout
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith(f"Error: jax.distributed: process {process_id} waited 5 s for "
                         f"the coordinator at 127.0.0.1:{port}"), last
  assert "Check failure" not in proc.stderr


def test_a_coordinator_port_in_use_ends_process_0_in_one_line(tmp_path):
  """Something else listens on the port: process 0's service cannot start (it was a
  traceback); with no --port, launch/local.sh picks a free one."""
  with socket.socket() as s:
    s.bind(("0.0.0.0", 0))
    s.listen()
    port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.demo", "--distributed=on",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
         "--process_id=0", "--config=experiments/configs/demo.py:smoke",
         f"--workdir={tmp_path / 'w'}"], cwd=REPO, capture_output=True, text=True,
        timeout=120)
  assert proc.returncode == 1, proc.stderr[-2000:]
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: jax.distributed: process 0 could not start the "
                         f"coordination service on [::]:{port} ("), last
  assert f"expected port {port} free on this host" in last
  assert "Traceback" not in proc.stderr


def test_a_coordinator_without_process_numbers_and_an_unknown_mode_are_refused(
    monkeypatch):
  for var in ("JAX_NUM_PROCESSES", "JAX_PROCESS_ID"):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(distributed.DistributedError, match="needs --num_processes"):
    distributed.initialize("on", coordinator_address="127.0.0.1:1234")
  with pytest.raises(distributed.DistributedError, match="expected one of auto, on, off"):
    distributed.initialize("sometimes")
  for pid, n, says in ((2, 2, r"--process_id=2: expected 0 to 1"),
                       (-1, 2, r"--process_id=-1: expected 0 to 1"),
                       (0, 0, r"--num_processes=0: expected 1 or more")):
    with pytest.raises(distributed.DistributedError, match=says):
      distributed.initialize("on", coordinator_address="127.0.0.1:1234",
                             num_processes=n, process_id=pid)


# A process of a job over 127.0.0.1, blocked in collectives as training is, that can
# be told to die (SIGKILL from the test), raise, or end early.
PEER = r"""
import sys, time
from gralign_jax import distributed
port, n, me, how = sys.argv[1:]
distributed.initialize("on", f"127.0.0.1:{port}", int(n), int(me), log=lambda *a: None)
import jax.numpy as jnp
from jax.experimental import multihost_utils
print("up", flush=True)
if how == "raise":
  time.sleep(1)
  raise RuntimeError("a bug in process " + me)
if how == "refuse":  # an error the entry points end in one line (bad data, say)
  time.sleep(1)
  from experiments import entry_point
  entry_point._exit("Error: bad data in process " + me)
if how == "end":  # once the other has said it is alive
  time.sleep(3)
  sys.exit(0)
if how == "work":  # after its peer has ended: no collective, just a long final step
  time.sleep(30)
  sys.exit(0)
while True:
  multihost_utils.process_allgather(jnp.ones(3))
  time.sleep(0.2)
"""


def _peers(hows, **env_vars):
  """Starts len(hows) processes of one job; -> (their Popens, when they started)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", PYTHONUNBUFFERED="1",
             GRALIGN_HEARTBEAT_TIMEOUT="20", **env_vars)
  port = str(_free_port())
  procs = [subprocess.Popen([sys.executable, "-c", PEER, port, str(len(hows)), str(i), how],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
           for i, how in enumerate(hows)]
  return procs, time.time()


def _ended(proc, within: float):
  try:
    out, err = proc.communicate(timeout=within)
  except subprocess.TimeoutExpired:
    proc.kill()
    out, err = proc.communicate()
    raise AssertionError(f"still running after {within} s: {err[-2000:]}") from None
  return proc.returncode, out, err.strip().splitlines()


@pytest.mark.parametrize("victim", [2, 0])
def test_a_killed_process_ends_every_other_in_one_line_within_the_bound(victim):
  """Issue 22: a survivor waited in its collective until JAX's heartbeat aborted it
  natively (96 s). Now half the heartbeat timeout (10 s here) and a beat. Process 0
  too: the coordination service lives in a host process of its own
  (gralign_jax/coordinator.py), so its death is not every other's native abort."""
  procs, _ = _peers(["loop", "loop", "loop"])
  for p in procs:
    assert p.stdout.readline().strip() == "up", p.stderr.read()[-2000:]
  procs[victim].kill()
  t0 = time.time()
  for i in {0, 1, 2} - {victim}:
    code, _, err = _ended(procs[i], within=60)
    assert code == 1, err[-20:]
    assert err[-1].startswith(
        f"Error: jax.distributed: process {victim} has not been heard from for"), err[-5:]
    assert f"process {i} stops too" in err[-1]
    assert not any("Check failure" in line for line in err)
  # 10 s of silence + one beat (1.7 s) + process 0's grace of two beats, with room for
  # a loaded machine; JAX's own heartbeat would have taken 20 s and aborted.
  assert time.time() - t0 < 30
  procs[victim].wait()


def _hosts() -> set[int]:
  """The pids of coordination-service hosts running now."""
  found = subprocess.run(["pgrep", "-f", "gralign_jax.coordinator"], capture_output=True,
                         text=True)
  return {int(pid) for pid in found.stdout.split()}


def test_the_service_host_ends_with_the_job_and_outlives_a_killed_process_0():
  """The host exits with a job that ends normally; after process 0's death it serves
  until the others have heard of it (the heartbeat timeout, 20 s here), then exits."""
  before = _hosts()
  procs, _ = _peers(["end", "end"])
  for p in procs:
    code, _, err = _ended(p, within=120)
    assert code == 0, err[-5:]
  time.sleep(1)
  assert _hosts() - before == set()
  procs, _ = _peers(["loop", "loop"])
  for p in procs:
    assert p.stdout.readline().strip() == "up", p.stderr.read()[-2000:]
  host = _hosts() - before
  assert len(host) == 1, host
  procs[0].kill()
  code, _, err = _ended(procs[1], within=60)
  assert code == 1 and err[-1].startswith("Error: jax.distributed: process 0 has not"), err
  assert host <= _hosts(), "the host ended before process 1 had heard"
  deadline = time.time() + 40
  while host <= _hosts() and time.time() < deadline:
    time.sleep(0.5)
  assert not host & _hosts(), "the host outlived its linger (20 s)"
  procs[0].wait()


@pytest.mark.parametrize("raiser", [1, 0])
def test_a_process_that_raises_ends_the_others_at_once(raiser):
  """Its traceback, then it leaves (jax's shutdown barrier would hold it minutes); the
  others end at their next beat naming it, before its silence could (10 s). Process 0
  waits two beats for them before it goes, and its service host with it."""
  hows = ["loop", "loop"]
  hows[raiser] = "raise"
  procs, _ = _peers(hows)
  code, _, err = _ended(procs[raiser], within=120)
  assert code == 1 and err[-1] == f"RuntimeError: a bug in process {raiser}", err[-5:]
  t0 = time.time()
  code, _, err = _ended(procs[1 - raiser], within=60)
  assert code == 1
  assert err[-1].startswith(
      f"Error: jax.distributed: process {raiser} ended with RuntimeError"), err[-5:]
  assert time.time() - t0 < 10


def test_a_process_that_ended_normally_is_not_lost():
  """Process 1 is done; process 0 works on, without collectives, past the silence
  bound (10 s): neither reports anything."""
  procs, _ = _peers(["work", "end"])
  outs = []
  for p in procs:
    code, out, err = _ended(p, within=120)
    assert code == 0, err[-5:]
    assert not any(line.startswith("Error:") for line in err)
    outs.append(out)
  assert ("jax.distributed: process 1 is done and waits for process 0 to finish (jax's "
          "shutdown barrier)") in outs[1]


def test_a_process_that_stops_with_an_error_line_stops_the_others_saying_why():
  procs, _ = _peers(["loop", "refuse"])
  code, _, err = _ended(procs[1], within=120)
  assert code == 1 and err[-1] == "Error: bad data in process 1", err[-5:]
  t0 = time.time()
  code, _, err = _ended(procs[0], within=60)
  assert code == 1
  assert err[-1].startswith("Error: jax.distributed: process 1 stopped (bad data in "
                            "process 1); process 0 stops too."), err[-5:]
  assert time.time() - t0 < 10
