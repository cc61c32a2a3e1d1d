"""Time the GRM scoring engine on this machine's device against the FLOP floor and
against plain implementations of the same score.

  python benchmarks/scoring.py --shape coco5k --dtype bfloat16 --torch      # a GPU
  python benchmarks/scoring.py --shape cpu --numpy                           # a CPU

Random encodings at the shape (ViT-B/16-224: 197 visual tokens, K = 5 regions, 32 text
tokens of which 8-32 valid, d = 512, soft gates), the inference score 0.4 S_ori +
0.4 S_key + 0.2 S_unc. Timed: Scorer.matrix on prepared (unit, padded) token sets,
host arrays in and the (N, M) float32 matrix back on the host, first call (compile)
excluded, median of --reps. FLOPs = 2 N M L_t (L_v + K) d (the cosines all three
scores need); the floor is FLOPs over the matmul rate measured in the same run (8192^3
on a GPU, 2048^3 on a CPU, in the scoring dtype). --kernel times several Pallas
tilings in one run, e.g. --kernel tile_texts=4,num_warps=8 --kernel max_chunk=64.
Figures go to stdout and, as JSON, to $OUT/scoring_<shape>.json when $OUT is set.
"""
import argparse
import json
import os
import sys
import time

# JAX takes 75% of a GPU by default; leave room for the PyTorch reference.
os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.6")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # pylint: disable=g-import-not-at-top,wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from gralign_jax import configs  # pylint: disable=wrong-import-position
from gralign_jax.scores import pallas_kernels  # pylint: disable=wrong-import-position
from gralign_jax.scores import scorer  # pylint: disable=wrong-import-position

SHAPES = {  # n images, m captions, visual tokens, text tokens, d, K regions
    "coco5k": dict(n=5000, m=25000, lv=197, lt=32, d=512, k=5),
    # The NumPy reference takes about a minute on a quiet 2-core CPU.
    "cpu": dict(n=128, m=3000, lv=197, lt=32, d=512, k=5),
    "tiny": dict(n=24, m=120, lv=20, lt=8, d=32, k=3),
}


def encodings(n, m, lv, lt, d, k, seed=0):
  """Random encode_image / encode_text outputs at the shape (host float32)."""
  rng = np.random.default_rng(seed)
  images = {"tokens": rng.standard_normal((n, lv, d), np.float32),
            "mask": np.ones((n, lv), bool),
            "gates": rng.random((n, lv), np.float32),
            "regions": rng.standard_normal((n, 1, k, d), np.float32)}
  t_mask = np.arange(lt)[None] < rng.integers(min(8, lt), lt + 1, size=(m, 1))
  texts = {"tokens": rng.standard_normal((m, lt, d), np.float32), "mask": t_mask,
           "gates": rng.random((m, lt), np.float32) * t_mask}
  return images, texts


def timed(fn, reps, warm=None):
  """(median seconds of reps calls after a first, untimed one of warm or fn; result)."""
  out = (warm or fn)()
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def matmul_rate(dtype) -> float:
  """FLOP/s of one jitted square matmul in dtype on the default device."""
  size = 8192 if jax.default_backend() == "gpu" else 2048
  a = jax.random.normal(jax.random.key(0), (size, size), dtype)
  mm = jax.jit(lambda x: x @ x)
  t, _ = timed(lambda: mm(a).block_until_ready(), reps=10)
  return 2 * size ** 3 / t


def versions() -> dict:
  out = {"python": sys.version.split()[0], "jax": jax.__version__,
         "jaxlib": getattr(jax.lib, "__version__", "?"), "numpy": np.__version__}
  try:
    import torch  # pylint: disable=g-import-not-at-top
    out["torch"] = torch.__version__
  except ImportError:
    pass
  return out


def kernel_params(spec: str) -> pallas_kernels.KernelParams:
  """'tile_texts=4,num_warps=8' -> KernelParams (other fields default)."""
  kw = {}
  for item in filter(None, spec.split(",")):
    key, value = item.split("=")
    kw[key] = value.lower() in ("1", "true") if key == "reshape_reduce" else int(value)
  return pallas_kernels.KernelParams(**kw)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--shape", default="cpu", choices=sorted(SHAPES))
  ap.add_argument("--n", type=int), ap.add_argument("--m", type=int)
  ap.add_argument("--backend", default="auto", choices=["auto", "xla", "pallas", "reference"])
  ap.add_argument("--also-xla", action="store_true", help="time the xla backend as well")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--block-images", type=int, default=0)
  ap.add_argument("--block-texts", type=int, default=0)
  ap.add_argument("--kernel", action="append", default=[], help="Pallas tiling(s)")
  ap.add_argument("--reps", type=int, default=2)
  ap.add_argument("--numpy", action="store_true", help="time the NumPy reference")
  ap.add_argument("--torch", action="store_true", help="time the PyTorch f32 reference")
  ap.add_argument("--check", type=int, default=64,
                  help="compare with the NumPy reference on this many images (0: off)")
  args = ap.parse_args()
  shape = dict(SHAPES[args.shape])
  shape.update({k: getattr(args, k) for k in ("n", "m") if getattr(args, k)})
  print("command: python " + " ".join(sys.argv), flush=True)
  res = {"shape": shape, "versions": versions(), "device": str(jax.devices()[0]),
         "date": time.strftime("%Y-%m-%d"), "args": vars(args)}
  print(json.dumps({k: res[k] for k in ("shape", "versions", "device")}), flush=True)

  flops = 2.0 * shape["n"] * shape["m"] * shape["lt"] * (shape["lv"] + shape["k"]) * shape["d"]
  rate = matmul_rate(jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32)
  res.update(flops=flops, matmul_flops_per_s=rate, floor_s=flops / rate)
  print(f"{flops / 1e12:.3f} TFLOP; {args.dtype} matmul {rate / 1e12:.2f} TFLOP/s; "
        f"floor {flops / rate:.3f} s", flush=True)

  t0 = time.perf_counter()
  images, texts = encodings(**shape)
  print(f"random encodings: {time.perf_counter() - t0:.1f} s", flush=True)
  cfg = configs.model_config()
  runs = [(args.backend, p) for p in (args.kernel or [""])]
  if args.also_xla:
    runs.append(("xla", ""))
  res["runs"], matrices, prepared = [], {}, {}
  for backend, spec in runs:
    sc = scorer.Scorer(cfg, backend=backend, dtype=args.dtype, block_images=args.block_images,
                       block_texts=args.block_texts, params=kernel_params(spec))
    key = (sc.layout, args.dtype, sc.backend == "reference")
    t0 = time.perf_counter()
    if key not in prepared:  # prepared once per layout: 10 s of host NumPy at COCO 5K
      prepared[key] = sc.prepare(images, texts)
    img, txt = prepared[key]
    prep = time.perf_counter() - t0
    name = f"{sc.backend} {args.dtype} {spec}".strip()
    try:
      t, out = timed(lambda: sc.matrix(img, txt, prepared=True), args.reps)  # pylint: disable=cell-var-from-loop
    except Exception as e:  # pylint: disable=broad-except
      print(f"{name}: failed: {type(e).__name__}: {str(e)[:400]}", flush=True)
      res["runs"].append({"name": name, "error": f"{type(e).__name__}: {str(e)[:400]}"})
      continue
    matrices[name] = out
    blocks = sc._blocks(img, txt)  # pylint: disable=protected-access
    row = {"name": name, "seconds": t, "x_floor": t / res["floor_s"], "prepare_s": prep,
           "blocks": [blocks["block_images"], blocks["block_texts"]]}
    res["runs"].append(row)
    print(f"{name}: {t:.3f} s = {t / res['floor_s']:.2f}x floor ({flops / t / 1e12:.2f} "
          f"TFLOP/s; blocks {row['blocks']}; prepare {prep:.1f} s)", flush=True)

  from benchmarks import numpy_scoring_reference as np_ref  # pylint: disable=g-import-not-at-top
  if args.torch:
    import torch  # pylint: disable=g-import-not-at-top
    from benchmarks import torch_scoring_reference as torch_ref  # pylint: disable=g-import-not-at-top
    device = "cuda" if torch.cuda.is_available() else "cpu"
    img_t, txt_t = torch_ref.prepare(images, texts, device)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    run = lambda i, t: (torch_ref.score_matrix(i, t).cpu(), sync())[0].numpy()
    head = lambda x, n: {k: v[:n] for k, v in x.items()}
    t, matrices["torch f32 reference"] = timed(
        lambda: run(img_t, txt_t), reps=1,  # warm-up: CUDA and cuBLAS set-up
        warm=lambda: run(head(img_t, 50), head(txt_t, 500)))
    del img_t, txt_t
    res["torch_f32_s"] = t
    print(f"PyTorch f32 reference (50 x 500 blocks, {device}): {t:.2f} s", flush=True)
  names = list(matrices)
  for name in names[1:]:  # every run against the first, on the whole matrix
    err = float(np.abs(matrices[name] - matrices[names[0]]).max())
    res.setdefault("max_abs_diff_vs_first", {})[name] = err
    print(f"check {name} vs {names[0]}: max |diff| {err:.2e}", flush=True)
  want, ni = None, shape["n"]
  if args.numpy:
    t, want = timed(lambda: np_ref.score_matrix(images, texts), reps=1, warm=lambda: None)
    res["numpy_s"] = t
    print(f"NumPy reference: {t:.2f} s", flush=True)
  elif args.check:
    ni = min(args.check, shape["n"])
    want = np_ref.score_matrix({k: v[:ni] for k, v in images.items()}, texts)
  for name, out in matrices.items() if want is not None else ():
    err = float(np.abs(out[:ni] - want).max())
    res.setdefault("max_abs_diff_vs_numpy", {})[name] = err
    print(f"check {name} vs NumPy on {ni} images: max |diff| {err:.2e}", flush=True)
  for row in res["runs"]:
    if "seconds" in row:
      for ref in ("numpy_s", "torch_f32_s"):
        if ref in res:
          row[f"speedup_vs_{ref[:-2]}"] = res[ref] / row["seconds"]
          print(f"{row['name']}: {res[ref] / row['seconds']:.1f}x faster than "
                f"{ref[:-2]}", flush=True)
  if os.environ.get("OUT"):
    with open(os.path.join(os.environ["OUT"], f"scoring_{args.shape}.json"), "w") as f:
      json.dump(res, f, indent=1, default=str)
  print(json.dumps(res["runs"]), flush=True)


if __name__ == "__main__":
  main()
