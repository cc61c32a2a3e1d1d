"""The flags and checks of a command over a trained run (experiments.evaluate,
experiments.probe): --workdir, --split, --out, --checkpoint, and --config.<key>=value
over the run's saved config.

  command = run_command.define("experiments.probe", split_help="The split to probe.")
  def run(argv):
    try:
      config, changes = command.config()   # checked overrides, paths resolved, --out
    except entry_point.user_errors() as e:
      sys.exit(f"Error: {e}")
    ...
    command.write_out(result)              # --out, marked as this command's
"""
import dataclasses
import json
import os
import sys

from absl import flags
import ml_collections
from ml_collections import config_flags

from experiments import entry_point


def workdir_from_argv(argv: list[str]) -> str | None:
  """--workdir's value, read before the flags are parsed: the run's config is the
  default that --config.<key> overrides."""
  for i, arg in enumerate(argv):
    if arg.startswith("--workdir="):
      return arg.split("=", 1)[1]
    if arg == "--workdir" and i + 1 < len(argv):
      return argv[i + 1]
  return None


@dataclasses.dataclass
class RunCommand:
  """A command's view of the run it reads: its workdir, saved config and flags."""
  name: str
  workdir: str
  saved: dict
  split: flags.FlagHolder
  out: flags.FlagHolder
  checkpoint: flags.FlagHolder
  config_flag: flags.FlagHolder

  @property
  def written_by(self) -> str:
    return f"gralign_jax {self.name}"

  def config(self) -> tuple[ml_collections.ConfigDict, dict]:
    """The run's config with --config's changes -> (config, {key: (saved, new)}).
    Raises a user error for a change that would make the checkpoint meaningless
    (evaluate_split.check_overrides) or an --out that is not this command's to write."""
    # pylint: disable=g-import-not-at-top
    from gralign_jax.inference import evaluate as evaluate_split
    from gralign_jax import run_dir
    # pylint: enable=g-import-not-at-top
    config = self.config_flag.value
    changes = evaluate_split.check_overrides(self.saved, config)
    run_dir.resolve_paths(config)
    if self.out.value:
      self.check_out(self.out.value)
    return config, changes

  def check_out(self, path: str) -> None:
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
        mine = json.load(f).get("written_by") == self.written_by
    except (OSError, ValueError, AttributeError):
      mine = False
    if not mine:
      raise FileExistsError(f"--out={path!r} exists and was not written by "
                            f"{self.name}; it is left as it is: choose another --out.")

  def write_out(self, result: dict) -> None:
    """result as JSON to --out (when given), marked as written by this command."""
    from gralign_jax import paths  # pylint: disable=g-import-not-at-top
    if self.out.value:
      result["written_by"] = self.written_by
      paths.write_text(self.out.value, json.dumps(result, indent=2) + "\n")
      print(f"Wrote {self.out.value}")


def define(name: str, split_help: str) -> RunCommand:
  """Reads --workdir from the command line, loads the run's saved config and defines
  the flags over it. Exits with one Error line for a missing or unreadable run or an
  unknown --config.<key>."""
  workdir = workdir_from_argv(sys.argv[1:])
  if not workdir:
    sys.exit("Error: --workdir is required: the run directory of a training run.")
  from gralign_jax.inference import evaluate as evaluate_split  # pylint: disable=g-import-not-at-top
  try:
    saved = evaluate_split.saved_config(workdir)
  except entry_point.user_errors() as e:
    sys.exit(f"Error: {e}")
  flags.DEFINE_string("workdir", None, "Run directory of a training run.")
  split = flags.DEFINE_string("split", "test", split_help)
  out = flags.DEFINE_string("out", None, "JSON output file (optional).")
  checkpoint = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                 "The best-on-dev checkpoint or the last one.")
  try:  # ml_collections applies --config.<key>=v here, at definition
    config_flag = config_flags.DEFINE_config_dict(
        "config", ml_collections.ConfigDict(saved), "The run's config; --config.<key>=v"
        " changes where the data come from and how the evaluation runs.")
  except (AttributeError, KeyError) as e:  # an unknown --config.<key>
    sys.exit(entry_point.unknown_key_message(e))
  return RunCommand(name, workdir, saved, split, out, checkpoint, config_flag)
