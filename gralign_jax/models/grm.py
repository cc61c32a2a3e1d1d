"""The GRM dual encoder (method.md sections 1-3): backbones, projections, adapters,
region prompts. Scoring lives in similarity.py, losses in losses.py.

Top-level parameter names are fixed, because the trainer gives the backbones their own
learning rate by name (those that load pretrained weights, `loads_pretrained`):
"vision", "text" (backbones), "img_proj", "txt_proj" (Dense to
d = embed_dim), "visual_adapter", "text_adapter" (saliency.py), "regions"
(regions.py). RNG streams: "gumbel" (adapter noise), "sample" (region noise),
"dropout". Evaluation (train=False) needs no rng at all.

Backbones are found by config name in the registries below; a new one is one line
there plus a module with `from_config(config, dtype)` and `example_inputs()`. A backbone
whose config has `weights` (a Hugging Face checkpoint folder, cache folder or cached
model id) starts from those weights (`load_pretrained`); otherwise from random init.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import weights
from gralign_jax.models import bert
from gralign_jax.models import bigru
from gralign_jax.models import region_features
from gralign_jax.models import regions as regions_lib
from gralign_jax.models import saliency
from gralign_jax.models import swin
from gralign_jax.models import vit

# config.model.vision.name / text.name -> a class with from_config(config, dtype).
VISION_BACKBONES = {"vit": vit.ViT, "swin": swin.Swin,
                    "butd": region_features.RegionFeatures}
TEXT_BACKBONES = {"bert": bert.Bert, "bigru": bigru.BiGRU}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _lookup(registry: dict[str, Any], name: str, where: str) -> Any:
  if name not in registry:
    raise ValueError(f"unknown {where} {name!r}; known: {sorted(registry)}")
  return registry[name]


def masked_mean(x: jax.Array, mask: jax.Array) -> jax.Array:
  """x (B, L, d), mask (B, L) -> (B, d) float32 mean over valid tokens."""
  m = mask.astype(jnp.float32)[..., None]
  return jnp.sum(x.astype(jnp.float32) * m, axis=1) / jnp.maximum(m.sum(axis=1), 1.0)


def compute_dtype(model_config: ml_collections.ConfigDict) -> Any:
  if model_config.compute_dtype not in _DTYPES:
    raise ValueError(f"config.model.compute_dtype must be one of {sorted(_DTYPES)}, "
                     f"got {model_config.compute_dtype!r}")
  return _DTYPES[model_config.compute_dtype]


def backbone(model_config: ml_collections.ConfigDict, part: str) -> nn.Module:
  """The backbone module of config.model.<part> ("vision" or "text"), unbound."""
  registry = VISION_BACKBONES if part == "vision" else TEXT_BACKBONES
  cfg = model_config[part]
  return _lookup(registry, cfg.name, f"config.model.{part}.name").from_config(
      cfg, compute_dtype(model_config))


def loads_pretrained(model_config: ml_collections.ConfigDict, part: str) -> bool:
  """Whether config.model.<part>'s backbone is of a kind that starts from pretrained
  weights: it implements the Hugging Face protocol (weights.py: `hf_name`), as ViT,
  Swin and BERT do; the BUTD feature MLP and the BiGRU train from scratch. The
  optimiser gives these backbones train.backbone_lr_mult (optim.py)."""
  registry = VISION_BACKBONES if part == "vision" else TEXT_BACKBONES
  cls = _lookup(registry, model_config[part].name, f"config.model.{part}.name")
  return hasattr(cls, "hf_name")


def example_inputs(model_config: ml_collections.ConfigDict,
                   max_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Arrays of the shapes GRM.__call__ takes (for init): image or region features
  (1, ...), ids (1, max_len), mask (1, max_len)."""
  (image,) = backbone(model_config, "vision").example_inputs()
  return image, jnp.zeros((1, max_len), jnp.int32), jnp.ones((1, max_len), bool)


def load_pretrained(params: dict, model_config: ml_collections.ConfigDict,
                    log=print) -> dict:
  """Replaces params["vision"] / params["text"] with the checkpoints the config names
  (model.<part>.weights); a backbone without one keeps its random init."""
  params = dict(params)
  for part in ("vision", "text"):
    path = model_config[part].get("weights", "")
    if not path:
      continue
    module = backbone(model_config, part)
    folder = weights.resolve(path)
    log(f"  {part} backbone: weights from {folder}")
    params[part] = jax.tree.map(jnp.asarray, weights.load_backbone(folder, module))
  return params


class GRM(nn.Module):
  """GRM over a frozen model config (config.model of configs.py)."""
  config: ml_collections.FrozenConfigDict

  def setup(self):
    cfg = self.config
    if cfg.score not in ("grm", "global"):
      raise ValueError(f"config.model.score must be 'grm' or 'global', got "
                       f"{cfg.score!r}")
    dtype = compute_dtype(cfg)
    self.vision = backbone(cfg, "vision")
    self.text = backbone(cfg, "text")
    self.img_proj = nn.Dense(cfg.embed_dim, dtype=dtype)
    self.txt_proj = nn.Dense(cfg.embed_dim, dtype=dtype)
    # The global (VSE) baseline is the mean-pooled cosine: no adapters, no regions.
    fine = cfg.score == "grm"
    adapter = lambda: saliency.SaliencyAdapter(cfg.adapter_hidden, cfg.gumbel_tau_final,
                                               cfg.gumbel_hard, dtype)
    if fine and cfg.visual_adapter:
      self.visual_adapter = adapter()
    if fine and cfg.text_adapter:
      self.text_adapter = adapter()
    if fine and cfg.regions:
      self.regions = regions_lib.RegionPrompts(cfg.num_regions, cfg.logvar_hidden,
                                               cfg.uncertainty, cfg.num_samples)

  def _fine(self) -> bool:
    return self.config.score == "grm"

  def encode_image(self, pixels: jax.Array, train: bool = False,
                   gumbel_tau: jax.Array | None = None) -> dict[str, jax.Array]:
    """pixels (B, H, W, 3) float32, normalised (or BUTD features (B, R, F)) -> dict.

    gumbel_tau: the step's adapter temperature in training (None: model.gumbel_tau_final).

    "tokens" V (B, Lv, d) projected, not normalised, compute dtype; "mask" (B, Lv)
    bool; "gates" a_v (B, Lv) float32 (ones when the visual adapter is off); "global"
    (B, d) float32 masked mean of V; with regions on: "regions" U (B, S, K, d),
    "region_mu" (B, K, d), "region_logvar" (B, K, d), "assign" A_hat (B, Lv, K).
    """
    cfg = self.config
    v = self.img_proj(self.vision(pixels, train=train))
    mask = jnp.ones(v.shape[:2], bool)  # a ViT has no padding
    out = {"tokens": v, "mask": mask, "global": masked_mean(v, mask)}
    if self._fine() and cfg.visual_adapter:
      out["gates"] = self.visual_adapter(v, mask, train=train, tau=gumbel_tau)
    else:
      out["gates"] = mask.astype(jnp.float32)
    if self._fine() and cfg.regions:
      v_hat = out["gates"][..., None] * v.astype(jnp.float32)
      out.update(self.regions(v_hat, mask, train=train))
    return out

  def encode_text(self, ids: jax.Array, mask: jax.Array, train: bool = False,
                  gumbel_tau: jax.Array | None = None) -> dict[str, jax.Array]:
    """ids (B, L) int32, mask (B, L) bool -> dict (gumbel_tau as encode_image).

    "tokens" T (B, L, d) compute dtype; "mask" (B, L) bool; "gates" a_t (B, L) float32,
    0 at padding (mask as float when the text adapter is off); "global" (B, d) float32.
    """
    mask = mask.astype(bool)
    t = self.txt_proj(self.text(ids, mask, train=train))
    out = {"tokens": t, "mask": mask, "global": masked_mean(t, mask)}
    if self._fine() and self.config.text_adapter:
      out["gates"] = self.text_adapter(t, mask, train=train, tau=gumbel_tau)
    else:
      out["gates"] = mask.astype(jnp.float32)
    return out

  def __call__(self, pixels: jax.Array, ids: jax.Array, mask: jax.Array,
               train: bool = False, gumbel_tau: jax.Array | None = None
               ) -> tuple[dict[str, jax.Array], dict[str, jax.Array]]:
    """Both encoders (used for init and training): (img_dict, txt_dict)."""
    return (self.encode_image(pixels, train, gumbel_tau),
            self.encode_text(ids, mask, train, gumbel_tau))


def build_model(model_config: ml_collections.ConfigDict) -> GRM:
  """config.model -> GRM (frozen, so the module stays hashable for jit)."""
  return GRM(config=ml_collections.FrozenConfigDict(model_config))
