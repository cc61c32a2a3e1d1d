"""Where a benchmark tool writes its records.

The records committed under benchmarks/ (tables, JSON, run ledgers) change only through
a run at the tool's full default settings. Any other run (smoke size, a subset of
configs, another budget or data set) writes under runs/benchmarks/, which git ignores,
unless --out names a place outside benchmarks/:

  prefix = records.out_prefix("ablation", args.out, departures=["--smoke"])
  # -> REPO/runs/benchmarks/ablation (and says so); [] -> REPO/benchmarks/ablation
"""
import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COMMITTED = os.path.join(REPO, "benchmarks")
SCRATCH = os.path.join(REPO, "runs", "benchmarks")


def is_committed(prefix: str) -> bool:
  """Whether OUT files at `prefix` would land among the committed records."""
  folder = os.path.dirname(os.path.realpath(prefix))
  return os.path.commonpath([folder, os.path.realpath(COMMITTED)]) == os.path.realpath(
      COMMITTED)


def out_prefix(name: str, out: str | None, departures: list[str]) -> str:
  """-> the path prefix this run's records go to (OUT.md, OUT.json, OUT_runs.json).

  Args:
    name: the committed record's name: benchmarks/NAME.*.
    out: --out as the user gave it (None or "" when not given).
    departures: how this run differs from the full default run, as the flags that
      make it differ (empty: it is that run).

  Exits (one `Error:` line) when --out names a place in benchmarks/ for a run with
  departures: those files are the committed records of the full run.
  """
  if out:
    if departures and is_committed(out):
      sys.exit(f"Error: --out={out} is among the committed records in {COMMITTED}, "
               f"which only a full run at the default settings writes; this run sets "
               f"{' '.join(departures)}. Give --out a place outside benchmarks/ (or "
               f"leave it out: {os.path.join(SCRATCH, name)}).")
    return out
  if not departures:
    return os.path.join(COMMITTED, name)
  prefix = os.path.join(SCRATCH, name)
  print(f"[records] not the full default run ({' '.join(departures)}): its records go "
        f"to {prefix}.*, the committed ones in benchmarks/ stay as they are", flush=True)
  os.makedirs(SCRATCH, exist_ok=True)
  return prefix
