"""MS-COCO, ViT-B/16-224 + BERT-base shapes, method.md defaults.

  python -m experiments.coco --config=experiments/configs/coco.py \
      --config.data.root=/data/coco --config.data.tokenizer=/weights/bert-base-uncased
`data.root` holds id_mapping.json, precomp/{train,dev,test,testall}_{ids,caps}.txt and
images/ (the LAPS / VSE-infinity layout), or dataset_coco.json with
--config.data.format=karpathy.
"""
from gralign_jax import configs


def get_config(arg: str | None = None):
  return configs.paper_config("coco", arg)
