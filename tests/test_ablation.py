"""benchmarks/ablation.py at smoke size: each (variant, seed) is a run of its own, the
table's figures are the mean and spread of the runs' results.json, and a finished run
is not run again."""
import json
import os
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_grid_runs_each_seed_once_and_tables_mean_and_spread(smoke_root, tmp_path):
  runs, out = tmp_path / "runs", tmp_path / "ablation"
  cmd = [sys.executable, "benchmarks/ablation.py", "--smoke", "--seconds=0",
         "--variants=grm,tau_anneal", "--seeds=0,1", f"--runs={runs}", f"--out={out}",
         f"--data_root={smoke_root}"]
  subprocess.run(cmd, cwd=REPO, check=True, capture_output=True)
  table = json.loads((tmp_path / "ablation.json").read_text())
  tests = {}
  for variant in ("grm", "tau_anneal"):
    tests[variant] = []
    for seed in (0, 1):
      with open(runs / f"{variant}-s{seed}" / "results.json") as f:
        tests[variant].append(json.load(f)["test"]["rsum"])
    row = table["rows"][variant]
    assert sorted(row["seeds"]) == ["0", "1"]
    assert row["test_mean"] == pytest.approx(statistics.fmean(tests[variant]))
    assert row["test_sd"] == pytest.approx(statistics.stdev(tests[variant]))
  # The change against grm is taken seed by seed, then averaged.
  diffs = [a - b for a, b in zip(tests["tau_anneal"], tests["grm"])]
  row = table["rows"]["tau_anneal"]
  assert row["vs_reference_mean"] == pytest.approx(statistics.fmean(diffs))
  assert row["vs_reference_sd"] == pytest.approx(statistics.stdev(diffs))
  assert "vs_reference_mean" not in table["rows"]["grm"]
  seeds = table["rows"]["grm"]["seeds"]
  assert seeds["0"] != seeds["1"]  # the seed reaches the run
  md = (tmp_path / "ablation.md").read_text()
  ablation, gates = md.split("### The gate form")
  assert "| `grm` | full GRM | 2 |" in ablation and "tau_anneal" not in ablation
  assert "| `tau_anneal` | soft Gumbel-softmax, tau annealed 1 -> 0.1 | 2 |" in gates

  logs = {p: os.path.getsize(p) for p in runs.glob("*.log")}
  again = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
  assert "[ablation]" not in again.stdout  # nothing was run again
  assert {p: os.path.getsize(p) for p in runs.glob("*.log")} == logs
