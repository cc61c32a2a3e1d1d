"""The compositional probe of a trained run: true captions against captions made false.

  python -m experiments.probe --workdir=runs/demo
  python -m experiments.probe --workdir=runs/f8k --config.data.root=/data/flickr8k \
      --split=dev --out=f8k_probe.json

For every caption of the split, the perturbations that are false for its image (the
synthetic set: shape, colour, size, binding, relation, order, checked against its scene
record, which is written when missing; real captions: order and, with spaCy, noun-phrase
and adjective swaps) are scored with the run's best checkpoint. Prints the accuracy per
kind with n, per score part (S_ori, S_key, S_unc) and the text gates per word class
(gralign_jax/evaluation/probe.py), and writes the report to <workdir>/probe_<split>.json
(only when no --config value changed: the run's files describe its own data) and,
with --out, there too. --config.<key>=value changes the run's saved config as
experiments.evaluate allows (the data's root, layout and splits, eval.*). --out never
replaces a file this command did not write.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from experiments import evaluate
from experiments import main_lib

_WRITTEN_BY = "gralign_jax experiments.probe"


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
                          "experiments.probe; it is left as it is: choose another --out.")


def main() -> None:
  workdir = evaluate._workdir_from_argv(sys.argv[1:])  # pylint: disable=protected-access
  if not workdir:
    sys.exit("Error: --workdir is required: the run directory of a training run.")
  from gralign_jax import evaluate_split  # pylint: disable=g-import-not-at-top
  try:
    saved = evaluate_split.saved_config(workdir)
  except main_lib.user_errors() as e:
    sys.exit(f"Error: {e}")
  flags.DEFINE_string("workdir", None, "Run directory of a training run.")
  split_flag = flags.DEFINE_string("split", "test", "The split to probe.")
  out_flag = flags.DEFINE_string("out", None, "JSON output file (optional).")
  which_flag = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                 "The best-on-dev checkpoint or the last one.")
  seed_flag = flags.DEFINE_integer("seed", 0, "Seed of the perturbations' draws.")
  try:  # ml_collections applies --config.<key>=v here, at definition
    config_flag = config_flags.DEFINE_config_dict(
        "config", ml_collections.ConfigDict(saved), "The run's config; --config.<key>=v"
        " changes where the data come from and how the evaluation runs.")
  except (AttributeError, KeyError) as e:  # an unknown --config.<key>
    sys.exit(main_lib.unknown_key_message(e))

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    # pylint: disable=g-import-not-at-top
    from gralign_jax import logs, paths, retrieval, run_dir
    from gralign_jax.data import datasets
    from gralign_jax.evaluation import probe
    # pylint: enable=g-import-not-at-top
    try:
      config = config_flag.value
      changes = evaluate_split.check_overrides(saved, config)
      run_dir.resolve_paths(config)
      if out_flag.value:
        _check_out(out_flag.value)
      loaded = retrieval.load_run(workdir, which_flag.value, config=config)
      split = datasets.read_split(loaded.config, split_flag.value)
      result = probe.run(loaded.evaluator, loaded.params, loaded.config,
                         loaded.tokenizer, split, seed=seed_flag.value)
    except main_lib.user_errors() as e:
      sys.exit(f"Error: {e}")
    result.update(workdir=workdir, step=loaded.step, checkpoint=which_flag.value,
                  data_root=loaded.config.data.root,
                  config_changes={k: list(v) for k, v in changes.items()},
                  written_by=_WRITTEN_BY)
    print(probe.format_table(result))
    text = json.dumps(result, indent=2) + "\n"
    beside = paths.join(workdir, f"probe_{split_flag.value}.json")
    if changes:  # the run's record describes its own data and settings only
      logs.info(f"Not written to {beside}: --config changed {', '.join(changes)}"
                + (", so only --out gets it." if out_flag.value else
                   "; give --out=FILE to keep it."))
    else:
      try:
        paths.write_text(beside, text)
        print(f"Wrote {beside}")
      except OSError as e:  # a read-only run: --out still gets it
        logs.info(f"{workdir} is not writable ({e.strerror or e}); the report is not "
                  "kept beside the run" + (", only in --out." if out_flag.value else
                                           ": give --out=FILE to keep it."))
    if out_flag.value:
      paths.write_text(out_flag.value, text)
      print(f"Wrote {out_flag.value}")

  app.run(run)


if __name__ == "__main__":
  main()
