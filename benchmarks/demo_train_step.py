"""Time one jitted GRM update of the demo config (and variants) on this machine.

  python benchmarks/demo_train_step.py            # prints ms/step per row

Random uint8 images and token ids at the demo's shapes; one device; the first call
(compilation) is excluded, then the mean of --repeats timed steps. This is what sized
the demo config (16 px patches, d = 128) for a 2-core CPU; see benchmarks/README.md.
"""
import argparse
import time

import jax
import numpy as np

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.models import grm

ROWS = {  # name -> (config argument, overrides)
    "demo (GRM, 16 px patches, d=128)": (None, {}),
    "GRM, 8 px patches (65 tokens)": (None, {"model.vision.patch_size": 8}),
    "GRM, 8 px patches, d=256": (None, {"model.vision.patch_size": 8,
                                          "model.embed_dim": 256}),
    "S_ori only": ("ori", {}),
    "global baseline": ("global", {}),
}


def time_step(arg, overrides, repeats: int) -> float:
  config = demo.get_config(arg)
  for key, value in overrides.items():
    node = config
    *path, leaf = key.split(".")
    for p in path:
      node = node[p]
    node[leaf] = value
  configs.finalize(config, vocab_size=120)
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch=312)
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = train_state.create_state(model, tx, config, mesh)
  step = train.make_train_step(model, tx, config, mesh)
  rng = np.random.default_rng(0)
  b, s, l = config.train.batch_size, config.data.image_size, config.data.max_len
  batch = sharding.global_batch({
      "image": rng.integers(0, 255, (b, s, s, 3), dtype=np.uint8),
      "ids": rng.integers(5, 120, (b, l)).astype(np.int32),
      "mask": np.arange(l)[None] < rng.integers(8, l, (b, 1)),
      "image_id": np.arange(b, dtype=np.int32)}, mesh)
  state, aux = step(state, batch)
  jax.block_until_ready(aux)
  t0 = time.perf_counter()
  for _ in range(repeats):
    state, aux = step(state, batch)
  jax.block_until_ready(aux)
  return (time.perf_counter() - t0) / repeats


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument("--repeats", type=int, default=10)
  args = parser.parse_args()
  print(f"jax {jax.__version__}, {jax.devices()[0].platform}, batch 128, demo shapes")
  for name, (arg, overrides) in ROWS.items():
    dt = time_step(arg, overrides, args.repeats)
    print(f"{name:40s} {1000 * dt:8.0f} ms/step  {1 / dt:6.2f} steps/s", flush=True)


if __name__ == "__main__":
  main()
