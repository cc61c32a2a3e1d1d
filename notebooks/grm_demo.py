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
# # GRM on the synthetic scenes set: train, retrieve, and look inside
#
# **GRM** ("Cross Modal Fine-grained Alignment via Granularity-aware and Region-uncertain
# Modeling", Liu et al., AAAI 2026) scores an image against a caption from their *token
# sets*, not from one vector each:
#
# * a ViT encodes the image into patch tokens and a BERT-style transformer the caption
#   into word-piece tokens;
# * a **saliency adapter** per modality gives every token a keep gate (granularity-aware:
#   which patches and which words matter);
# * learnable **region prompts** pool the visual tokens into a few Gaussian regions with
#   a mean and a variance (region-uncertain);
# * the score of a pair is a bidirectional max-pooled token similarity over the original
#   tokens (S_ori), the kept tokens (S_key) and the uncertain regions (S_unc).
#
# This notebook runs the repository's Quickstart job step by step, with the same code as
# `python -m experiments.demo`: it generates the synthetic scenes set (small images of
# coloured shapes whose captions need attributes bound to the right objects), trains GRM
# on it (or loads a run you trained before), prints the Recall@K table, retrieves images
# for a caption you type, and draws what the model matched. The full demo trains for
# about 8 minutes on a 2-core CPU; a GPU or TPU runtime is faster. `SIZE = "smoke"` runs
# a seconds-long tiny version of everything (what the test suite runs).

# %% [markdown]
# ## Colab set-up
#
# On Colab this cell installs `gralign_jax` with pip from `REPO_URL` (a git URL of this
# repository, e.g. `https://github.com/OWNER/gralign_jax.git`, or a `pip`-installable
# archive; the environment variable `GRALIGN_REPO_URL` works too). Anywhere else it does
# nothing: install the package yourself (`pip install -e .` in the repository).

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
    print(f"pip install {spec} ...")
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-q", spec],
                          capture_output=True, text=True)
    print(done.stdout[-3000:], done.stderr[-3000:])
    if done.returncode:
      raise RuntimeError(f"pip install {spec} failed (exit status {done.returncode}).")
    print("Installed. If pip replaced jax or numpy, restart the session "
          "(Runtime > Restart session) and run on from the next cell.")

# %% [markdown]
# ## Parameters
#
# * `WORKDIR`: a run directory to load instead of training (a local folder or
#   `gs://bucket/run`, e.g. `runs/demo` from `python -m experiments.demo`). Empty: train
#   a new run into `RUN_DIR`.
# * `SIZE`: `""` for the full demo config (`experiments/configs/demo.py`), `"smoke"` for
#   its tiny version (a 100-image set, 4 training steps: nothing is learnt, but every
#   step runs). The environment variable `GRALIGN_NOTEBOOK_SMOKE=1` selects `"smoke"`.
# * `DATA_ROOT`: where the synthetic set is generated (or read, if already there).
# * `RUN_DIR`: where a new run is trained (run it again to resume or reuse it).
# * `QUERY`, `TOP_K`: the caption to retrieve images for, and how many to show.
#
# The `GRALIGN_NOTEBOOK_*` environment variables override them (the test suite uses
# them to run everything in a temporary folder).

# %% tags=["parameters"]
import os

WORKDIR = ""  # @param {type:"string"}
SIZE = ""  # @param ["", "smoke"]
DATA_ROOT = ""  # @param {type:"string"}
RUN_DIR = ""  # @param {type:"string"}
QUERY = "a red circle left of a blue square"  # @param {type:"string"}
TOP_K = 5  # @param {type:"integer"}

WORKDIR = os.environ.get("GRALIGN_NOTEBOOK_WORKDIR", WORKDIR)
if os.environ.get("GRALIGN_NOTEBOOK_SMOKE"):
  SIZE = "smoke"
DATA_ROOT = (os.environ.get("GRALIGN_NOTEBOOK_DATA_ROOT", DATA_ROOT)
             or ("data/synthetic_smoke" if SIZE == "smoke" else "data/synthetic"))
RUN_DIR = (os.environ.get("GRALIGN_NOTEBOOK_RUN_DIR", RUN_DIR)
           or ("runs/notebook_smoke" if SIZE == "smoke" else "runs/notebook_demo"))
QUERY = os.environ.get("GRALIGN_NOTEBOOK_QUERY", QUERY)
print(f"WORKDIR={WORKDIR!r} SIZE={SIZE!r} DATA_ROOT={DATA_ROOT!r} RUN_DIR={RUN_DIR!r}\n"
      f"QUERY={QUERY!r} TOP_K={TOP_K}")

# %%
# %matplotlib inline
import json
import textwrap
import warnings

# tqdm.auto (imported by a dependency) warns that ipywidgets is absent: no widgets here.
warnings.filterwarnings("ignore", message="IProgress not found")

import jax
import matplotlib.pyplot as plt
import ml_collections
from absl import logging
from IPython.display import display

from experiments.configs import demo
from gralign_jax import configs, inference, paths, train
from gralign_jax import visualize as vis
from gralign_jax.data import datasets
from gralign_jax.evaluation import recall

logging.set_verbosity(logging.ERROR)  # orbax logs every checkpoint file it touches
print(f"JAX {jax.__version__}: {jax.device_count()} x {jax.devices()[0].platform}")

# %% [markdown]
# ## 1. The synthetic scenes set
#
# The demo config (`experiments/configs/demo.py`) names the embedded data set: 64 px
# images (32 px at smoke size) of 2-4 coloured shapes over a textured background with
# some grey clutter, five captions each, written in the real Flickr30K/Karpathy layouts.
# About a third of the images come in pairs that swap colours or shapes between two
# objects ("red circle + blue square" vs "blue circle + red square"), so only a model
# that binds each attribute to its object can tell them apart.
# `datasets.prepare` generates it where `DATA_ROOT` is absent or empty and reads it as it
# is otherwise. With `WORKDIR`, the run's own config is used (and its data set is
# generated again here when the run's folder is not on this machine).

# %%
if WORKDIR:
  config = ml_collections.ConfigDict(json.loads(paths.read_text(
      paths.join(WORKDIR, "config.json"))))
  if not os.path.isdir(config.data.root):
    print(f"The run's data root {config.data.root} is not here: using {DATA_ROOT}.")
    config.data.root = DATA_ROOT
else:
  config = demo.get_config("smoke" if SIZE == "smoke" else None)
  config.data.root = DATA_ROOT
  configs.finalize(config)  # the values that follow others (image size, text length)
datasets.prepare(config)
train_split = datasets.read_split(config, config.data.train_split)
test_split = datasets.read_split(config, config.data.test_split)
cpi = test_split.captions_per_image
print(f"train: {train_split.num_images} images, {train_split.num_captions} captions; "
      f"test: {test_split.num_images} images, {test_split.num_captions} captions")

fig, axes = plt.subplots(1, 4, figsize=(12, 3.6))
for i, ax in enumerate(axes):
  ax.imshow(train_split.load_image(i))
  ax.set_title(os.path.basename(train_split.image_paths[i]), fontsize=9)
  ax.set_xlabel(textwrap.fill(train_split.captions[i * cpi], 30), fontsize=8)
  ax.set_xticks([])
  ax.set_yticks([])
fig.suptitle("training images with their first caption")
plt.show()

# %% [markdown]
# ## 2. Train (or load a trained run)
#
# `train.train_and_evaluate(config, workdir)` is the whole training job of
# `python -m experiments.demo`: it trains GRM with the InfoNCE loss, evaluates on the dev
# split as it goes, keeps the best-on-dev checkpoint, tests it on the test split and
# writes `results.json`, `metrics.jsonl`, `config.json` and `checkpoints/` into the
# workdir. Run the cell again with the same `RUN_DIR` and it resumes from the latest
# checkpoint (a finished run is only evaluated again). With `WORKDIR` set, nothing is
# trained: the run's `results.json` is read.

# %%
if WORKDIR:
  workdir = WORKDIR
  results = json.loads(paths.read_text(paths.join(workdir, "results.json")))
else:
  workdir = RUN_DIR
  results = train.train_and_evaluate(config, workdir)

# %% [markdown]
# ## 3. Training curves and Recall@K
#
# From the run's `metrics.jsonl`: the training loss; the score spread (the standard
# deviation of the scores within a batch, and of the dev score matrix: near zero means
# the model has collapsed to equal scores); dev rSum at each evaluation, with the final
# test rSum of the best-on-dev state as a star; and the learning rate.

# %%
display(vis.run_curves_figure(workdir))

# %% [markdown]
# Recall@K of the best-on-dev state: i2t R@K is the percentage of images whose K
# best-scoring captions include one of their own five, t2i R@K the percentage of captions
# whose own image is among their K best-scoring images; rSum adds the six (600 at most).
# "test" is the held-out test split (1,000 images and 5,000 captions in the full demo).

# %%
print(f"best step: {results.get('best_step')}")
print(recall.format_table({k: v for k, v in results.items() if isinstance(v, dict)}))

# %% [markdown]
# ## 4. Retrieve images for a caption
#
# `inference.load_run` loads the run's config, best-on-dev parameters and tokenizer;
# `inference.gallery_split` makes a gallery of image files (here the test split's) and
# `inference.retrieve` encodes the gallery (cached under `<workdir>/galleries/`) and the
# query, and ranks every image by the model's total score (0.4 S_ori + 0.4 S_key +
# 0.2 S_unc). Under each image: its first ground-truth caption, to judge the match.

# %%
run = inference.load_run(workdir, log=lambda *a: None)
gallery = inference.gallery_split(list(test_split.image_paths))
result = inference.retrieve(run, gallery, [QUERY], k=TOP_K)
top = result["captions_to_images"][0]["top"]
position = {p: i for i, p in enumerate(test_split.image_paths)}

fig, axes = plt.subplots(1, len(top), figsize=(2.6 * len(top), 3.8), squeeze=False)
for rank, (hit, ax) in enumerate(zip(top, axes[0]), 1):
  index = position[hit["image"]]
  ax.imshow(vis.load_image(hit["image"]))
  ax.set_title(f"#{rank}  score {hit['score']:.3f}\n{os.path.basename(hit['image'])}",
               fontsize=9)
  ax.set_xlabel(textwrap.fill(test_split.captions[index * cpi], 26), fontsize=7.5)
  ax.set_xticks([])
  ax.set_yticks([])
fig.suptitle(f"top {len(top)} of {gallery.num_images} test images for: \"{QUERY}\"")
plt.show()

print("word piece -> its saliency gate and the visual token it matches best, "
      "in the top image:")
for row in result["captions_to_images"][0]["alignment"]:
  print(f"  {row['token']:>12}  gate {row['gate']:.3f}  -> {row['visual_token']:<14}"
        f" cos {row['cos']:.3f}")

# %% [markdown]
# ## 5. What the model matched in the top image
#
# The top image and the query are encoded again with every output kept
# (`visualize.encode_image`, `encode_captions`). The hard negative caption is the
# highest-scoring test caption that belongs to another image
# (`visualize.pick_negative_caption`): often a caption with the same words bound
# differently.

# %%
best_path = top[0]["image"]
best_index = position[best_path]
image = vis.encode_image(run, vis.load_image(best_path), name=os.path.basename(best_path))
own = set(range(best_index * cpi, (best_index + 1) * cpi))
same_text = {m for m, c in enumerate(test_split.captions)
             if " ".join(c.split()).lower() == " ".join(QUERY.split()).lower()}
negative, negative_score = vis.pick_negative_caption(
    run, image, list(test_split.captions), sorted(own | same_text))
query_view, negative_view = vis.encode_captions(
    run, [QUERY, test_split.captions[negative]])
pairs = [vis.make_pair(run, image, query_view, "the query and its top image"),
         vis.make_pair(run, image, negative_view, "hard negative caption")]
print(f"top image: {best_path}\n  its own captions: "
      + "\n    ".join([""] + list(test_split.captions[best_index * cpi:(best_index + 1) * cpi])))
print(f"hard negative caption (test caption {negative}, image "
      f"{os.path.basename(test_split.image_paths[negative // cpi])}): "
      f"\"{test_split.captions[negative]}\", score {negative_score:.3f}")

# %% [markdown]
# **Saliency.** Left the image, right the visual keep gate a_v of each patch (evaluation
# form: the adapter's softmax keep probability). S_key, the key-token score, weights
# each patch's best word match by its gate: bright patches are the ones the model keeps.

# %%
display(vis.saliency_figure(image))

# %% [markdown]
# **Regions.** One panel per region prompt: its soft assignment Â over the patches (each
# prompt pools the visual tokens with these weights into a region), and below, the
# region's uncertainty, the mean standard deviation σ of its Gaussian. S_unc compares
# words with samples of these uncertain regions during training and their means at
# evaluation.

# %%
display(vis.regions_figure(image))

# %% [markdown]
# **Alignment.** One row per caption: on the image, a box on the patch that each word
# piece matches best (its highest cosine, what S_ori max-pools; numbers are word
# positions); on the right each word piece's text keep gate a_t, with its best patch and
# that cosine. Above each row, the pair's total score and its three parts. For a model
# that has learnt the set, the query's colour and shape words land on the right objects
# and the hard negative scores lower.

# %%
display(vis.alignment_figure(pairs))
