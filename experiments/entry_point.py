"""The absl main every experiment entry point shares: --config, --workdir, run."""
import logging as logging_std
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def define_distributed_flags() -> dict:
  """--distributed and jax.distributed.initialize's own arguments (distributed.py)."""
  return dict(
      mode=flags.DEFINE_enum(
          "distributed", None, ["auto", "on", "off"], "Multi-process JAX: auto (where a "
          "TPU pod, SLURM job or coordinator address is found), on, off. Default "
          "$GRALIGN_DISTRIBUTED, else auto."),
      coordinator_address=flags.DEFINE_string(
          "coordinator_address", None, "HOST:PORT of process 0 (else "
          "$JAX_COORDINATOR_ADDRESS)."),
      num_processes=flags.DEFINE_integer(
          "num_processes", None, "Processes in the job (else $JAX_NUM_PROCESSES)."),
      process_id=flags.DEFINE_integer(
          "process_id", None, "This process's index, 0-based (else $JAX_PROCESS_ID)."))


def start_distributed(holders: dict) -> None:
  """jax.distributed per the flags; a setting that cannot work exits in one line."""
  from gralign_jax import distributed  # pylint: disable=g-import-not-at-top
  try:
    distributed.initialize(**{k: h.value for k, h in holders.items()})
  except distributed.DistributedError as e:
    sys.exit(f"Error: {e}")


def _exit(message: str) -> None:
  """Ends the process with `message` as its last line, at once. The run has already
  closed what it opened (pending checkpoint saves finished or given up on within
  $GRALIGN_SAVE_TIMEOUT); what is left would only wait: other JAX processes that may
  never reach jax.distributed's shutdown barrier (minutes), or orbax's signalling
  threads for a save to a store that went away (300 s, then log lines after this
  one)."""
  sys.stdout.flush()
  print(message, file=sys.stderr, flush=True)
  from gralign_jax import distributed  # pylint: disable=g-import-not-at-top
  if distributed.PeerWatch.running:
    distributed.PeerWatch.running.stopping(message)
  os._exit(1)  # pylint: disable=protected-access


def user_errors() -> tuple[type[Exception], ...]:
  """Errors about data, weights, configs, files and the workdir that name what to fix."""
  # pylint: disable=g-import-not-at-top
  from gralign_jax import checkpoint, configs, paths, run_dir, weights
  from gralign_jax.data import false_captions, images, split
  return (FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
          split.DataFormatError, false_captions.FalseCaptionError, weights.CheckpointMismatchError, images.ImageDecodeError,
          configs.ConfigError, run_dir.RunDirError, checkpoint.CheckpointError,
          paths.PathError)


class _OneLineErrors(logging_std.Filter):
  """Orbax logs each failure of a background save with its traceback (hundreds of lines
  at shutdown); the run reports that failure itself in one line, so keep the line."""

  def filter(self, record):
    if record.exc_info and "orbax" in record.pathname:
      record.exc_info, record.exc_text = None, None
    return True


def unknown_key_message(e: Exception) -> str:
  """ml_collections' KeyError/AttributeError for an unknown --config.<key> -> one line."""
  while e.args and isinstance(e.args[0], Exception):  # AttributeError(KeyError(...))
    e = e.args[0]
  text = e.args[0] if e.args and isinstance(e.args[0], str) else str(e)
  name, _, hint = text.partition("\n")
  name = name.strip().strip("\"'")
  bad = [a.split("=")[0] for a in sys.argv[1:]
         if a.startswith("--config.") and name in a.split("=")[0].split(".")]
  hint = f" {hint.strip()}" if hint.strip() else ""
  return (f"Unknown config key {name!r} in {', '.join(bad) or 'the overrides'}: the "
          f"config has no such field.{hint}")


def run(default_config: str | None, default_workdir: str | None) -> None:
  """Defines the flags and runs train_and_evaluate(config, workdir)."""
  started = []
  try:
    _run(default_config, default_workdir, started)
  except (AttributeError, KeyError) as e:
    if started:  # raised by the run itself, not by flag parsing: not ours to reword
      raise
    sys.exit(unknown_key_message(e))


def config_value(holder):
  """--config's ConfigDict, or one Error line and an exit: no --config, a file that
  does not exist or does not load (ml_collections reads it only now, with a traceback)."""
  try:
    config = holder.value
    if config is not None:
      config.to_dict()  # one that failed to load stands in and raises only when used
  except OSError as e:
    given = [a.split("=", 1)[1] for a in sys.argv[1:] if a.startswith("--config=")]
    lines = [l.strip() for l in str(e).splitlines() if l.strip()]
    sys.exit(f"Error: --config={given[-1] if given else '?'} cannot be loaded "
             f"({lines[-1] if lines else e}); expected a config file such as "
             "experiments/configs/flickr30k.py, with an optional :ARGUMENT.")
  if config is None:
    sys.exit("Error: --config is required, e.g. --config=experiments/configs/flickr30k.py")
  return config


def _run(default_config, default_workdir, started: list) -> None:
  config_flag = config_flags.DEFINE_config_file(
      "config", default_config and os.path.join(CONFIG_DIR, default_config),
      "Config file, optionally with an argument: path/to/config.py:smoke", lock_config=True)
  workdir_flag = flags.DEFINE_string(
      "workdir", default_workdir, "Run directory: config.json, metrics.jsonl, "
      "checkpoints/, results.json. Running again with the same workdir resumes.")
  allow_flag = flags.DEFINE_bool(
      "allow_config_changes", False, "Resume even though the config differs from the "
      "saved one in keys that leave the checkpoints meaningful (eval.*, logging, "
      "workers, training length, data.root); they are logged in config_changes.jsonl.")
  distributed_flags = define_distributed_flags()

  def main(argv):
    del argv
    logging.set_verbosity(logging.WARNING)  # orbax logs every file it renames at INFO
    logging.get_absl_handler().addFilter(_OneLineErrors())
    config = config_value(config_flag)
    if not workdir_flag.value:
      sys.exit("--workdir is required: where checkpoints and results go.")
    start_distributed(distributed_flags)  # before anything touches a JAX backend
    from gralign_jax import train  # after flag parsing: jax reads XLA_FLAGS at import
    from gralign_jax import preemption  # pylint: disable=g-import-not-at-top
    try:
      train.train_and_evaluate(config, workdir_flag.value,
                               allow_config_changes=allow_flag.value)
    except user_errors() as e:
      # Something about the user's files or settings, said in full by the message
      # itself; a traceback would only bury it. Bugs still raise with one.
      _exit(f"Error: {e}")
    except preemption.Preempted as e:  # saved; every process stops at the same step
      sys.stdout.flush()
      print(e, file=sys.stderr, flush=True)
      sys.exit(preemption.EXIT_CODE)

  def guarded_main(argv):
    started.append(True)
    main(argv)

  app.run(guarded_main)
