"""The GRM dual encoder (method.md sections 1-3): backbones, projections, adapters,
region prompts. Scoring lives in scores/, losses in losses.py.

Top-level parameter names are fixed, because the trainer gives the backbones their own
learning rate by name (those that load pretrained weights,
`backbones.loads_pretrained`):
"vision", "text" (backbones), "img_proj", "txt_proj" (Dense to
d = embed_dim), "visual_adapter", "text_adapter" (saliency.py), "regions"
(regions.py). RNG streams: "gumbel" (adapter noise), "sample" (region noise),
"dropout". Evaluation (train=False) needs no rng at all.

Backbones are found by config name in backbones.py, the one registry. A backbone
whose config has `weights` (a Hugging Face checkpoint folder, cache folder or cached
model id) starts from those weights (`load_pretrained`); otherwise from random init.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from gralign_jax import logs
from gralign_jax import weights
from gralign_jax.models import backbones
from gralign_jax.models import layers
from gralign_jax.models import regions as regions_lib
from gralign_jax.models import saliency


def example_inputs(model_config: ml_collections.ConfigDict,
                   max_len: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Arrays of the shapes GRM.__call__ takes (for init): image or region features
  (1, ...), ids (1, max_len), mask (1, max_len)."""
  (image,) = backbones.build(model_config, "vision").example_inputs()
  return image, jnp.zeros((1, max_len), jnp.int32), jnp.ones((1, max_len), bool)


def load_pretrained(params: dict, model_config: ml_collections.ConfigDict,
                    log: logs.Log = logs.info) -> dict:
  """Replaces params["vision"] / params["text"] with the checkpoints the config names
  (model.<part>.weights); a backbone without one keeps its random init."""
  params = dict(params)
  for part in ("vision", "text"):
    path = model_config[part].get("weights", "")
    if not path:
      continue
    module = backbones.build(model_config, part)
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
    dtype = backbones.compute_dtype(cfg)
    self.vision = backbones.build(cfg, "vision")
    self.text = backbones.build(cfg, "text")
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
    out = {"tokens": v, "mask": mask, "global": layers.masked_mean(v, mask)}
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
    out = {"tokens": t, "mask": mask, "global": layers.masked_mean(t, mask)}
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
