"""GRM on the synthetic scenes set: the Quickstart's job, sized for a 2-core CPU.

Arguments (comma-separated): a variant of common.VARIANTS ("global",
"ori", "no_regions", ...), "patch8" (8 px patches: 65 visual tokens, about twice the
step time) and/or "smoke" (a tiny set and a few steps, for tests).
  python -m experiments.demo --config=experiments/configs/demo.py:global
"""
from experiments.configs import common
from gralign_jax import configs


def get_config(arg: str | None = None):
  _, words = common.parse_arg(arg, extra=("patch8",))
  config = configs.base_config()
  config.data.update(name="synthetic", root="data/synthetic", format="laps",
                     image_dir="images", max_len=28, hflip=False,
                     crop_scale=(0.8, 1.0))  # captions name left/right: no flips
  config.data.synthetic.generate = True
  # 16 px patches: 17 visual tokens. 8 px patches (65 tokens) cost 3x per step on a
  # 2-core CPU (benchmarks/README.md), too slow to learn much within 15 minutes.
  config.model.vision.update(image_size=64, patch_size=16)
  config.model.embed_dim = 128
  # From scratch on ambiguous captions, InfoNCE learns far faster than the summed or
  # hardest-negative triplet (dev rSum 385 vs 234 after 400 steps, docs/results.md "Demo
  # results"); the triplet stays one switch away: --config.loss.kind=triplet.
  config.loss.kind = "infonce"
  config.train.update(batch_size=128, num_steps=1200, lr=1e-3, backbone_lr_mult=1.0,
                      lr_decay_epochs=(3,), warmup_steps=100, log_every=50,
                      ckpt_every=300)
  config.eval.update(every_steps=300, block_images=40, block_texts=500, batch_size=256)
  common.apply_variants(config, words)
  if "patch8" in words:
    config.model.vision.patch_size = 8
  if "smoke" in words:
    common.smoke(config)
    config.data.root = "data/synthetic_smoke"
    config.data.synthetic.update(num_train=64, num_dev=16, num_test=20)
    config.model.vision.image_size = 32
  return config
