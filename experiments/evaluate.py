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
(gralign_jax/inference/evaluate.py). --out never replaces a file this command did not
write.
"""
import sys

from absl import app
from absl import logging

from experiments import entry_point
from experiments import run_command


def main() -> None:
  command = run_command.define("experiments.evaluate", split_help=(
      "The split to evaluate (train, dev, test, or any split the data layout names)."))

  def run(argv):
    del argv
    logging.set_verbosity(logging.WARNING)
    from gralign_jax.inference import evaluate as evaluate_split  # pylint: disable=g-import-not-at-top
    try:
      config, changes = command.config()
      result = evaluate_split.evaluate_run(command.workdir, config, command.split.value,
                                           which=command.checkpoint.value)
    except entry_point.user_errors() as e:
      sys.exit(f"Error: {e}")
    result["config_changes"] = {k: list(v) for k, v in changes.items()}
    print(evaluate_split.table(result))
    command.write_out(result)

  app.run(run)


if __name__ == "__main__":
  main()
