"""A trained run's best checkpoint on any split of any data set in a supported format.

  python -m experiments.evaluate --workdir=runs/f8k --split=dev
  python -m experiments.evaluate --workdir=runs/f8k --config.data.root=/data/flickr8k \
      --split=test --out=f8k_test.json
  python -m experiments.evaluate --workdir=runs/coco --config.data.root=/data/coco \
      --config.eval.protocol=coco --split=test      # COCO 5K and 1K x 5

Prints the R@K table and, with --out, writes JSON with the keys of results.json's split
entries (i2t_r1 ... rsum) under the split's name, the checkpoint's step and the data it
read. --config.<key>=value changes the run's saved config where that leaves the
checkpoint meaningful (the data's root, layout, folders and splits, eval.*); a change
to the model, the pixels or the tokenizer is refused, naming the keys
(gralign_jax/evaluation/evaluate_split.py). --out never replaces a file this command did not
write.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import main_lib

_WRITTEN_BY = "gralign_jax experiments.evaluate"


def _workdir_from_argv(argv: list[str]) -> str | None:
  """--workdir's value, read before the flags are parsed: the run's config is the
  default that --config.<key> overrides."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _check_out(path: str) -> None:
  """--out may be a new file or one this command wrote; anything else stays as it is."""
  if os.path.isdir(path):
    raise FileExistsError(f"--out={path!r} is a folder; expected a JSON file path.")
  if not os.path.exists(path):
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
      raise FileNotFoundError(f"--out={path!r}: its folder {parent} does not exist.")
    return
  try:
    with open(path, encoding="utf-8") as f:
      mine = json.load(f).get("written_by") == _WRITTEN_BY
  except (OSError, ValueError, AttributeError):
    mine = False
  if not mine:
    raise FileExistsError(f"--out={path!r} exists and was not written by "
                          "experiments.evaluate; it is left as it is: choose another "
                          "--out.")


def main() -> None:
  workdir = _workdir_from_argv(sys.argv[1:])
  if not workdir:
    sys.exit("Error: --workdir is required: the run directory of a training run.")
  from gralign_jax import evaluate_split  # pylint: disable=g-import-not-at-top
  try:
    saved = evaluate_split.saved_config(workdir)
  except main_lib.user_errors() as e:
    sys.exit(f"Error: {e}")
  flags.DEFINE_string("workdir", None, "Run directory of a training run.")
  split_flag = flags.DEFINE_string("split", "test", "The split to evaluate (train, dev, "
                                   "test, or any split the data layout names).")
  out_flag = flags.DEFINE_string("out", None, "JSON output file (optional).")
  which_flag = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                 "The best-on-dev checkpoint or the last one.")
  try:  # ml_collections applies --config.<key>=v here, at definition
    config_flag = config_flags.DEFINE_config_dict(
        "config", ml_collections.ConfigDict(saved), "The run's config; --config.<key>=v"
        " changes where the data come from and how the evaluation runs.")
  except (AttributeError, KeyError) as e:  # an unknown --config.<key>
    sys.exit(main_lib.unknown_key_message(e))

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from gralign_jax import paths  # pylint: disable=g-import-not-at-top
    from gralign_jax import run_dir  # pylint: disable=g-import-not-at-top
    try:
      config = config_flag.value
      changes = evaluate_split.check_overrides(saved, config)
      run_dir.resolve_paths(config)
      if out_flag.value:
        _check_out(out_flag.value)
      result = evaluate_split.evaluate_run(workdir, config, split_flag.value,
                                     which=which_flag.value)
    except main_lib.user_errors() as e:
      sys.exit(f"Error: {e}")
    result["config_changes"] = {k: list(v) for k, v in changes.items()}
    print(evaluate_split.table(result))
    if out_flag.value:
      result["written_by"] = _WRITTEN_BY
      paths.write_text(out_flag.value, json.dumps(result, indent=2) + "\n")
      print(f"Wrote {out_flag.value}")

  app.run(run)


if __name__ == "__main__":
  main()
