"""Flickr30K with the paper's backbones and method.md's training (batch 128, 30 epochs,
AdamW 2e-4 with the pretrained backbones at 0.1x, dev selection).

  python -m experiments.flickr30k --config=experiments/configs/flickr30k.py:swin384 \
      --config.data.root=/data/f30k

The argument picks the backbones (common.BACKBONES; default vit224):
  vit224, vit384   ViT-B/16 + BERT-base, K = 5 region prompts
  swin224, swin384 Swin-B + BERT-base, K = 50
  butd_bigru       BUTD region features (data.format=precomp) + BiGRU
  butd_bert        BUTD region features + BERT-base
and may add "smoke" (tiny random-init model, a few steps) and ablations
(common.VARIANTS), e.g. ":vit384,no_regions" or ":swin224,smoke".

Weights: model.vision.weights / model.text.weights name Hugging Face checkpoints (a
folder with config.json + model.safetensors, a HF cache folder, or a model id already
in the local HF cache; "" = random init). The caption tokenizer is BERT's
(data.tokenizer). Nothing is downloaded at run time: fetch them once with
`huggingface-cli download <id>`.
Data: `data.root` holds id_mapping.json, precomp/{train,dev,test}_{ids,caps}.txt and
flickr30k-images/ (the LAPS / VSE-infinity layout), or dataset_flickr30k.json with
--config.data.format=karpathy, or SCAN's precomputed features for the butd rows (see
docs/data.md).
"""
from experiments.configs import common
from gralign_jax import configs


def get_config(arg: str | None = None):
  backbone, words = common.parse_arg(arg, backbones=True)
  config = configs.base_config()
  config.seed = 0

  # Data.
  config.data.update(
      name="flickr30k",
      root="",                    # --config.data.root=/data/f30k
      format="laps",              # "karpathy": dataset_flickr30k.json; butd: "precomp"
      image_dir="flickr30k-images",
      train_split="train", dev_split="dev", test_split="test",  # 29K / 1K / 1K images
      max_len=90,                 # caption tokens, [CLS] and [SEP] included
      tokenizer=common.BERT_WEIGHTS,  # WordPiece (the BiGRU embeds it too)
      num_workers=8)

  # Model: the backbones, K, and the pixels their checkpoint wants; d = 512 (LAPS).
  common.set_backbones(config, backbone or "vit224")
  config.model.update(embed_dim=512, score="grm", score_weights=(0.4, 0.4, 0.2))

  # Loss: the triplet, summed negatives for one epoch, then the hardest.
  config.loss.update(kind="triplet", margin=0.2, warmup_epochs=1.0,
                     weights=(0.4, 0.4, 0.2), regularizer_scale="batch")

  # Training.
  config.train.update(batch_size=128, num_epochs=30.0, num_steps=-1, lr=2e-4,
                      backbone_lr_mult=0.1, weight_decay=1e-4, grad_clip=2.0,
                      lr_decay_epochs=(9, 15, 20, 25), lr_decay_factor=0.3,
                      warmup_steps=0, log_every=50, ckpt_every=500)

  # Evaluation: dev for model selection, then the test protocol.
  config.eval.update(protocol="1k", every_steps=1000)

  common.apply_variants(config, words)
  if "smoke" in words:
    common.paper_smoke(config)
  return config
