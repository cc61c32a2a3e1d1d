"""The config schema: every experiment config starts from `base_config()`.

Field names here are the contract between the configs, the model (models/grm.py), the
losses (losses.py), the input pipeline (data/) and the trainer (train.py). Every open
point of method.md is a field with its default; docs in-line say what each switch does.
Presets, ablation variants and `smoke` are experiments/configs/common.py's.

`finalize(config)` runs when a run starts, after the command line's overrides: it
derives every value that must agree with another (so no one sets two fields to keep
them equal) and validates the result.
"""
import json
import os

import ml_collections

from gralign_jax import logs


def vit_tiny(image_size: int = 64) -> ml_collections.ConfigDict:
  """A ViT small enough for the CPU demo, shaped like ViT-B (CLS + patches, pre-LN)."""
  return ml_collections.ConfigDict(dict(
      name="vit", image_size=image_size, patch_size=8, width=128, depth=3, num_heads=4,
      mlp_dim=256, dropout=0.0, remat=False, weights=""))


def bert_tiny(max_len: int = 32) -> ml_collections.ConfigDict:
  """A BERT-style text transformer small enough for the CPU demo (post-LN like BERT)."""
  return ml_collections.ConfigDict(dict(
      name="bert", vocab_size=0,  # 0: taken from the tokenizer at build time
      max_len=max_len, width=128, depth=2, num_heads=4, mlp_dim=256, dropout=0.0,
      remat=False, weights=""))


def model_config() -> ml_collections.ConfigDict:
  """GRM model switches (method.md sections 1-4, 6)."""
  return ml_collections.ConfigDict(dict(
      vision=vit_tiny(),
      text=bert_tiny(),
      embed_dim=256,              # d, the joint dimension
      compute_dtype="float32",    # or "bfloat16": activations; params stay float32
      score="grm",                # "grm" (fine-grained) or "global" (mean-pooled cosine VSE)
      leaky_slope=0.1,            # c_ij = leaky_relu(cos, slope)
      # Saliency adapters (section 2).
      visual_adapter=True,
      text_adapter=True,
      adapter_hidden=128,         # width of W1
      gumbel_tau=1.0,             # the adapters' Gumbel-softmax temperature at step 0,
      gumbel_tau_final=1.0,       # annealed geometrically to this at the last step
      gumbel_hard=False,          # straight-through hard Gumbel
      gate_mode="weight",         # "weight": gates weight the aggregation; "scale": only
                                  # scale the tokens (literal paper form; cosine-inert)
      # Region prompting and uncertainty (section 3).
      regions=True,
      num_regions=5,              # K: 5 for ViT, 50 for Swin
      uncertainty=True,           # reparameterised sampling in training (else u_k = mu_k)
      num_samples=1,              # S samples averaged in S_unc
      logvar_hidden=256,          # width of the MLP giving log sigma^2
      # Inference score weights (ori, key, unc); scores that are switched off drop out.
      score_weights=(0.4, 0.4, 0.2),
  ))


def loss_config() -> ml_collections.ConfigDict:
  """Loss switches (method.md section 5)."""
  return ml_collections.ConfigDict(dict(
      kind="triplet",             # "triplet" (VSE++ hinge) or "infonce"
      margin=0.2,
      warmup_epochs=1.0,          # sum over violating negatives, then hardest only;
                                  # a negative value never switches to hardest
      temperature=0.05,           # InfoNCE only
      weights=(0.4, 0.4, 0.2),    # L_ori, L_key, L_unc
      recon="mse",                # "mse" or "cos" (1 - cos)
      recon_weight=0.1,           # l1
      reg_weight=0.01,            # l2, on L_KL + L_ent
      # The regularisers' weights (l1, l2, keep_ratio_weight) are multiplied by this, so
      # that they stand to L_con as they did where they were chosen (InfoNCE, a mean
      # over anchors): "batch" = the batch size B for the triplet loss (a SUM over the
      # B anchors of both directions), 1 for InfoNCE; or a number, used as it is.
      regularizer_scale=ml_collections.FieldReference("batch", field_type=object),
      kl=True,
      ent=True,
      entropy_form="paper",       # L_ent: "paper" = -H(mean assignment over prompts);
                                  # "mutual_information" = -(H(mean assignment) - mean
                                  # per-token H): also asks each token to pick prompts
      keep_ratio=-1.0,            # rho of the optional (mean(a) - rho)^2 penalty; < 0: off
      keep_ratio_weight=0.0,
      # Composition-aware hard negatives (NegCLIP): each training caption brings one of
      # its own made false (data/false_captions.py), one more negative caption for its
      # image. "" off; "all" or a comma list of kinds: shape, colour, size, binding,
      # relation, order on the synthetic set; order, noun_swap, adjective_swap on
      # real captions. A kind may carry a weight, "relation:6,shape:3,order": a
      # caption's false caption is drawn among its kinds in proportion to them.
      hard_negatives="",
      hard_negatives_per_caption=1,  # false captions each training row carries (of
                                     # distinct kinds, as many as its caption has)
  ))


def base_config() -> ml_collections.ConfigDict:
  """Everything a run needs; experiment configs override pieces of it."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.finalized = False        # set by finalize(): the derived values are in place
  config.data = ml_collections.ConfigDict(dict(
      name="synthetic",           # "synthetic", "flickr30k" or "coco"
      root="",                    # data set folder
      format="laps",              # the reader (data/readers.py): "laps" (id_mapping.json
                                  # + precomp/{split}_{ids,caps}.txt + images), "karpathy"
                                  # (dataset_*.json + images), "precomp" (SCAN's
                                  # {split}_ims.npy BUTD features + {split}_caps.txt) or
                                  # "tfds" (a TFDS-prepared coco_captions, array_record)
      image_dir="images",         # image folder under root ("flickr30k-images" for F30K)
      karpathy_json="",           # file name under root for format "karpathy"
      feature_shape=(36, 2048),   # format "precomp": (regions, dims) of {split}_ims.npy;
                                  # derived: the BUTD backbone's sizes (finalize)
      tfds_name="coco_captions",  # format "tfds": the data set under a TFDS data_dir
      skip_bad_images=False,      # True: an unreadable image is warned about, passed over
                                  # (train) or zeroed (eval), and counted in metrics
                                  # ("bad_images"); False: it stops the run, named
      check_images=True,          # before training, read every image file's header and
                                  # end (data/image_check.py): a truncated or unreadable
                                  # file is found in seconds, not when first sampled
      tokenizer="",               # HF tokenizer folder; "" = <root>/tokenizer
      image_size=64,              # derived: model.vision.image_size (finalize)
      crop_scale=(0.6, 1.0),      # RandomResizedCrop scale range for training
      hflip=True,                 # random horizontal flip for training
      # Pixels: x / 255, minus mean, over std, after a resize with resize_method (a PIL
      # filter: "bilinear", "bicubic", ...). The paper configs preset them per
      # backbone (PIXEL_PRESETS); with preprocessor="checkpoint" the vision weights'
      # own preprocessor_config.json, where present, overrides all three at the start
      # of a run (resolve_preprocessing); "config": these values as they are.
      pixel_mean=(0.5, 0.5, 0.5),
      pixel_std=(0.5, 0.5, 0.5),
      resize_method="bilinear",
      preprocessor="checkpoint",
      max_len=32,                 # text tokens including [CLS] and [SEP]
      num_workers=0,              # grain worker processes (0: in the main process)
      num_threads=2,              # decoding threads per process
      prefetch=2,
      train_split="train",
      dev_split="dev",
      test_split="test",          # "": no final test (results.json holds dev only)
      # The synthetic scenes set, generated when root has none.
      synthetic=ml_collections.ConfigDict(dict(
          generate=False, num_train=8000, num_dev=500, num_test=1000, seed=0,
          vocab_size=1000)),
  ))
  config.model = model_config()
  config.loss = loss_config()
  config.train = ml_collections.ConfigDict(dict(
      batch_size=128,             # global, split over all devices
      num_epochs=30.0,
      num_steps=-1,               # > 0 overrides num_epochs; -1: train num_epochs
      max_train_seconds=-1.0,     # > 0: also stop once training (evals excluded) has
                                  # run this long, e.g. to compare models at equal time
      lr=2e-4,
      backbone_lr_mult=0.1,
      weight_decay=1e-4,
      grad_clip=2.0,
      lr_decay_epochs=(9, 15, 20, 25),
      lr_decay_factor=0.3,
      warmup_steps=0,             # linear lr warm-up
      log_every=50,
      ckpt_every=500,
      keep_checkpoints=2,
      grad_cache_chunks=1,        # N > 1: encode the batch in N chunks, the loss over
                                  # all of it (grad_cache.py): the activations of B/N
      profile_steps="",           # "A:B": a jax.profiler trace of train steps A to B
                                  # under WORKDIR/profile (profiling.py)
  ))
  config.eval = ml_collections.ConfigDict(dict(
      every_steps=1000,           # dev evaluation period; <= 0: only at the end
      protocol="1k",              # "1k" (Flickr30K) or "coco" (1K five-fold and 5K)
      block_images=0,             # images per block on a device; <= 0: sized to its memory
      block_texts=0,              # texts per host step; <= 0: sized to the device
      backend="auto",             # scoring: "auto" | "xla" | "pallas" | "reference"
                                  # (evaluation/engine.py); auto = pallas where it compiles
      score_dtype="float32",      # stored unit tokens for scoring: "float32" | "bfloat16"
      batch_size=256,             # encoding batch
      dev_max_images=-1,          # > 0: evaluate dev on its first N images only
      probe=False,                # True: the final evaluation also runs the probe
                                  # (evaluation/probe.py) on the test split (dev where
                                  # there is none) and puts it in results.json
  ))
  return config


# ---------------------------------------------------------------------------
# Validation: every value checked before anything is built or written.
# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# The saved-key history: configs saved before a key existed.
# ---------------------------------------------------------------------------
# Keys added to the configs after runs were saved without them -> what those runs did
# (so that resuming one with that value is no change). loss.regularizer_scale: the
# regularisers were not scaled (1.0); "batch", the new default, would change a triplet
# run's objective and is refused on resume like any other change.
ADDED_KEYS = {
    "data.resize_method": "bilinear", "data.preprocessor": "config",
    "loss.regularizer_scale": 1.0, "loss.entropy_form": "paper",
    "model.gumbel_tau_final": 1.0, "finalized": True,
    "train.grad_cache_chunks": 1, "train.profile_steps": "", "eval.probe": False,
    "loss.hard_negatives": "",
    "loss.hard_negatives_per_caption": 1,
}


def fill_added_keys(saved: dict) -> dict:
  """A saved config.json (nested dict) with every ADDED_KEYS key it lacks set to that
  value, so a run saved before a key existed loads as it trained."""
  out = json.loads(json.dumps(saved))
  for key, value in ADDED_KEYS.items():
    *parents, leaf = key.split(".")
    node = out
    for p in parents:
      node = node.setdefault(p, {})
    node.setdefault(leaf, value)
  return out


class ConfigError(ValueError):
  """A config value that cannot work: the message names the key, value and what is
  allowed."""


CHOICES = {
    "data.format": ("laps", "karpathy", "flickr8k", "precomp", "tfds"),
    "model.score": ("grm", "global"),
    "model.gate_mode": ("weight", "scale"),
    "model.compute_dtype": ("float32", "bfloat16"),
    "loss.kind": ("triplet", "infonce"),
    "loss.recon": ("mse", "cos"),
    "loss.entropy_form": ("paper", "mutual_information"),
    "data.resize_method": ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming"),
    "data.preprocessor": ("checkpoint", "config"),
    "eval.protocol": ("1k", "coco"),
    "eval.backend": ("auto", "xla", "pallas", "reference"),
    "eval.score_dtype": ("float32", "bfloat16"),
}


def regularizer_scale(value) -> str | float | None:
  """loss.regularizer_scale -> "batch" or a float >= 0 (a numeric string from the
  command line counts as its number); None when it is neither."""
  if value == "batch":
    return "batch"
  if isinstance(value, bool):
    return None
  try:
    number = float(value)
  except (TypeError, ValueError):
    return None
  return number if number >= 0 else None


def resolve_preprocessing(config: ml_collections.ConfigDict,
                          log: logs.Log = logs.info) -> dict:
  """With data.preprocessor="checkpoint", sets data.pixel_mean / pixel_std /
  resize_method (in place) from the vision weights' preprocessor_config.json where
  the checkpoint has one. -> {key: (old, new)} of what changed.

  A run calls this once, before it builds its input pipeline and update step, so that
  training, evaluation and the saved config.json agree. Without weights, without the
  file, or with data.preprocessor="config", nothing changes. A `size` that differs
  from data.image_size is only reported: the model's input size is the config's.
  """
  from gralign_jax import weights  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import images  # pylint: disable=g-import-not-at-top
  path = config.model.vision.get("weights", "")
  if (config.data.preprocessor != "checkpoint" or not path
      or config.model.vision.name == "butd"):  # features, not pixels
    return {}
  folder = weights.resolve(path)
  found = weights.read_preprocessor_config(folder)
  if found is None:
    return {}
  settings = images.preprocessor_settings(
      found, os.path.join(folder, weights.PREPROCESSOR_CONFIG))
  size = settings.pop("image_size", None)
  if size is not None and size != config.data.image_size:
    log(f"  note: {folder} was prepared at {size} px; this run feeds "
        f"data.image_size={config.data.image_size}.")
  changes = {}
  for key, value in settings.items():
    old = config.data[key]
    if (tuple(old) if isinstance(old, (tuple, list)) else old) != value:
      changes[f"data.{key}"] = (old, value)
      config.data[key] = value
  for key, (old, new) in changes.items():
    log(f"  {key}: {old!r} -> {new!r} (the vision checkpoint's "
        f"{weights.PREPROCESSOR_CONFIG})")
  return changes


def _get(config, key: str):
  node = config
  for part in key.split("."):
    node = node[part]
  return node


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError, in one line, for the first value that cannot work."""
  def fail(key, allowed):
    raise ConfigError(f"config.{key}={_get(config, key)!r}: expected {allowed}.")

  from gralign_jax.models import backbones  # pylint: disable=g-import-not-at-top
  choices = dict(CHOICES, **{f"model.{part}.name": tuple(registry)  # the one registry
                             for part, registry in backbones.BACKBONES.items()})
  for key, allowed in choices.items():
    if _get(config, key) not in allowed:
      fail(key, "one of " + ", ".join(repr(a) for a in allowed))
  t, m, v = config.train, config.model, config.model.vision
  for key in ("train.lr", "train.batch_size", "train.log_every", "train.ckpt_every",
              "train.keep_checkpoints", "model.embed_dim", "data.max_len",
              "eval.batch_size"):
    if not _get(config, key) > 0:
      fail(key, "a value > 0")
  if not (isinstance(config.loss.hard_negatives_per_caption, int)
          and config.loss.hard_negatives_per_caption >= 1):
    fail("loss.hard_negatives_per_caption", "a whole number >= 1")
  for key in ("data.train_split", "data.dev_split"):
    if not _get(config, key):
      fail(key, "a split name (only data.test_split may be empty: no final test)")
  if t.num_steps == 0 or t.num_steps < -1:
    fail("train.num_steps", "a number of steps > 0, or -1 to train for "
         f"train.num_epochs={t.num_epochs}")
  if t.num_steps == -1 and not t.num_epochs > 0:
    fail("train.num_epochs", "a value > 0 (train.num_steps is -1: training length is "
         "given in epochs)")
  if not (isinstance(t.grad_cache_chunks, int) and t.grad_cache_chunks >= 1
          and t.batch_size % t.grad_cache_chunks == 0):
    fail("train.grad_cache_chunks", "a whole number >= 1 that divides "
         f"train.batch_size={t.batch_size} (1: no gradient caching)")
  from gralign_jax import profiling  # pylint: disable=g-import-not-at-top
  profiling.parse(t.profile_steps)
  if t.backbone_lr_mult < 0:
    fail("train.backbone_lr_mult", "a value >= 0")
  if m.score == "grm" and m.regions and m.num_regions < 1:
    fail("model.num_regions", "K >= 1 region prompts (or model.regions=False)")
  for key in ("gumbel_tau", "gumbel_tau_final"):
    if m[key] <= 0:
      fail(f"model.{key}", "a temperature > 0")
  if len(m.score_weights) != 3 or min(m.score_weights) < 0:
    fail("model.score_weights", "three weights >= 0 (ori, key, unc)")
  if config.loss.kind == "infonce" and config.loss.temperature <= 0:
    fail("loss.temperature", "a temperature > 0")
  if config.loss.margin < 0:
    fail("loss.margin", "a margin >= 0")
  if regularizer_scale(config.loss.regularizer_scale) is None:
    fail("loss.regularizer_scale", "'batch' or a number >= 0")
  for key in ("data.pixel_mean", "data.pixel_std"):
    if len(_get(config, key)) != 3:
      fail(key, "three values (R, G, B)")
  if min(config.data.pixel_std) <= 0:
    fail("data.pixel_std", "values > 0")
  if v.name in ("vit", "swin", "dinov2") and v.image_size % v.patch_size:
    fail("model.vision.image_size", f"a multiple of model.vision.patch_size="
         f"{v.patch_size}")
  if config.data.max_len > m.text.max_len:
    fail("data.max_len", f"at most the text encoder's position table, "
         f"model.text.max_len={m.text.max_len}")


# ---------------------------------------------------------------------------
# Derived values: set in one place when a run starts.
# ---------------------------------------------------------------------------
def _plain(value):
  return tuple(value) if isinstance(value, (tuple, list)) else value


def _derive(config, key: str, value, source: str) -> None:
  """Sets `key` to `value`, derived from `source`. The key may hold its schema default
  (base_config's: not set by hand) or `value`; anything else was set by hand to
  disagree, an error that names both."""
  current = _plain(_get(config, key))
  if current not in (_plain(_get(base_config(), key)), _plain(value)):
    raise ConfigError(f"config.{key}={current!r}: it follows {source} ({value!r}); "
                      f"set {source} instead.")
  *parents, leaf = key.split(".")
  _get(config, ".".join(parents))[leaf] = value


def finalize(config: ml_collections.ConfigDict,
             vocab_size: int | None = None) -> ml_collections.ConfigDict:
  """Derives, in place, every value that must agree with another, then validates.

  - data.image_size <- model.vision.image_size (ViT, Swin: the pixels fed to it);
  - data.feature_shape <- (model.vision.num_regions, feature_dim) (BUTD features);
  - model.text.max_len <- data.max_len when 0 (a preset may set a longer table);
  - model.text.vocab_size <- vocab_size (the tokenizer's) when given and 0.
  Idempotent. -> config. Raises ConfigError for a derived value set otherwise by hand
  and for anything validate() refuses.
  """
  v, text = config.model.vision, config.model.text
  if v.name in ("vit", "swin", "dinov2"):
    _derive(config, "data.image_size", v.image_size, "model.vision.image_size")
  if v.name == "butd":
    _derive(config, "data.feature_shape", (v.num_regions, v.feature_dim),
            "(model.vision.num_regions, model.vision.feature_dim)")
  if text.max_len <= 0:
    text.max_len = config.data.max_len
  if vocab_size is not None and text.vocab_size <= 0:
    text.vocab_size = vocab_size
  validate(config)
  config.finalized = True
  return config


def require_final(config: ml_collections.ConfigDict, where: str) -> None:
  """Raises for a config that finalize() has not seen: its derived values (image size,
  feature shape, text length) would be the schema's defaults, not the model's."""
  if not config.get("finalized", True):  # a saved config.json without the key: final
    raise ConfigError(f"{where} needs a finalized config: call "
                      "gralign_jax.configs.finalize(config) after setting its values "
                      "(a run does this itself).")
