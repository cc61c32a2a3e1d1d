"""A straightforward PyTorch float32 blockwise GRM inference score: how peers score a
test set. The reference that benchmarks/scoring.py --torch times on the same device.

Per block of images x captions: one einsum to a (bi, bt, L_t, L_v) cosine tensor,
leaky ReLU, masked maxima both ways, S_ori, S_key (gate-weighted means) and S_unc
(captions against the K regions), 0.4 / 0.4 / 0.2. No fusion, no bf16: the plain way.
"""
import numpy as np
import torch

NEG = -1e9


def _unit(x, device):
  x = torch.as_tensor(np.asarray(x, np.float32), device=device)
  return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def _wmean(x, valid, w):
  w = torch.where(valid, w, torch.zeros((), device=x.device))
  return (x * w).sum(-1) / w.sum(-1).clamp_min(1e-6)


def prepare(images, texts, device):
  """Host encodings -> device tensors (unit tokens, bool masks, f32 gates)."""
  dev = lambda x, dt: torch.as_tensor(np.asarray(x), device=device).to(dt)
  img = {"v": _unit(images["tokens"], device), "u": _unit(images["regions"][:, 0], device),
         "mask": dev(images["mask"], torch.bool), "gates": dev(images["gates"], torch.float32)}
  txt = {"t": _unit(texts["tokens"], device), "mask": dev(texts["mask"], torch.bool),
         "gates": dev(texts["gates"], torch.float32)}
  return img, txt


@torch.no_grad()
def score_matrix(img, txt, slope=0.1, weights=(0.4, 0.4, 0.2), block_images=50,
                 block_texts=500):
  """prepare()'d tensors -> (N, M) float32 tensor on their device."""
  w = [x / sum(weights) for x in weights]
  n, m = img["v"].shape[0], txt["t"].shape[0]
  out = torch.empty(n, m, device=img["v"].device)
  for i in range(0, n, block_images):
    v, u = img["v"][i:i + block_images], img["u"][i:i + block_images]
    vm, vg = img["mask"][i:i + block_images], img["gates"][i:i + block_images]
    for j in range(0, m, block_texts):
      t = txt["t"][j:j + block_texts]
      tm, tg = txt["mask"][j:j + block_texts], txt["gates"][j:j + block_texts]
      c = torch.nn.functional.leaky_relu(torch.einsum("tld,ivd->itlv", t, v), slope)
      t2v = c.masked_fill(~vm[:, None, None, :], NEG).amax(-1)        # (bi, bt, Lt)
      v2t = c.masked_fill(~tm[None, :, :, None], NEG).amax(-2)        # (bi, bt, Lv)
      s_ori = _wmean(t2v, tm[None], 1.0) + _wmean(v2t, vm[:, None], 1.0)
      s_key = _wmean(t2v, tm[None], tg[None]) + _wmean(v2t, vm[:, None], vg[:, None])
      cu = torch.nn.functional.leaky_relu(torch.einsum("tld,ikd->itlk", t, u), slope)
      s_unc = (_wmean(cu.amax(-1), tm[None], tg[None]) +
               cu.masked_fill(~tm[None, :, :, None], NEG).amax(-2).mean(-1))
      out[i:i + block_images, j:j + block_texts] = w[0] * s_ori + w[1] * s_key + w[2] * s_unc
  return out
