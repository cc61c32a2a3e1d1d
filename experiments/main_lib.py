"""The absl main every experiment entry point shares: --config, --workdir, run."""
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def user_errors() -> tuple[type[Exception], ...]:
  """Errors about data, weights and files that name what to fix."""
  from gralign_jax import weights  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import images, split  # pylint: disable=g-import-not-at-top
  return (FileNotFoundError, split.DataFormatError, weights.CheckpointMismatchError,
          images.ImageDecodeError)


def run(default_config: str | None, default_workdir: str | None) -> None:
  """Defines the flags and runs train_and_evaluate(config, workdir)."""
  started = []
  try:
    _run(default_config, default_workdir, started)
  except (AttributeError, KeyError) as e:
    if started:  # raised by the run itself, not by flag parsing: not ours to reword
      raise
    name = str(e).strip("\"'")
    bad = [a.split("=")[0] for a in sys.argv[1:]
           if a.startswith("--config.") and name in a.split("=")[0].split(".")]
    sys.exit(f"Unknown config key {name!r} in {bad or 'the overrides'}: the config has "
             "no such field (gralign_jax/configs.py lists them all).")


def _run(default_config, default_workdir, started: list) -> None:
  config_flag = config_flags.DEFINE_config_file(
      "config", default_config and os.path.join(CONFIG_DIR, default_config),
      "Config file, optionally with an argument: path/to/config.py:smoke", lock_config=True)
  workdir_flag = flags.DEFINE_string(
      "workdir", default_workdir, "Run directory: config.json, metrics.jsonl, "
      "checkpoints/, results.json. Running again with the same workdir resumes.")

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
    if config_flag.value is None:
      sys.exit("--config is required, e.g. --config=experiments/configs/flickr30k.py")
    if not workdir_flag.value:
      sys.exit("--workdir is required: where checkpoints and results go.")
    from gralign_jax import train  # after flag parsing: jax reads XLA_FLAGS at import
    try:
      train.train_and_evaluate(config_flag.value, workdir_flag.value)
    except user_errors() as e:
      # Something about the user's files or settings, said in full by the message
      # itself; a traceback would only bury it. Bugs still raise with one.
      sys.exit(f"Error: {e}")

  def guarded_main(argv):
    started.append(True)
    main(argv)

  app.run(guarded_main)
