"""The Pallas scoring kernel compiled for this machine's accelerator (not interpreted)
against the XLA path and the model's definition, at GRM's token shapes with ragged
sizes and padding. Run by benchmarks/gpu_checks.sh; prints one PASS/FAIL line per
case and exits 1 on any failure.

  python benchmarks/scoring_kernel_check.py              # a GPU (or TPU)
  python benchmarks/scoring_kernel_check.py --interpret  # the same cases on a CPU
"""
import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from gralign_jax import configs  # pylint: disable=wrong-import-position
from gralign_jax.scores import pallas_kernels as ps  # pylint: disable=wrong-import-position
from gralign_jax.scores import scorer  # pylint: disable=wrong-import-position
from gralign_jax.scores import similarity  # pylint: disable=wrong-import-position

TILINGS = [ps.KernelParams(), ps.KernelParams(reshape_reduce=True),
           ps.KernelParams(tile_texts=2, tile_images=2, max_chunk=64),
           ps.KernelParams(tile_texts=8, num_warps=8, num_stages=3)]


def inputs(seed, ni, nt, lv, lt, d, k):
  """Encoder-like dicts: padded visual and text tokens, soft and zero gates."""
  rng = np.random.default_rng(seed)
  v_mask = np.arange(lv)[None] < rng.integers(lv // 2, lv + 1, size=(ni, 1))
  t_mask = np.arange(lt)[None] < rng.integers(1, lt + 1, size=(nt, 1))
  img = {"tokens": rng.standard_normal((ni, lv, d), np.float32), "mask": v_mask,
         "gates": (rng.random((ni, lv), np.float32) * v_mask * (rng.random((ni, lv)) > .2)),
         "regions": rng.standard_normal((ni, 1, k, d), np.float32)}
  t_gates = rng.random((nt, lt), np.float32) * t_mask
  t_gates[:, 0] = 0.5
  txt = {"tokens": rng.standard_normal((nt, lt, d), np.float32), "mask": t_mask,
         "gates": t_gates.astype(np.float32)}
  return img, txt


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--interpret", action="store_true", help="CPU: Pallas's interpreter")
  ap.add_argument("--small", action="store_true", help="small shapes (for --interpret)")
  args = ap.parse_args()
  print("command: python " + " ".join(sys.argv), flush=True)
  print("jax", jax.__version__, jax.devices(), flush=True)
  if jax.default_backend() == "cpu" and not args.interpret:
    print("SKIP: no accelerator here (use --interpret to run the cases on the CPU)")
    return
  # The XLA reference in full float32 (a GPU's default f32 matmul may use TF32).
  jax.config.update("jax_default_matmul_precision", "highest")
  cfg = configs.model_config()
  shape = (dict(ni=7, nt=11, lv=20, lt=8, d=64, k=3) if args.small else
               dict(ni=37, nt=53, lv=197, lt=32, d=512, k=5))
  img, txt = inputs(0, **shape)
  definition = np.asarray(similarity.total_score(similarity.pair_scores(img, txt, cfg), cfg))
  results, failed = [], False
  print("pallas_works(default):", scorer.pallas_works(ps.KernelParams()), flush=True)
  for dtype, tol in (("float32", 1e-4), ("bfloat16", 2e-3)):
    xla = scorer.Scorer(cfg, backend="xla", dtype=dtype, block_images=16,
                        block_texts=24).matrix(img, txt)
    err_x = float(np.abs(xla - definition).max())
    for params in TILINGS:
      name = f"{dtype} {params}"
      try:
        t0 = time.perf_counter()
        got = scorer.Scorer(cfg, backend="pallas", dtype=dtype, block_images=16,
                            block_texts=24, params=params,
                            interpret=args.interpret).matrix(img, txt)
        err = float(np.abs(got - xla).max())
        err_d = float(np.abs(got - definition).max())
        ok = err <= tol and (dtype == "bfloat16" or err_d <= tol)
        row = {"case": name, "ok": ok, "vs_xla": err, "vs_definition": err_d,
               "xla_vs_definition": err_x, "seconds": time.perf_counter() - t0}
      except Exception as e:  # pylint: disable=broad-except
        ok, row = False, {"case": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:600]}
      failed |= not ok
      results.append(row)
      print(("PASS " if ok else "FAIL ") + json.dumps(row), flush=True)
  if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], "kernel_check.json"), "w") as f:
      json.dump(results, f, indent=1)
  print("kernel check:", "FAILED" if failed else "all passed", flush=True)
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  main()
