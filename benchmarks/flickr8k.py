"""GRM and its baselines on real photographs (Flickr8k, DINOv2-S/14 + MiniLM-L6), over
seeds: the README's "Real photographs" table.

  python benchmarks/flickr8k.py --data_root=../shared/data/flickr8k-1k
  python benchmarks/flickr8k.py --data_root=... --variants=grm,frozen --seeds=0
  python benchmarks/flickr8k.py --table_only

Each (variant, seed) is one run of experiments.flickr8k with the config's own budget
(experiments/configs/flickr8k.py), in RUNS/VARIANT-sSEED, timed from start to exit:
  grm, ori, global                 fine-tuned DINOv2 and MiniLM (the paper's recipe)
  frozen, frozen_ori, frozen_global the vision tower frozen: its tokens extracted once
                                   (RUNS/features, experiments.extract_features; the
                                   extraction's time is recorded apart)
  untrained                        the pretrained encoders with untrained heads: one
                                   step at lr 1e-12, the chance check
Only dev is measured: the shared subset's test images are held out.

The committed records (benchmarks/flickr8k.*) are the shared subset's: with another
--data_root they go to runs/benchmarks/flickr8k.* (experiments/records.py), and the
committed table always covers every variant and seed in the ledger.
A run whose results.json exists, or whose record is in the ledger OUT_runs.json, is
not run again; the ledger keeps each finished run's dev figures, steps, seconds,
commit and machine, and OUT.md / OUT.json the table (dev R@K both ways, rSum mean and
sample sd over seeds, time per run). A run that fails stops the grid, naming its log.
"""
import argparse
import json
import os
import subprocess
import sys
import time

import ablation  # benchmarks/ablation.py: the ledger and the statistics
from experiments import records  # on sys.path through ablation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.path.join(os.path.dirname(REPO), "shared", "data", "flickr8k-1k")
CONFIG = "experiments/configs/flickr8k.py"
KEYS = ("i2t_r1", "i2t_r5", "i2t_r10", "t2i_r1", "t2i_r5", "t2i_r10", "rsum")
# variant -> (config argument, extra flags, what it is)
VARIANTS = {
    "grm": ("", (), "GRM, fine-tuned encoders (the default)"),
    "ori": ("ori", (), "S_ori only, fine-tuned (CHAN/LAPS-style)"),
    "global": ("global", (), "global mean-pooled cosine, fine-tuned (VSE)"),
    "frozen": ("frozen", (), "GRM, vision frozen (extracted tokens)"),
    "frozen_ori": ("frozen,ori", (), "S_ori only, vision frozen"),
    "frozen_global": ("frozen,global", (), "global cosine, vision frozen"),
    "untrained": ("", ("--config.train.num_steps=1", "--config.train.lr=1e-12",
                       "--config.eval.every_steps=1"),
                  "pretrained encoders, untrained heads (chance check)"),
}


def _features(args) -> str:
  """RUNS/features: the frozen variants' tokens, extracted once."""
  out = os.path.join(args.runs, "features")
  if not os.path.isfile(os.path.join(out, "features.json")):
    log = out + ".log"
    print(f"[flickr8k] extracting the frozen tokens -> {out} (log {log})", flush=True)
    with open(log, "a") as f:
      done = subprocess.run(
          [sys.executable, "-m", "experiments.extract_features", f"--config={CONFIG}",
           f"--config.data.root={args.data_root}",
           "--config.model.vision.image_size=224", f"--out={out}"],
          cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    if done.returncode:
      sys.exit(f"Error: the feature extraction failed (exit {done.returncode}); its "
               f"log: {log}")
  return out


def _run(variant: str, seed: int, workdir: str, args) -> float:
  arg, extra, _ = VARIANTS[variant]
  root = _features(args) if variant.startswith("frozen") else args.data_root
  cmd = [sys.executable, "-m", "experiments.flickr8k", f"--config={CONFIG}:{arg}",
         f"--config.data.root={root}", f"--config.seed={seed}", f"--workdir={workdir}",
         *extra]
  log = f"{workdir}.log"
  print(f"[flickr8k] {variant} seed {seed} -> {workdir} (log {log})", flush=True)
  t0 = time.time()
  with open(log, "a") as f:
    done = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
  if done.returncode:
    sys.exit(f"Error: the run {variant} seed {seed} failed (exit {done.returncode}); "
             f"expected it to write {workdir}/results.json. Its log: {log}")
  seconds = time.time() - t0
  print(f"[flickr8k]   done in {seconds:.0f} s", flush=True)
  return seconds


def _record(workdir: str, seconds: float | None) -> dict | None:
  path = os.path.join(workdir, "results.json")
  if not os.path.isfile(path):
    return None
  with open(path) as f:
    results = json.load(f)
  return dict({k: results["dev"][k] for k in KEYS}, best_step=results.get("best_step"),
              steps=ablation.last_train_step(workdir),
              seconds=None if seconds is None else round(seconds, 1))


def table(runs: dict, variants: list[str], seeds: list[int]) -> tuple[dict, str]:
  """-> ({variant: figures}, the Markdown table): dev R@K means, rSum mean +- sd."""
  lines = ["| variant | what it is | seeds | dev rSum per seed | dev rSum (mean +- sd) "
           "| i2t R@1 | R@5 | R@10 | t2i R@1 | R@5 | R@10 | steps | minutes per run |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
  rows = {}
  for variant in variants:
    what = VARIANTS[variant][2]
    got = [r for s in seeds if (r := runs.get(f"{variant}-s{s}")) is not None]
    if not got:
      lines.append(f"| `{variant}` | {what} | 0 | not run |" + " |" * 9)
      continue
    means = {k: ablation.stats([r[k] for r in got])[0] for k in KEYS}
    _, sd = ablation.stats([r["rsum"] for r in got])
    timed = [r["seconds"] for r in got if r.get("seconds")]
    minutes = f"{sum(timed) / len(timed) / 60:.1f}" if timed else ""
    rows[variant] = dict(means, rsum_sd=sd, seeds=len(got),
                         steps=got[0]["steps"], minutes=minutes)
    recalls = " | ".join(f"{means[k]:.1f}" for k in KEYS[:-1])
    per_seed = ", ".join(f"{r['rsum']:.1f}" for r in got)
    lines.append(f"| `{variant}` | {what} | {len(got)} | {per_seed} | "
                 f"{ablation.spread(means['rsum'], sd)} | {recalls} | "
                 f"{got[0]['steps']} | {minutes} |")
  return rows, "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--variants", default=",".join(VARIANTS))
  parser.add_argument("--seeds", default=",".join(map(str, ablation.SEEDS)))
  parser.add_argument("--data_root", default=DATA_ROOT)
  parser.add_argument("--runs", default=os.path.join(REPO, "runs", "flickr8k"))
  parser.add_argument("--table_only", action="store_true")
  parser.add_argument("--out", default=None,
                      help="writes OUT.md, OUT.json and the ledger OUT_runs.json "
                      "(default benchmarks/flickr8k on the shared subset, else "
                      "runs/benchmarks/flickr8k)")
  args = parser.parse_args()
  names = [v.strip() for v in args.variants.split(",") if v.strip()]
  unknown = [v for v in names if v not in VARIANTS]
  if unknown:
    sys.exit(f"Error: --variants: unknown {unknown}; expected some of {list(VARIANTS)}.")
  seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
  other_data = os.path.realpath(args.data_root) != os.path.realpath(DATA_ROOT)
  args.out = records.out_prefix("flickr8k", args.out,
                                [f"--data_root={args.data_root}"] if other_data else [])
  ledger = args.out + "_runs.json"
  args.runs = os.path.abspath(args.runs)
  args.data_root = os.path.abspath(args.data_root)
  os.makedirs(args.runs, exist_ok=True)
  if not args.table_only:
    recorded = ablation.load_ledger(ledger)
    for seed in seeds:  # seed-major: a partial grid has every variant at seed 0 first
      for variant in names:
        name = f"{variant}-s{seed}"
        if name in recorded:
          continue
        workdir = os.path.join(args.runs, name)
        seconds = None
        if _record(workdir, None) is None:
          seconds = _run(variant, seed, workdir, args)
        ablation.add_to_ledger(ledger, name, _record(workdir, seconds),
                               len(os.sched_getaffinity(0)),
                               what="benchmarks/flickr8k.py: one record per finished run")
  if records.is_committed(args.out):  # the whole grid, whichever part this run filled
    names, seeds = list(VARIANTS), sorted(set(ablation.SEEDS) | set(seeds))
  rows, markdown = table(ablation.load_ledger(ledger), names, seeds)
  text = (f"Flickr8k (../shared/data/flickr8k-1k: 753 train, 113 dev images), dev split, "
          f"the config's own steps per run, seeds {seeds}. Machine: "
          f"{ablation.machine()}.\n\n{markdown}\n")
  with open(args.out + ".md", "w") as f:
    f.write(text)
  with open(args.out + ".json", "w") as f:
    json.dump({"seeds": seeds, "machine": ablation.machine(), "rows": rows}, f,
              indent=1)
  print(text, end="")


if __name__ == "__main__":
  main()
