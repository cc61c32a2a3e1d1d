"""Flickr30K, ViT-B/16-224 + BERT-base shapes, method.md defaults.

  python -m experiments.flickr30k --config=experiments/configs/flickr30k.py \
      --config.data.root=/data/f30k --config.data.tokenizer=/weights/bert-base-uncased
`data.root` holds id_mapping.json, precomp/{train,dev,test}_{ids,caps}.txt and
flickr30k-images/ (the LAPS / VSE-infinity layout), or dataset_flickr30k.json with
--config.data.format=karpathy.
"""
from gralign_jax import configs


def get_config(arg: str | None = None):
  return configs.paper_config("flickr30k", arg)
