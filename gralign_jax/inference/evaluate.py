"""A trained run's best checkpoint on any split of any data set: the R@K of
`python -m experiments.evaluate`.

  result = evaluate_run("runs/f8k", {"data.root": "/data/flickr8k"}, split="test")

The run's saved config.json says how its model reads images and text; the overrides
may change only where the data come from and how the evaluation runs (EVAL_SAFE):
another root, layout, image folder or split, the COCO protocol, block sizes. A change
to anything that decides what the parameters mean (the model, the pixels' size and
normalisation, the tokenizer, the caption length) is refused, naming each key, before
anything is loaded: the recall figures would describe a model that was never trained.

The result has the keys of results.json's split entries (i2t_r1 ... rsum) under the
split's name ("<split>_1k" and "<split>_5k" for the COCO protocol), with the step of the
checkpoint and where the data came from.
"""
import json
import time

import ml_collections

from gralign_jax import configs
from gralign_jax import logs
from gralign_jax import paths
from gralign_jax import run_dir
from gralign_jax.data import datasets
from gralign_jax.data import pipeline
from gralign_jax.evaluation import recall
from gralign_jax.inference import run as run_lib

# Dotted keys (a trailing "." covers a group) that an evaluation may change.
EVAL_SAFE = (
    "eval.", "data.root", "data.format", "data.image_dir", "data.karpathy_json",
    "data.tfds_name", "data.name", "data.train_split", "data.dev_split",
    "data.test_split", "data.skip_bad_images", "data.check_images", "data.num_workers",
    "data.num_threads", "data.prefetch", "data.synthetic.",
)


def _safe(key: str) -> bool:
  return any(key == s or (s.endswith(".") and key.startswith(s)) for s in EVAL_SAFE)


def saved_config(workdir: str) -> dict:
  """The run's config.json, as a nested dict (keys it predates filled in)."""
  path = paths.join(workdir, "config.json")
  if not paths.isfile(path):
    raise FileNotFoundError(f"{path} does not exist: expected the run directory of a "
                            "training run (its --workdir).")
  try:
    saved = json.loads(paths.read_text(path))
  except ValueError as e:
    raise run_dir.RunDirError(f"{path} is not valid JSON ({e}); it is the run's record "
                              "of its config: restore it.") from e
  return configs.fill_added_keys(saved)


def check_overrides(saved: dict, config: ml_collections.ConfigDict) -> dict:
  """-> {key: (saved, new)} of the accepted changes; raises ConfigError naming every
  change that would make the checkpoint meaningless."""
  changes = run_dir.config_changes(saved, json.loads(config.to_json_best_effort()))
  refused = {k: v for k, v in changes.items() if not _safe(k)}
  if refused:
    listed = "; ".join(f"{k}: {json.dumps(a)} -> {json.dumps(b)}"
                       for k, (a, b) in refused.items())
    raise configs.ConfigError(
        f"{len(refused)} config change(s) would evaluate a model other than the one "
        f"trained: {listed}. An evaluation may change only where the data come from "
        f"and how the scoring runs ({', '.join(EVAL_SAFE)}).")
  return changes


def evaluate_run(workdir: str, config: ml_collections.ConfigDict, split: str,
                 which: str = "best", log: logs.Log = logs.info) -> dict:
  """The run's checkpoint (`which`: "best" or "latest") on `split` of config's data.

  config: the run's saved config with check_overrides-approved changes.
  -> {"<split>": metrics} (COCO protocol: "<split>_1k", "<split>_5k"), plus "step",
  "split", "data_root", "data_format", "workdir" and "seconds".
  """
  t0 = time.time()
  run = run_lib.load_run(workdir, which, log, config=config)
  data = run.config.data
  read = datasets.read_split(run.config, split)
  datasets.check_images(run.config, {split: read}, log)
  captions = pipeline.encode_captions(read.captions, run.tokenizer, data.max_len)
  log(f"Evaluating {workdir} (step {run.step}) on split {split!r} of {data.root} "
      f"({data.format}): {read.num_images} images, {read.num_captions} captions"
      f" ({captions.num_truncated} truncated to {data.max_len} tokens)")
  metrics = run.evaluator.evaluate_as(run.params, read, captions, split)
  return dict(metrics, step=run.step, split=split, data_root=data.root,
              data_format=data.format, workdir=workdir,
              seconds=round(time.time() - t0, 1))


def table(result: dict) -> str:
  """The R@K table of an evaluate_run result."""
  return recall.format_table({k: v for k, v in result.items()
                              if isinstance(v, dict) and "rsum" in v})
