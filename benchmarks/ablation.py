"""The ablation table on the synthetic set: what each GRM component buys, over seeds.

  python benchmarks/ablation.py                      # the whole grid, then the table
  python benchmarks/ablation.py --variants=grm,ori --seeds=0,1,2
  python benchmarks/ablation.py --table_only         # the table from the runs so far
  python benchmarks/ablation.py --grid=composition   # hard negatives and patches

Every run evaluates with the probe (eval.probe=True, experiments/probe.py): the tables
give its accuracy per kind of false caption (mean +- sd over seeds) beside rSum, for
the runs that have it (runs recorded before the probe existed have none). The
composition grid (hard negatives of the probe's kinds, 8 px patches, against `grm`)
has its own ledger and tables: benchmarks/composition.*.

Each (variant, seed) is one demo run (experiments/configs/demo.py:VARIANT, config.seed
= SEED; the data set is the same for all) in RUNS/VARIANT-sSEED, with the demo's budget:
its 1,200 steps, the same for every variant, as the paper's ablation trains every row
for the same epochs. A step budget also makes each figure independent of what else
the machine runs (--seconds=S gives each run S seconds of training instead, so a cheaper
variant gets more steps, as in docs/results.md's demo table). A run whose results.json
exists, or whose record is in the ledger, is not run again, so the grid may be filled over
several sittings; a run stopped half-way resumes from its checkpoint. Two tables (test
rSum mean and sample standard deviation over seeds, dev rSum, steps): the paper's
ablation rows, and the adapters' gate form (method.md section 2, issue 12 item 9). They
go to OUT.md and OUT.json (default benchmarks/ablation), with the machine and versions:
a run with --smoke or --seconds is not the committed grid, and its ledger and tables go
to runs/benchmarks/ablation.* instead (experiments/records.py). The committed tables
always cover every variant and seed in the ledger, so a grid filled a few runs at a
time never drops a row.

The ledger, OUT_runs.json, keeps each finished run's record (figures, commit, machine,
date) as soon as the run ends: RUNS/ holds checkpoints and is not kept in git, the
ledger is, so a grid spread over several machines or sessions loses nothing. Delete a
run's entry (or the file) to run it again; --redo_unprobed runs again those recorded
before the probe existed, and each new record keeps the one it replaces under
"earlier" (training is deterministic on one machine kind, so its figures should match).

--jobs=N runs N runs at once, the cores split evenly between them: on a many-core
machine, where one small run cannot use every core, that multiplies the throughput; on
the 2-core CI machine, two one-core runs train at 1.28 steps/s each against 2.6 for one
run on both, the same figure (2026-12-01). All runs share one compilation cache
(RUNS/.xla_cache), so a variant compiles once, not once per seed. Keep one --jobs for
a whole grid: a run's figures can move with the number of threads XLA's CPU code gets
(the ledger records each run's cores_per_run).
"""
import argparse
import concurrent.futures
import functools
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
from experiments import records  # noqa: E402  (needs REPO on sys.path)
from gralign_jax.data import perturb_scenes  # noqa: E402

SEEDS = (0, 1, 2)
_LEDGER_LOCK = threading.Lock()  # --jobs: the runs' threads add to one ledger

# (variant, what it removes): the paper's ablation rows (method.md section 6).
VARIANTS = (
    ("grm", "full GRM"),
    ("no_visual_adapter", "without the visual saliency adapter"),
    ("no_text_adapter", "without the text saliency adapter"),
    ("no_regions", "without region prompts (no S_unc)"),
    ("no_uncertainty", "without uncertainty (regions as points)"),
    ("scale_gates", "gates only scale tokens (the literal form)"),
    ("ori", "S_ori only (no adapters, no regions)"),
    ("global", "global mean-pooled cosine (VSE baseline)"),
)
# The adapters' gate form in training (evaluation uses its noise-free form).
GATE_FORMS = (
    ("grm", "soft Gumbel-softmax at tau 1 (the default)"),
    ("tau_anneal", "soft Gumbel-softmax, tau annealed 1 -> 0.1"),
    ("hard_gates", "straight-through hard Gumbel (0/1 gates)"),
)
# What teaches composition (the probe's kinds): a variant "a+b" is demo.py:a,b.
COMPOSITION = (
    ("grm", "the demo as it is"),
    ("hard_negatives", "false captions of every kind, drawn uniformly"),
    ("relation_negatives", "false captions weighted relation 6, shape 3, binding 3, order 1"),
    ("relation_negatives+patch8", "the same, with 8 px patches (65 visual tokens)"),
    ("all_negatives", "one false caption of every kind the caption has, at each step"),
)
GRIDS = {
    "ablation": (("The ablation rows", VARIANTS), ("The gate form", GATE_FORMS)),
    "composition": (("Hard negatives and patches", COMPOSITION),),
}
PROBE_KINDS = perturb_scenes.KINDS  # the probe's kinds on the synthetic set
GATE_WORDS = ("colour", "shape", "size", "relation")


def _run(variant: str, seed: int, workdir: str, args, cores=None) -> None:
  words = variant.replace("+", ",") + (",smoke" if args.smoke else "")
  cmd = [sys.executable, "-m", "experiments.demo",
         f"--config=experiments/configs/demo.py:{words}", "--config.eval.probe=True",
         f"--config.seed={seed}", f"--workdir={workdir}"]
  if args.seconds > 0:
    cmd += ["--config.train.num_steps=100000",
            f"--config.train.max_train_seconds={args.seconds}"]
  if args.data_root:
    cmd.append(f"--config.data.root={args.data_root}")
  log = os.path.join(os.path.dirname(workdir), f"{os.path.basename(workdir)}.log")
  print(f"[ablation] {variant} seed {seed} -> {workdir} (log {log})", flush=True)
  env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=os.path.join(args.runs, ".xla_cache"),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  t0 = time.time()
  if cores:  # taskset, not a preexec_fn: forking a process that runs JAX is unsafe
    cmd = ["taskset", "--cpu-list", ",".join(map(str, sorted(cores)))] + cmd
  with open(log, "a") as f:
    done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT, env=env)
  if done.returncode:
    sys.exit(f"Error: the run {variant} seed {seed} failed (exit {done.returncode}); "
             f"expected it to write {workdir}/results.json. Its log: {log}")
  print(f"[ablation]   {variant} seed {seed} done in {time.time() - t0:.0f} s", flush=True)


def last_train_step(workdir: str) -> int:
  """The last training step a run logged in its metrics.jsonl (0 when none)."""
  steps = 0
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    for line in f:
      try:
        r = json.loads(line)
      except json.JSONDecodeError:
        continue
      if r.get("split") == "train":
        steps = max(steps, int(r["step"]))
  return steps


def run_record(workdir: str) -> dict | None:
  """A finished run's figures; with its probe (results.json's, else the probe_test.json
  experiments.probe wrote beside it) when it has one."""
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    results = json.load(f)
  record = {"test_rsum": results["test"]["rsum"], "dev_rsum": results["dev"]["rsum"],
            "best_step": results.get("best_step"), "steps": last_train_step(workdir)}
  probe = results.get("probe")
  beside = os.path.join(workdir, "probe_test.json")
  if probe is None and os.path.isfile(beside):
    with open(beside) as f:
      probe = json.load(f)
  if probe is not None:
    record["probe"] = {k: v["accuracy"] for k, v in probe["kinds"].items()}
    if probe.get("gates"):  # the text adapter's: absent for variants without one
      record["gates"] = {k: v["gate"] for k, v in probe["gates"].items()}
  return record


@functools.cache
def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, check=True,
                          capture_output=True, text=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def load_ledger(path: str) -> dict:
  """-> {"VARIANT-sSEED": record}, from the ledger at `path` ({} when absent)."""
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)["runs"]


def add_to_ledger(path: str, name: str, record: dict, cores: int,
                  what: str = "benchmarks/ablation.py: one record per finished run"
                  ) -> None:
  """Adds one finished run's record; written whole to a temporary file, then renamed."""
  with _LEDGER_LOCK:
    runs = load_ledger(path)
    runs[name] = dict(record, commit=_commit(), machine=machine(), cores_per_run=cores,
                      finished=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      json.dump({"what": what,
                 "runs": dict(sorted(runs.items()))}, f, indent=1)
      f.write("\n")
    os.replace(tmp, path)


def stats(values: list[float]) -> tuple[float, float | None]:
  """-> (mean, sample standard deviation; None for a single value)."""
  mean = statistics.fmean(values)
  return mean, (statistics.stdev(values) if len(values) > 1 else None)


def spread(mean: float, sd: float | None, sign: str = "") -> str:
  return f"{mean:{sign}.1f}" + ("" if sd is None else f" +- {sd:.1f}")


def table(runs: dict, variants, seeds, reference: str = "grm") -> tuple[dict, str]:
  """runs: {"VARIANT-sSEED": record}. -> ({variant: {"seeds": {seed: record}, ...}},
  the Markdown table).

  Besides each variant's mean and spread, the change against `reference` is taken seed
  by seed (the same seed, so the same data order) and then averaged: the spread of
  that paired difference, not of the two means, says whether a component matters.
  """
  ref = {s: r for s in seeds if (r := runs.get(f"{reference}-s{s}")) is not None}
  probed = any("probe" in r for v, _ in variants for s in seeds
               if (r := runs.get(f"{v}-s{s}")) is not None)
  extra = ((" | " + " | ".join(PROBE_KINDS) + " | gates " + " / ".join(GATE_WORDS))
           if probed else "")
  blank = " |" * (len(PROBE_KINDS) + 1) if probed else ""
  rows, lines = {}, [
      f"| variant | what it is | seeds | test rSum per seed | test rSum (mean +- sd) | "
      f"vs `{reference}`, paired (mean +- sd) | dev rSum | steps{extra} |",
      "|---|---|---|---|---|---|---|---|" + "---|" * (len(PROBE_KINDS) + 1) * probed]
  for variant, what in variants:
    got = {s: r for s in seeds if (r := runs.get(f"{variant}-s{s}")) is not None}
    rows[variant] = {"what": what, "seeds": got}
    if not got:
      lines.append(f"| `{variant}` | {what} | 0 | not run | | | | |{blank}")
      continue
    test, sd = stats([r["test_rsum"] for r in got.values()])
    dev, _ = stats([r["dev_rsum"] for r in got.values()])
    steps, _ = stats([r["steps"] for r in got.values()])
    per_seed = ", ".join(f"{r['test_rsum']:.1f}" for r in got.values())
    diffs = [r["test_rsum"] - ref[s]["test_rsum"] for s, r in got.items() if s in ref]
    paired = ""
    if variant != reference and diffs:
      d_mean, d_sd = stats(diffs)
      rows[variant].update(vs_reference_mean=d_mean, vs_reference_sd=d_sd)
      paired = spread(d_mean, d_sd, "+")
    rows[variant].update(test_mean=test, test_sd=sd, dev_mean=dev, steps_mean=steps)
    probe = ""
    if probed:
      with_probe = [r for r in got.values() if "probe" in r]
      accuracy = {k: stats([r["probe"][k] for r in with_probe if k in r["probe"]])
                  for k in PROBE_KINDS if with_probe}
      gated = [r["gates"] for r in with_probe
               if all(w in r.get("gates", {}) for w in GATE_WORDS)]
      gates = "" if not gated else " / ".join(
          f"{stats([g[w] for g in gated])[0]:.2f}" for w in GATE_WORDS)
      rows[variant].update(probe_seeds=len(with_probe), probe={
          k: {"mean": m, "sd": d} for k, (m, d) in accuracy.items()})
      probe = "".join(f" {spread(*accuracy[k])} |" if k in accuracy else " |"
                      for k in PROBE_KINDS) + (f" {gates} |" if gates else " |")
    lines.append(f"| `{variant}` | {what} | {len(got)} | {per_seed} | {spread(test, sd)} "
                 f"| {paired} | {dev:.1f} | {steps:.0f} |{probe}")
  return rows, "\n".join(lines)


def _prepare_data(args) -> None:
  """Generates the synthetic set (when absent) as each run would, but once."""
  sys.path.insert(0, REPO)
  from experiments.configs import demo  # pylint: disable=g-import-not-at-top
  from gralign_jax import configs  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  config = demo.get_config("smoke" if args.smoke else None)
  if args.data_root:
    config.data.root = args.data_root
  if not os.path.isabs(config.data.root):
    config.data.root = os.path.join(REPO, config.data.root)
  datasets.prepare(configs.finalize(config), log=print)


@functools.cache
def machine() -> str:
  import jax  # pylint: disable=g-import-not-at-top
  return (f"{platform.machine()}, {os.cpu_count()} CPU cores, "
          f"{jax.devices()[0].platform}; Python {platform.python_version()}, "
          f"JAX {jax.__version__}; {time.strftime('%Y-%m-%d')}")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--grid", default="ablation", choices=sorted(GRIDS),
                      help="ablation: the paper's rows and the gate form; "
                      "composition: hard negatives and patches")
  parser.add_argument("--variants", default="", help="(default: every one of the grid)")
  parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
  parser.add_argument("--runs", default="", help="(default: runs/GRID)")
  parser.add_argument("--seconds", type=float, default=0,
                      help="training time per run (0: the config's own num_steps)")
  parser.add_argument("--data_root", default="", help="the synthetic set's folder")
  parser.add_argument("--smoke", action="store_true", help="tiny runs (tests)")
  parser.add_argument("--jobs", type=int, default=1,
                      help="runs at once, the cores split evenly between them")
  parser.add_argument("--table_only", action="store_true")
  parser.add_argument("--redo_unprobed", action="store_true",
                      help="run again the recorded runs that have no probe (recorded "
                      "before it existed); each new record keeps the old one's figures "
                      "under 'earlier'")
  parser.add_argument("--out", default=None,
                      help="writes OUT.md, OUT.json and the ledger OUT_runs.json "
                      "(default benchmarks/GRID for the full grid, else "
                      "runs/benchmarks/GRID)")
  args = parser.parse_args()
  tables = GRIDS[args.grid]
  known = {v: what for _, rows in tables for v, what in rows}
  args.runs = args.runs or os.path.join(REPO, "runs", args.grid)
  names = [v.strip() for v in (args.variants or ",".join(known)).split(",") if v.strip()]
  unknown = [v for v in names if v not in known]
  if unknown:
    sys.exit(f"Error: --variants: unknown {unknown}; expected some of {list(known)}.")
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  cores = (sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
           else list(range(os.cpu_count() or 1)))
  if not 1 <= args.jobs <= len(cores):
    sys.exit(f"Error: --jobs={args.jobs}: expected 1 to {len(cores)} (this process may "
             f"use {len(cores)} cores).")
  if args.jobs > 1 and not shutil.which("taskset"):
    sys.exit(f"Error: --jobs={args.jobs} pins each run to a core with taskset (Linux "
             "util-linux), which is not on PATH; run with --jobs=1.")
  departures = ((["--smoke"] if args.smoke else []) +
                ([f"--seconds={args.seconds:g}"] if args.seconds > 0 else []))
  args.out = records.out_prefix(args.grid, args.out, departures)
  ledger = args.out + "_runs.json"
  os.makedirs(args.runs, exist_ok=True)
  if not args.table_only:
    # Seed-major: a partial grid has every variant at seed 0 first.
    recorded = load_ledger(ledger)
    todo = [(v, s) for s in seeds for v in names
            if f"{v}-s{s}" not in recorded
            or (args.redo_unprobed and "probe" not in recorded[f"{v}-s{s}"])]
    if todo and args.jobs > 1:
      _prepare_data(args)  # once, before the runs that would race to generate it
    per_job = len(cores) // args.jobs
    free = ([set(cores[i * per_job:(i + 1) * per_job]) for i in range(args.jobs)]
            if args.jobs > 1 else [None])

    def one(variant, seed):
      workdir = os.path.join(args.runs, f"{variant}-s{seed}")
      done = run_record(workdir)
      if args.redo_unprobed and done is not None and "probe" not in done:
        sys.exit(f"Error: --redo_unprobed: {workdir} holds a finished run without the "
                 "probe, so it would be recorded again as it is; expected a --runs "
                 "folder without it, or its probe written beside it first "
                 f"(python -m experiments.probe --workdir={workdir}).")
      core = free.pop()
      try:
        if done is None:
          _run(variant, seed, workdir, args, core)
      finally:
        free.append(core)
      record, old = run_record(workdir), recorded.get(f"{variant}-s{seed}")
      if old is not None:  # --redo_unprobed: the same run again, now with the probe
        record["earlier"] = {k: old[k] for k in ("test_rsum", "dev_rsum", "commit",
                                                 "finished") if k in old}
      add_to_ledger(ledger, f"{variant}-s{seed}", record,
                    len(core) if core else len(cores))

    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
      for done in [pool.submit(one, v, s) for v, s in todo]:
        done.result()
  ledger_runs = load_ledger(ledger)
  if records.is_committed(args.out):  # the whole grid, whichever part this run filled
    names, seeds = list(known), sorted(set(SEEDS) | set(seeds))
  rows, markdown = {}, []
  for title, variants in tables:
    chosen = [(v, what) for v, what in variants if v in names]
    if chosen:
      got, md = table(ledger_runs, chosen, seeds)
      rows.update(got)
      markdown.append(f"### {title}\n\n{md}")
  budget = (f"{args.seconds:.0f} s of training per run (evaluations excluded)"
            if args.seconds > 0 else "the config's own steps per run")
  header = (f"Synthetic scenes set, {budget}, seeds {seeds}. "
            f"Machine: {machine()}.\n\n")
  text = header + "\n\n".join(markdown) + "\n"
  with open(args.out + ".md", "w") as f:
    f.write(text)
  with open(args.out + ".json", "w") as f:
    json.dump({"seconds": args.seconds, "seeds": seeds, "machine": machine(),
               "rows": rows}, f, indent=1)
  print(text, end="")


if __name__ == "__main__":
  main()
