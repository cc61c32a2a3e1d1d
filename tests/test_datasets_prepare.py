"""Tests of datasets.prepare: it generates the synthetic set only into a folder that is
absent or empty, reads any other folder as it is, and says why a root is unusable."""
import os
import shutil

import pytest

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax.data import datasets
from gralign_jax.data import synthetic as ss
from gralign_jax.data.synthetic import layout

TINY = dict(num_train=4, num_dev=1, num_test=1)


def _config(root, generate=True):
  config = demo.get_config("smoke")  # 32 px images
  config.data.root = str(root)
  config.data.synthetic.update(generate=generate, **TINY)
  return configs.finalize(config)


def test_an_unfinalized_config_is_refused_before_anything_is_written(tmp_path):
  config = demo.get_config("smoke")  # its data.image_size is still the schema's 64
  config.data.root = str(tmp_path / "data")
  with pytest.raises(configs.ConfigError, match="datasets.prepare needs a finalized"):
    datasets.prepare(config, log=lambda *a: None)
  assert os.listdir(tmp_path) == []


def _files(root):
  out = {}
  for d, _, names in os.walk(root):
    for n in names:
      with open(os.path.join(d, n), "rb") as f:
        out[os.path.relpath(os.path.join(d, n), root)] = f.read()
  return out


@pytest.fixture(scope="module")
def ref(tmp_path_factory):
  """The set prepare generates for _config: the bytes to compare with."""
  r = tmp_path_factory.mktemp("ref") / "set"
  syn = _config(r).data.synthetic
  ss.generate(str(r), image_size=32, seed=syn.seed, vocab_size=syn.vocab_size, **TINY)
  return r


@pytest.mark.parametrize("content", ["copied_synthetic_set", "users_own_set"])
def test_folder_with_data_is_read_as_it_is(ref, tmp_path, content):
  # The README recipe: the demo config pointed at a folder of the user's.
  mine = tmp_path / "mine"
  shutil.copytree(ref, mine)
  (mine / ss.MARKER).unlink()  # `cp -r set/* mine/` leaves the hidden marker behind
  (mine / "images" / "holiday.jpg").write_bytes(b"\xff\xd8 a user's photo")
  if content == "users_own_set":  # the LAPS layout only, nothing of the synthetic set's
    for name in ("dataset_synthetic.json", "scenes.json"):
      (mine / name).unlink()
  before = _files(mine)
  logged = []
  datasets.prepare(_config(mine), log=logged.append)
  assert _files(mine) == before
  assert len(logged) == 1 and "reading it as it is" in logged[0], logged
  assert len(datasets.read_split(_config(mine), "train").image_paths) == 4


def test_interrupted_prepare_then_prepare_again(ref, tmp_path, monkeypatch):
  root = tmp_path / "data"
  root.mkdir()  # an empty folder is a place to generate

  def ctrl_c(*args):
    raise KeyboardInterrupt

  monkeypatch.setattr(layout, "render", ctrl_c)  # what write_set calls
  with pytest.raises(KeyboardInterrupt):
    datasets.prepare(_config(root), log=lambda *a: None)
  assert os.listdir(root) == [] and os.listdir(tmp_path) == ["data"]
  monkeypatch.undo()
  logged = []
  datasets.prepare(_config(root), log=logged.append)
  assert logged and logged[0].startswith("Generating")
  assert _files(root) == _files(ref)
  # A complete set is used as it is: nothing generated, nothing logged.
  logged.clear()
  datasets.prepare(_config(root), log=logged.append)
  assert logged == [] and _files(root) == _files(ref)


@pytest.mark.parametrize("generate", [True, False])
def test_root_that_is_a_file(tmp_path, generate):
  path = tmp_path / "data"
  path.write_text("the user's")
  with pytest.raises(NotADirectoryError,
                     match=r"config\.data\.root='[^']*data' is a file; expected a "):
    datasets.prepare(_config(path, generate), log=lambda *a: None)
  assert path.read_text() == "the user's"


@pytest.mark.parametrize("generate", [True, False])
def test_unreadable_root(tmp_path, monkeypatch, generate):
  root = tmp_path / "data"
  root.mkdir()
  (root / "photo.jpg").write_bytes(b"\xff\xd8")
  # chmod cannot lock out root (tests may run as root): listing the folder is refused.
  real_listdir = os.listdir

  def listdir(path="."):
    if os.path.abspath(path) == str(root):
      raise PermissionError(13, "Permission denied", str(path))
    return real_listdir(path)

  monkeypatch.setattr(os, "listdir", listdir)
  with pytest.raises(PermissionError,
                     match=r"config\.data\.root='[^']*data' cannot be read \(permission"):
    datasets.prepare(_config(root, generate), log=lambda *a: None)
  monkeypatch.undo()
  assert real_listdir(root) == ["photo.jpg"]
