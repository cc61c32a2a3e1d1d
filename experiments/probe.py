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
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import entry_point
from experiments import run_command


def main() -> None:
  command = run_command.define("experiments.probe", split_help="The split to probe.")
  seed_flag = flags.DEFINE_integer("seed", 0, "Seed of the perturbations' draws.")

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    # pylint: disable=g-import-not-at-top
    from gralign_jax import inference, logs, paths
    from gralign_jax.data import datasets
    from gralign_jax.evaluation import probe
    # pylint: enable=g-import-not-at-top
    try:
      config, changes = command.config()
      loaded = inference.load_run(command.workdir, command.checkpoint.value,
                                  config=config)
      split = datasets.read_split(loaded.config, command.split.value)
      result = probe.run(loaded.evaluator, loaded.params, loaded.config,
                         loaded.tokenizer, split, seed=seed_flag.value)
    except entry_point.user_errors() as e:
      sys.exit(f"Error: {e}")
    result.update(workdir=command.workdir, step=loaded.step,
                  checkpoint=command.checkpoint.value,
                  data_root=loaded.config.data.root,
                  config_changes={k: list(v) for k, v in changes.items()})
    print(probe.format_table(result))
    beside = paths.join(command.workdir, f"probe_{command.split.value}.json")
    out = command.out.value
    if changes:  # the run's record describes its own data and settings only
      logs.info(f"Not written to {beside}: --config changed {', '.join(changes)}"
                + (", so only --out gets it." if out else "; give --out=FILE to keep it."))
    else:
      try:
        paths.write_text(beside, json.dumps(result, indent=2) + "\n")
        print(f"Wrote {beside}")
      except OSError as e:  # a read-only run: --out still gets it
        logs.info(f"{command.workdir} is not writable ({e.strerror or e}); the report is "
                  "not kept beside the run" + (", only in --out." if out else
                                               ": give --out=FILE to keep it."))
    command.write_out(result)

  app.run(run)


if __name__ == "__main__":
  main()
