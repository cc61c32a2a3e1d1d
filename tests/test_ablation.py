"""benchmarks/ablation.py at smoke size: each (variant, seed) is a run of its own, the
table's figures are the mean and spread of the runs' results.json, each finished run is
recorded in the ledger, and a recorded run is not run again."""
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.slow
def test_the_grid_runs_each_seed_once_and_tables_mean_and_spread(smoke_root, tmp_path):
  runs, out = tmp_path / "runs", tmp_path / "ablation"
  jobs = min(2, len(os.sched_getaffinity(0)))
  cmd = [sys.executable, "benchmarks/ablation.py", "--smoke", "--seconds=0",
         "--variants=grm,tau_anneal", "--seeds=0,1", f"--runs={runs}", f"--out={out}",
         f"--data_root={smoke_root}", f"--jobs={jobs}"]
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

  ledger = json.loads((tmp_path / "ablation_runs.json").read_text())["runs"]
  assert sorted(ledger) == ["grm-s0", "grm-s1", "tau_anneal-s0", "tau_anneal-s1"]
  assert [ledger[f"grm-s{s}"]["test_rsum"] for s in (0, 1)] == tests["grm"]
  with open(runs / "grm-s0" / "results.json") as f:  # every run is probed
    probe = json.load(f)["probe"]
  assert ledger["grm-s0"]["probe"] == {k: v["accuracy"] for k, v in probe["kinds"].items()}
  assert "| relation | order | gates colour / shape / size / relation |" in md
  assert ledger["grm-s0"]["cores_per_run"] == len(os.sched_getaffinity(0)) // jobs

  # --redo_unprobed: a record from before the probe is made again from its run, which
  # has the probe; the record it replaces is kept under "earlier". A run folder
  # without the probe is refused rather than recorded as it is.
  path = tmp_path / "ablation_runs.json"
  old = json.loads(path.read_text())
  for name in ("grm-s0", "grm-s1"):
    old["runs"][name].pop("probe")
    old["runs"][name]["commit"] = "before"
  path.write_text(json.dumps(old))
  with open(runs / "grm-s1" / "results.json") as f:
    unprobed = {k: v for k, v in json.load(f).items() if k != "probe"}
  (runs / "grm-s1" / "results.json").write_text(json.dumps(unprobed))
  redo = cmd + ["--redo_unprobed", "--variants=grm"]  # the later flag wins
  refused = subprocess.run(redo, cwd=REPO, capture_output=True, text=True)
  assert refused.returncode != 0
  last = refused.stderr.strip().splitlines()[-1]
  assert "grm-s1 holds a finished run without the probe" in last
  subprocess.run(redo + ["--seeds=0"], cwd=REPO, check=True, capture_output=True)
  redone = json.loads(path.read_text())["runs"]
  assert redone["grm-s0"]["probe"] == ledger["grm-s0"]["probe"]
  assert redone["grm-s0"]["earlier"]["commit"] == "before"
  assert redone["grm-s0"]["earlier"]["test_rsum"] == ledger["grm-s0"]["test_rsum"]
  assert "probe" not in redone["grm-s1"] and "earlier" not in redone["grm-s1"]

  # The ledger, not the runs folder, is the record: without RUNS/ nothing is run again
  # and the table is the same.
  path.write_text(json.dumps({"what": "", "runs": ledger}))
  shutil.rmtree(runs)
  again = subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
  assert "[ablation]" not in again.stdout
  assert not runs.exists() or not any(runs.iterdir())
  body = lambda text: text.split("\n\n", 1)[1]  # after the header, which has the date
  assert body((tmp_path / "ablation.md").read_text()) == body(md)


def test_an_unknown_variant_or_too_many_jobs_is_refused(tmp_path):
  base = [sys.executable, "benchmarks/ablation.py", f"--runs={tmp_path}/runs",
          f"--out={tmp_path}/ablation", "--table_only"]
  bad = subprocess.run(base + ["--variants=grm,no_such"], cwd=REPO, capture_output=True,
                       text=True)
  assert bad.returncode != 0
  assert "unknown ['no_such']" in bad.stderr.strip().splitlines()[-1]
  many = len(os.sched_getaffinity(0)) + 1
  bad = subprocess.run(base + [f"--jobs={many}"], cwd=REPO, capture_output=True, text=True)
  assert bad.returncode != 0
  assert f"--jobs={many}: expected 1 to {many - 1}" in bad.stderr.strip().splitlines()[-1]


def _ablation_module():
  path = os.path.join(REPO, "benchmarks", "ablation.py")
  spec = importlib.util.spec_from_file_location("ablation", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_the_table_gives_a_spread_only_where_there_are_two_seeds():
  ablation = _ablation_module()
  record = lambda test: {"test_rsum": test, "dev_rsum": test + 30, "steps": 1200}
  records = {"grm-s0": record(430.0), "grm-s1": record(440.0),
             "ori-s0": record(420.0), "ori-s1": record(426.0), "global-s0": record(300.0)}
  variants = (("grm", "full"), ("ori", "S_ori"), ("global", "VSE"))
  rows, md = ablation.table(records, variants, seeds=[0, 1])
  lines = {line.split("|")[1].strip(): line for line in md.splitlines()[2:]}
  assert "| 435.0 +- 7.1 |  |" in lines["`grm`"]
  assert "| 423.0 +- 4.2 | -12.0 +- 2.8 |" in lines["`ori`"]  # -10 and -14, paired
  assert "| 300.0 | -130.0 |" in lines["`global`"]  # one seed: no spread, no nan
  assert rows["global"]["test_sd"] is None and rows["global"]["vs_reference_sd"] is None
  assert "nan" not in md


def test_probe_columns_are_mean_and_spread_over_the_seeds_that_have_a_probe():
  ablation = _ablation_module()
  probe = lambda relation: {k: 90.0 for k in ablation.PROBE_KINDS} | {"relation": relation}
  gates = {"colour": 1.0, "shape": 0.5, "size": 0.0, "relation": 0.25, "other": 0.0}
  record = lambda test, **more: {"test_rsum": test, "dev_rsum": test, "steps": 10, **more}
  records = {"grm-s0": record(430.0, probe=probe(50.0), gates=gates),
             "grm-s1": record(440.0, probe=probe(60.0), gates=gates),
             "grm-s2": record(450.0),  # recorded before the probe existed
             "ori-s0": record(420.0),
             "global-s0": record(300.0, probe=probe(51.0))}  # no text adapter: no gates
  rows, md = ablation.table(records, (("grm", "full"), ("ori", "S_ori"), ("global", "VSE")),
                            seeds=[0, 1, 2])
  header, _, grm, ori, global_ = md.splitlines()
  assert global_.endswith("| 90.0 | 51.0 | 90.0 | |")
  assert header.endswith("| relation | order | gates colour / shape / size / relation |")
  assert grm.endswith("| 90.0 +- 0.0 | 55.0 +- 7.1 | 90.0 +- 0.0 | 1.00 / 0.50 / 0.00 / 0.25 |")
  assert rows["grm"]["probe_seeds"] == 2
  assert rows["grm"]["probe"]["relation"]["mean"] == pytest.approx(55.0)
  assert ori.endswith("| 10 | | | | | | | |")  # no probe: blank cells, as many
  assert len(ori.split("|")) == len(header.split("|"))


def test_a_run_probed_without_text_gates_is_recorded_without_them(tmp_path):
  ablation = _ablation_module()
  kinds = {k: {"n": 10, "accuracy": 60.0, "parts": {}} for k in ablation.PROBE_KINDS}
  results = {"dev": {"rsum": 400.0}, "test": {"rsum": 350.0}, "best_step": 20,
             "probe": {"kinds": kinds}}  # the global score: no adapter, no gates
  (tmp_path / "results.json").write_text(json.dumps(results))
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"split": "train", "step": 20}) + "\n")
  record = ablation.run_record(str(tmp_path))
  assert record["probe"] == {k: 60.0 for k in ablation.PROBE_KINDS}
  assert "gates" not in record and record["steps"] == 20
