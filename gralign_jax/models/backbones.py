"""The backbone registry: config.model.<part>.name -> the module class, the one place a
backbone is registered.

A backbone is a Linen module with `from_config(config, dtype)` and `example_inputs()`.
One that can start from a Hugging Face checkpoint also implements the HF protocol
(weights.py: `from_hf_config`, `hf_name`, `HF_IGNORED`) and is registered under its HF
`model_type` ("vit", "swin", "bert"), so that a checkpoint folder finds its class here
too (`from_pretrained`). Adding a backbone: its module, one line below, and its preset
(and `smoke` shrink) in experiments/configs/common.py; configs.validate takes the
names from here.
"""
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import weights
from gralign_jax.models import bert
from gralign_jax.models import bigru
from gralign_jax.models import dinov2
from gralign_jax.models import region_features
from gralign_jax.models import swin
from gralign_jax.models import vit

BACKBONES = {
    "vision": {"vit": vit.ViT, "swin": swin.Swin, "butd": region_features.RegionFeatures,
               "dinov2": dinov2.Dinov2},
    "text": {"bert": bert.Bert, "bigru": bigru.BiGRU},
}
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def lookup(part: str, name: str) -> Any:
  """("vision" | "text", config name) -> the backbone class."""
  registry = BACKBONES[part]
  if name not in registry:
    raise ValueError(f"unknown config.model.{part}.name {name!r}; known: "
                     f"{sorted(registry)}")
  return registry[name]


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
  if model_config.compute_dtype not in DTYPES:
    raise ValueError(f"config.model.compute_dtype must be one of {sorted(DTYPES)}, "
                     f"got {model_config.compute_dtype!r}")
  return DTYPES[model_config.compute_dtype]


def build(model_config: ml_collections.ConfigDict, part: str) -> Any:
  """The backbone module of config.model.<part> ("vision" or "text"), unbound."""
  cfg = model_config[part]
  return lookup(part, cfg.name).from_config(cfg, compute_dtype(model_config))


def loads_pretrained(model_config: ml_collections.ConfigDict, part: str) -> bool:
  """Whether config.model.<part>'s backbone is of a kind that starts from pretrained
  weights: it implements the HF protocol, as ViT, Swin and BERT do; the BUTD feature
  MLP and the BiGRU train from scratch. The optimiser gives these backbones
  train.backbone_lr_mult (optim.py)."""
  return hasattr(lookup(part, model_config[part].name), "hf_name")


def for_hf_model_type(model_type: str, where: str) -> Any:
  """A HF config's model_type -> the registered class implementing the HF protocol."""
  found = {name: cls for registry in BACKBONES.values() for name, cls in registry.items()
           if hasattr(cls, "hf_name")}
  if model_type not in found:
    raise weights.CheckpointMismatchError(
        f"{where} has model_type {model_type!r}; supported: {sorted(found)}.")
  return found[model_type]


def from_pretrained(path: str, *, dtype: Any = jnp.float32,
                    **overrides) -> tuple[Any, dict]:
  """A local HF checkpoint folder (or cache folder, or cached model id) -> (module,
  params).

  `module.apply({'params': params}, ...)` gives the last hidden states (B, L, C): for
  BERT from `(input_ids, attention_mask)`, for ViT and Swin from NHWC `pixel_values`.
  `overrides` go to the module (e.g. `image_size=384` for a ViT checkpoint trained at
  224: the position embeddings are interpolated; `max_len=32` for BERT).
  """
  folder = weights.resolve(path)
  hf_config = weights.read_config(folder)
  cls = for_hf_model_type(hf_config.get("model_type", ""), f"{folder}/config.json")
  module = cls.from_hf_config(hf_config, dtype=dtype, **overrides)
  return module, jax.tree.map(jnp.asarray, weights.load_backbone(folder, module))
