"""The committed benchmark records (benchmarks/*.md, *.json, the run ledgers) change only
through a full run at a tool's default settings: a smoke run, a subset or another data
set writes under runs/benchmarks/, and --out into benchmarks/ is refused for them
(issue 22, finding 7: a partial export_check replaced export_check.{json,md}; an
ablation --smoke rewrote ablation.md/json and put a 4-step record into the ledger)."""
import hashlib
import os
import subprocess
import sys

import pytest

from experiments import records

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(REPO, "benchmarks")


def _digests() -> dict:
  """benchmarks/'s files -> their SHA-256 (a change anywhere shows)."""
  out = {}
  for name in sorted(os.listdir(BENCH)):
    path = os.path.join(BENCH, name)
    if os.path.isfile(path):
      with open(path, "rb") as f:
        out[name] = hashlib.sha256(f.read()).hexdigest()
  return out


def _run(*args):
  return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True,
                        text=True, timeout=600)


def test_out_prefix_rules(tmp_path, capsys):
  assert records.out_prefix("ablation", None, []) == os.path.join(BENCH, "ablation")
  assert records.out_prefix("ablation", "", []) == os.path.join(BENCH, "ablation")
  scratch = records.out_prefix("ablation", None, ["--smoke"])
  assert scratch == os.path.join(REPO, "runs", "benchmarks", "ablation")
  assert "--smoke" in capsys.readouterr().out
  mine = str(tmp_path / "mine")
  assert records.out_prefix("ablation", mine, ["--smoke"]) == mine
  # A full run may name the committed place itself.
  assert records.out_prefix("x", "benchmarks/x", []) == "benchmarks/x"
  for committed in ("benchmarks/ablation", os.path.join(BENCH, "sub", "x")):
    with pytest.raises(SystemExit, match=r"^Error: --out=.* committed records .* "
                       r"this run sets --smoke --seeds=0\. Give --out a place outside"):
      records.out_prefix("ablation", committed, ["--smoke", "--seeds=0"])
  assert records.is_committed(os.path.join(BENCH, "x"))
  assert not records.is_committed(str(tmp_path / "benchmarks" / "x"))


def test_a_smoke_ablation_table_leaves_the_committed_records_alone(tmp_path):
  before = _digests()
  scratch = os.path.join(REPO, "runs", "benchmarks", "ablation")
  made = [scratch + ext for ext in (".md", ".json") if not os.path.exists(scratch + ext)]
  try:
    proc = _run("benchmarks/ablation.py", "--smoke", "--table_only",
                f"--runs={tmp_path}/runs")
    assert proc.returncode == 0, proc.stderr
    assert f"its records go to {scratch}.*" in proc.stdout
    assert os.path.isfile(scratch + ".md")
    assert _digests() == before
    proc = _run("benchmarks/ablation.py", "--smoke", "--table_only",
                f"--runs={tmp_path}/runs", "--out=benchmarks/ablation")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(
        "Error: --out=benchmarks/ablation is among the committed records")
    assert _digests() == before
  finally:
    for path in made:  # this test's own files only
      if os.path.exists(path):
        os.remove(path)


def test_a_partial_export_check_cannot_replace_the_committed_table():
  before = _digests()
  proc = _run("-m", "experiments.export_check", "--configs=butd_bigru", "--smoke",
              "--platforms=tpu", "--programs=encode_texts", "--out=benchmarks/export_check")
  assert proc.returncode == 1
  last = proc.stderr.strip().splitlines()[-1]
  assert last.startswith("Error: --out=benchmarks/export_check is among the committed")
  assert "--configs=butd_bigru" in last and "--smoke" in last
  assert _digests() == before


def test_a_flickr8k_grid_on_other_data_writes_elsewhere(tmp_path):
  before = _digests()
  scratch = os.path.join(REPO, "runs", "benchmarks", "flickr8k")
  made = [scratch + ext for ext in (".md", ".json") if not os.path.exists(scratch + ext)]
  try:
    proc = _run("benchmarks/flickr8k.py", f"--data_root={tmp_path}", "--table_only",
                f"--runs={tmp_path}/runs")
    assert proc.returncode == 0, proc.stderr
    assert f"its records go to {scratch}.*" in proc.stdout
    assert _digests() == before
  finally:
    for path in made:
      if os.path.exists(path):
        os.remove(path)
