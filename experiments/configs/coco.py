"""MS-COCO with the paper's backbones and method.md defaults (batch 128, 30 epochs,
AdamW 2e-4 with backbones at 0.1x, dev selection).

  python -m experiments.coco --config=experiments/configs/coco.py:swin384 \
      --config.data.root=/data/coco

The argument picks the backbones (configs.BACKBONES; default vit224):
  vit224, vit384   ViT-B/16 + BERT-base, K = 5 region prompts
  swin224, swin384 Swin-B + BERT-base, K = 50
  butd_bigru       BUTD region features (data.format=precomp) + BiGRU
  butd_bert        BUTD region features + BERT-base
and may add "smoke" (tiny random-init model, a few steps) and ablations
(configs.VARIANTS), e.g. ":vit384,no_regions" or ":swin224,smoke".

Weights: model.vision.weights / model.text.weights name Hugging Face checkpoints (a
folder with config.json + model.safetensors, a HF cache folder, or a model id already
in the local HF cache; "" = random init). The caption tokenizer is BERT's
(data.tokenizer). Nothing is downloaded at run time: fetch them once with
`huggingface-cli download <id>`.
Data: `data.root` holds id_mapping.json, precomp/{train,dev,test,testall}_{ids,caps}.txt and
images/ (the LAPS / VSE-infinity layout), or dataset_coco.json with --config.data.format=karpathy,
or SCAN's precomputed features for the butd rows (see README, "Data").
"""
from gralign_jax import configs


def get_config(arg: str | None = None):
  return configs.paper_config("coco", arg)
