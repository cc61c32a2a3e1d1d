"""Parameters, step time, peak memory and model FLOPs utilisation of one GRM update at
the paper's size (ViT-B/16-224 + BERT-base by default), with and without remat.

  python benchmarks/train_step.py                       # batch 128, bf16 (a GPU/TPU)
  python benchmarks/train_step.py --batch=8 --repeats=2 # what a 2-core CPU can do
  python benchmarks/train_step.py --backbone=swin384 --dtype=float32

Random init (no download), random uint8 images and token ids at the config's shapes,
one device. FLOPs are XLA's own count of the compiled update without remat (the model
FLOPs; remat's recomputation is not credited), and the floor is those FLOPs over the
matmul rate measured in the same run (a square matmul in the same dtype). Peak memory
is the device allocator's high-water mark where the backend reports one (GPU, TPU),
else the compiled program's arguments + outputs + temporaries (CPU).
"""
import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from experiments.configs import common

from gralign_jax import configs
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.models import grm


def matmul_rate(dtype, n: int, repeats: int = 10) -> float:
  """Measured FLOP/s of an (n, n) @ (n, n) matmul in `dtype` (f32 accumulation)."""
  a = jax.random.normal(jax.random.key(0), (n, n), dtype)
  f = jax.jit(lambda x: jnp.dot(x, x, preferred_element_type=jnp.float32).astype(dtype))
  y = f(a).block_until_ready()
  t0 = time.perf_counter()
  for _ in range(repeats):
    y = f(y)
  y.block_until_ready()
  return 2 * n ** 3 * repeats / (time.perf_counter() - t0)


def build(backbone: str, batch: int, dtype: str, remat: bool, image_size: int = 0):
  if backbone == "flickr8k":  # DINOv2-S/14 + MiniLM-L6, experiments/configs/flickr8k.py
    from experiments.configs import flickr8k  # pylint: disable=g-import-not-at-top
    config = flickr8k.get_config()
  else:
    config = common.paper_config("coco", backbone)
  if image_size:
    config.model.vision.image_size = image_size
  config.model.vision.weights = config.model.text.weights = ""
  config.model.compute_dtype = dtype
  config.model.vision.remat = config.model.text.remat = remat
  config.train.batch_size = batch
  configs.finalize(config, vocab_size=30522)  # BERT's WordPiece vocabulary
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch=1000)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train_state.create_state(model, tx, config, mesh, log=lambda *_: None)
  step = train.make_train_step(model, tx, config, mesh)
  image = grm.example_inputs(config.model, config.data.max_len)[0]
  rng = np.random.default_rng(0)
  L = config.data.max_len
  host = {"image": rng.integers(0, 256, (batch,) + image.shape[1:], dtype=np.uint8),
          "ids": rng.integers(1000, 30000, (batch, L)).astype(np.int32),
          "mask": np.arange(L)[None] < rng.integers(8, L + 1, (batch, 1)),
          "image_id": np.arange(batch, dtype=np.int32)}
  return state, step, sharding.global_batch(host, mesh)


def measure(backbone, batch, dtype, remat, repeats, image_size=0):
  state, step, data = build(backbone, batch, dtype, remat, image_size)
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  compiled = step.lower(state, data).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  program_bytes = (mem.argument_size_in_bytes + mem.output_size_in_bytes
                   + mem.temp_size_in_bytes - mem.alias_size_in_bytes) if mem else None
  state, aux = compiled(state, data)
  jax.block_until_ready(aux)
  t0 = time.perf_counter()
  for _ in range(repeats):
    state, aux = compiled(state, data)
  jax.block_until_ready(aux)
  dt = (time.perf_counter() - t0) / repeats
  stats = jax.devices()[0].memory_stats() or {}
  peak = stats.get("peak_bytes_in_use")
  return dict(params=n_params, seconds=dt, flops=float(cost.get("flops", 0.0)),
              peak=peak, program_bytes=program_bytes, loss=float(aux["loss"]))


def main():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--backbone", default="vit224",
                      choices=sorted(common.BACKBONES) + ["flickr8k"],
                      help="a paper row's backbones, or flickr8k: the real-photo "
                      "config's DINOv2-S/14 + MiniLM-L6")
  parser.add_argument("--image_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--no_remat_row", action="store_true",
                      help="measure without remat only")
  parser.add_argument("--batch", type=int, default=128)
  parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--matmul", type=int, default=0, help="matmul size for the rate "
                      "(default 8192 on GPU/TPU, 2048 on CPU)")
  args = parser.parse_args()
  dev = jax.devices()[0]
  n = args.matmul or (2048 if dev.platform == "cpu" else 8192)
  rate = matmul_rate(jnp.dtype(args.dtype), n)
  size = f" --image_size={args.image_size}" if args.image_size else ""
  print(f"python benchmarks/train_step.py --backbone={args.backbone} --batch={args.batch}"
        f" --dtype={args.dtype} --repeats={args.repeats}{size}")
  print(f"device {dev.device_kind} ({dev.platform}), jax {jax.__version__}; measured "
        f"{args.dtype} matmul rate {rate / 1e12:.2f} TFLOP/s (n={n})")
  rows = {remat: measure(args.backbone, args.batch, args.dtype, remat, args.repeats,
                         args.image_size)
          for remat in ((False,) if args.no_remat_row else (False, True))}
  model_flops = rows[False]["flops"]
  for remat, r in rows.items():
    floor = model_flops / rate
    peak = (f"peak {r['peak'] / 2**30:.2f} GiB" if r["peak"] is not None else
            f"program {r['program_bytes'] / 2**30:.2f} GiB (no allocator stats)")
    print(f"remat={str(remat):5s} params {r['params'] / 1e6:.1f}M  step "
          f"{1000 * r['seconds']:.0f} ms  {args.batch / r['seconds']:.1f} examples/s  "
          f"model {model_flops / 1e12:.2f} TFLOP/step  MFU {100 * floor / r['seconds']:.1f}%"
          f"  (floor {1000 * floor:.0f} ms, {r['seconds'] / floor:.2f}x)  {peak}  "
          f"loss {r['loss']:.3f}", flush=True)


if __name__ == "__main__":
  main()
