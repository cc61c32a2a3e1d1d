"""Every experiment config builds, under :smoke and with each ablation variant."""
import glob
import importlib.util
import os

import ml_collections
import pytest

from experiments.configs import common
from gralign_jax import configs
from gralign_jax.models import grm

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "experiments",
                          "configs")
# Every experiment config file; common.py is what they share, not a config.
CONFIG_FILES = sorted(p for p in glob.glob(os.path.join(CONFIG_DIR, "*.py"))
                      if os.path.basename(p) not in ("__init__.py", "common.py"))


def load(path):
  spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIG_FILES, ids=os.path.basename)
@pytest.mark.parametrize("arg", ["", "smoke"] + [f"smoke,{v}" for v in common.VARIANTS])
def test_config_builds(path, arg):
  config = load(path).get_config(arg)
  assert isinstance(config, ml_collections.ConfigDict)
  configs.finalize(config, vocab_size=100)
  grm.build_model(config.model)  # the model accepts every variant
  if "smoke" in arg:
    assert config.train.num_steps > 0 and config.train.batch_size <= 16


def test_unknown_argument_and_key_are_errors():
  with pytest.raises(ValueError, match="nonsense"):
    common.parse_arg("smoke,nonsense")
  with pytest.raises(ValueError, match="two backbones"):
    common.parse_arg("vit224,swin384", backbones=True)
  with pytest.raises(ValueError, match="vit224"):  # a backbone only where one is taken
    common.parse_arg("vit224")
  config = configs.base_config()
  config.lock()
  with pytest.raises(AttributeError):
    config.train.not_a_field = 1


@pytest.mark.parametrize("override,message", [
    ("--config.train.not_a_field=3",
     "Unknown config key 'not_a_field' in --config.train.not_a_field: the config has no "
     "such field."),
    # ml_collections' own message holds quotes and a newline; none may leak escaped.
    ("--config.train.batchsize=3",
     "Unknown config key 'batchsize' in --config.train.batchsize: the config has no such "
     'field. Did you mean "batch_size" instead of "batchsize"?'),
])
def test_unknown_override_on_the_command_line_is_one_plain_line(tmp_path, override,
                                                                 message):
  import subprocess
  import sys
  repo = os.path.dirname(CONFIG_DIR.rsplit(os.sep, 1)[0])
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.demo", f"--workdir={tmp_path}", override],
      cwd=repo, capture_output=True, text=True)
  assert proc.returncode != 0
  assert proc.stderr.strip() == message


def test_a_missing_file_is_one_line_on_the_command_line_not_a_traceback(tmp_path):
  import subprocess
  import sys
  repo = os.path.dirname(CONFIG_DIR.rsplit(os.sep, 1)[0])
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.flickr30k",
       "--config=experiments/configs/flickr30k.py:smoke", f"--workdir={tmp_path / 'w'}",
       f"--config.data.root={tmp_path / 'no_such_folder'}"],
      cwd=repo, capture_output=True, text=True)
  assert proc.returncode != 0
  assert "Traceback" not in proc.stderr
  assert f"Error: config.data.root={str(tmp_path / 'no_such_folder')!r} does not exist" in (
      proc.stderr)


def test_finalize_derives_what_must_agree_and_refuses_a_second_hand_set_value():
  config = common.paper_config("coco", "vit384")
  assert config.model.text.max_len == 0  # the preset leaves it to data.max_len
  configs.finalize(config, vocab_size=30522)
  assert config.data.image_size == config.model.vision.image_size == 384
  assert config.model.text.max_len == config.data.max_len == 90
  assert config.model.text.vocab_size == 30522
  again = configs.finalize(ml_collections.ConfigDict(config.to_dict()), vocab_size=7)
  assert again.to_dict() == config.to_dict()  # idempotent; a set vocabulary stays

  butd = configs.finalize(common.paper_config("flickr30k", "butd_bigru,smoke"))
  assert tuple(butd.data.feature_shape) == (6, 64)  # the smoke BUTD sizes

  # One field is set, the other follows; set both to disagree and it is an error.
  config = common.paper_config("coco", "vit224")
  config.model.vision.image_size = 384
  assert configs.finalize(config).data.image_size == 384
  config = common.paper_config("coco", "vit224")
  config.data.image_size = 384
  with pytest.raises(configs.ConfigError,
                     match=r"config.data.image_size=384: it follows "
                           r"model.vision.image_size \(224\); set "
                           r"model.vision.image_size instead"):
    configs.finalize(config)


def test_a_backbone_name_is_checked_against_the_registry():
  config = common.paper_config("coco", "vit224")
  config.model.vision.name = "resnet"
  with pytest.raises(configs.ConfigError,
                     match=r"config.model.vision.name='resnet': expected one of 'vit', "
                           r"'swin', 'butd'"):
    configs.finalize(config)
