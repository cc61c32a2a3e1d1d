"""A trained run, loaded for use without the trainer: its config, best-on-dev (or last)
parameters, tokenizer and an evaluator to encode with. No optimiser is built and no
optimiser state is read: the parameters are restored alone (train_state.abstract_params).

  run = load_run("runs/demo")          # or "gs://bucket/runs/demo", which="latest"
"""
import dataclasses
import json

import ml_collections

from gralign_jax import checkpoint as ckpt_lib
from gralign_jax import configs
from gralign_jax import logs
from gralign_jax import paths
from gralign_jax import run_dir
from gralign_jax import sharding
from gralign_jax import train_state
from gralign_jax.data import datasets
from gralign_jax.data import text
from gralign_jax.evaluation import evaluator as evaluator_lib
from gralign_jax.models import grm


@dataclasses.dataclass
class Run:
  """A trained run, ready to encode: its config, model, params and tokenizer."""
  workdir: str
  config: ml_collections.ConfigDict
  params: dict
  step: int
  evaluator: evaluator_lib.Evaluator
  tokenizer: object


def load_run(workdir: str, which: str = "best", log: logs.Log = logs.info,
             config: ml_collections.ConfigDict | None = None) -> Run:
  """The run in `workdir`: its best-on-dev checkpoint ("best", or the last when no
  best was saved) or its last ("latest").

  config: the run's saved config with changes that leave its parameters meaningful
  (inference/evaluate.py checks them); default: config.json as saved.
  Only reads: a run on read-only storage loads as well.

  Raises:
    FileNotFoundError: no config.json, or no checkpoint yet.
    paths.PathError: a mistyped URL, no gcsfs for gs://, no such bucket.
  """
  workdir = paths.resolve(workdir)
  paths.check_bucket(workdir)
  if config is None:
    path = paths.join(workdir, "config.json")
    if not paths.isfile(path):
      raise FileNotFoundError(f"{path} does not exist: expected the run directory of a "
                              "training run (python -m experiments.demo --workdir=...).")
    config = ml_collections.ConfigDict(
        configs.fill_added_keys(json.loads(paths.read_text(path))))
  model = grm.build_model(config.model)
  mesh = sharding.make_mesh()
  like = train_state.abstract_params(model, config, mesh)
  # read_only: orbax creates no folder and moves no damaged step aside.
  checkpointer = ckpt_lib.Checkpointer(paths.join(workdir, "checkpoints"),
                                       read_only=True)
  try:
    restored = checkpointer.restore_params(like, which, log=log)
  finally:
    checkpointer.close()
  if restored is None:
    raise FileNotFoundError(f"No checkpoint under {workdir}/checkpoints: the run has "
                            "not saved one yet.")
  evaluator = evaluator_lib.Evaluator(model, config, mesh)
  return Run(workdir, config, restored.state["params"], int(restored.step), evaluator,
             _run_tokenizer(workdir, config))


def _run_tokenizer(workdir: str, config: ml_collections.ConfigDict):
  """The tokenizer the run saved in its workdir; the one its config names for runs
  that predate that (then the data set must still be where the run saw it)."""
  saved = paths.join(workdir, run_dir.TOKENIZER_DIR)
  if paths.isdir(saved):
    with paths.local_folder(saved) as local:
      return text.load_tokenizer(local)
  try:
    return datasets.load_tokenizer(config)
  except FileNotFoundError as e:
    raise FileNotFoundError(
        f"{workdir} holds no tokenizer/ (it was trained before runs kept theirs) and the "
        f"one its config names cannot be loaded: {e} Copy that tokenizer folder to "
        f"{saved}.") from e
