"""Retrieval from a trained run: it reproduces the run's own test recall, caches the
gallery, explains the best pair word by word, and the command line prints it. A real
photo folder's unreadable files are skipped and listed, bad flags are refused in one
line, long captions are named, and a run on read-only storage is queried with its
cache in the user's folder."""
import builtins
import contextlib
import errno
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import jax
import numpy as np
import pytest

from experiments.configs import demo
from gralign_jax import checkpoint
from gralign_jax import inference
from gralign_jax import optim
from gralign_jax import sharding
from gralign_jax import train
from gralign_jax import train_state
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.evaluation import recall
from gralign_jax.inference import gallery as inference_gallery

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modes_do_not_bind() -> bool:
  """True for root (with its usual capabilities), whom file modes do not stop: tests
  then simulate read-only storage and skip the unreadable-file case."""
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "f")
    with open(path, "w"):
      pass
    os.chmod(path, 0)
    try:
      with open(path):
        return True
    except PermissionError:
      return False


ROOT = _modes_do_not_bind()


@pytest.fixture(scope="module")
def trained(smoke_root, tmp_path_factory):
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  workdir = str(tmp_path_factory.mktemp("run"))
  results = train.train_and_evaluate(config, workdir)
  return workdir, datasets.read_split(config, "test"), results


def test_a_run_saved_before_the_annealed_tau_existed_loads_as_it_trained(trained,
                                                                          tmp_path):
  workdir, test, _ = trained
  old = str(tmp_path / "old")
  shutil.copytree(workdir, old)
  with open(os.path.join(old, "config.json")) as f:
    saved = json.load(f)
  del saved["model"]["gumbel_tau_final"]
  with open(os.path.join(old, "config.json"), "w") as f:
    json.dump(saved, f)
  run = inference.load_run(old)
  assert run.config.model.gumbel_tau_final == 1.0
  split = inference.gallery_split(list(test.image_paths)[:4])
  got = inference.retrieve(run, split, list(test.captions)[:3], k=3)
  want = inference.retrieve(inference.load_run(workdir), split,
                            list(test.captions)[:3], k=3)
  assert got["captions_to_images"] == want["captions_to_images"]


def test_retrieval_reproduces_the_runs_test_recall(trained):
  workdir, test, results = trained
  run = inference.load_run(workdir)
  split = inference.gallery_split(list(test.image_paths))
  out = inference.retrieve(run, split, list(test.captions), k=max(test.num_captions, 100))
  n, m = test.num_images, test.num_captions
  # The rankings -> a score matrix with the same orders -> the recall protocol.
  sims = np.full((n, m), -np.inf)
  for item in out["images_to_captions"]:
    row = test.image_paths.index(item["image"])
    for rank, hit in enumerate(item["top"]):
      sims[row, hit["index"]] = -rank
  i2t = recall.recall_metrics(sims, captions_per_image=5)
  t2i_sims = np.full((n, m), -np.inf)
  for col, item in enumerate(out["captions_to_images"]):
    for rank, hit in enumerate(item["top"]):
      t2i_sims[hit["index"], col] = -rank
  t2i = recall.recall_metrics(t2i_sims, captions_per_image=5)
  want = results["test"]
  for key in ("i2t_r1", "i2t_r5", "i2t_r10"):
    assert i2t[key] == pytest.approx(want[key])
  for key in ("t2i_r1", "t2i_r5", "t2i_r10"):
    assert t2i[key] == pytest.approx(want[key])


def test_gallery_is_encoded_once_and_alignment_names_patches(trained, monkeypatch):
  workdir, test, _ = trained
  run = inference.load_run(workdir)
  split = inference.gallery_split(list(test.image_paths[:6]))
  first = inference.retrieve(run, split, ["a red circle", test.captions[0]], k=3)
  caches = sorted(os.listdir(os.path.join(workdir, "galleries")))
  monkeypatch.setattr(run.evaluator, "encode_images_and_count_bad",
                      lambda *a: pytest.fail("the gallery should come from its cache"))
  again = inference.retrieve(run, split, ["a red circle", test.captions[0]], k=3)
  assert again["captions_to_images"] == first["captions_to_images"]
  assert sorted(os.listdir(os.path.join(workdir, "galleries"))) == caches
  words = first["captions_to_images"][0]["alignment"]
  assert [w["token"] for w in words] == ["[CLS]", "a", "red", "circle", "[SEP]"]
  grid = run.config.model.vision.image_size // run.config.model.vision.patch_size
  for w in words:
    assert w["visual_token"] == "CLS" or w["visual_token"].startswith("patch (")
    if w["visual_token"] != "CLS":
      r, c = map(int, w["visual_token"][7:-1].split(", "))
      assert 0 <= r < grid and 0 <= c < grid
    assert -1 <= w["cos"] <= 1 and 0 <= w["gate"] <= 1
  scores = [h["score"] for h in first["captions_to_images"][1]["top"]]
  assert scores == sorted(scores, reverse=True) and len(scores) == 3


def test_command_line(trained, tmp_path):
  workdir, test, _ = trained
  images = tmp_path / "photos"
  images.mkdir()
  for p in test.image_paths[:3]:
    (images / os.path.basename(p)).write_bytes(open(p, "rb").read())
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
       f"--images={images}", "--query=a blue square", "--k=2",
       f"--out={tmp_path / 'r.json'}"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert '"a blue square"' in proc.stdout
  assert "word piece -> best visual token" in proc.stdout
  assert os.path.isfile(tmp_path / "r.json")
  proc = subprocess.run([sys.executable, "-m", "experiments.retrieve",
                         f"--workdir={tmp_path / 'nothing'}", f"--images={images}",
                         "--query=x"], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode != 0 and "config.json does not exist" in proc.stderr


# ------------------------------------------------------------ real photo folders


def _quiet(_):
  pass


@pytest.mark.parametrize("which", ["best", "latest"])
def test_a_run_loads_its_parameters_alone(trained, which):
  """load_run reads the parameters without an optimiser: the same arrays as the whole
  train state restored as the trainer restores it."""
  workdir = trained[0]
  run = inference.load_run(workdir, which, log=_quiet)
  model = run.evaluator.model
  like = train_state.abstract_state(model, optim.make_optimizer(run.config, 1),
                                    run.config, sharding.make_mesh())
  saved = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
  try:
    whole = {"best": saved.restore_best, "latest": saved.restore_latest}[which](
        like, log=_quiet)
  finally:
    saved.close()
  assert run.step == whole.step
  got, want = (jax.tree_util.tree_flatten_with_path(p) for p in (run.params,
                                                                  whole.state["params"]))
  assert [k for k, _ in got[0]] == [k for k, _ in want[0]]
  for (path, a), (_, b) in zip(got[0], want[0]):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=str(path))


def _copy(paths, folder):
  folder.mkdir()
  for i, p in enumerate(paths):
    shutil.copyfile(p, folder / f"{i:02d}.jpg")


def _add_bad_files(folder, good: str) -> dict:
  """Unreadable files between the good ones (00.jpg, 01.jpg, ...): name -> words of
  the reason each is skipped for."""
  data = open(good, "rb").read()
  (folder / "00b.jpg").write_bytes(data[:len(data) // 3])     # truncated JPEG
  (folder / "01b.jpg").write_bytes(b"")
  (folder / "02b.jpg").mkdir()
  (folder / "03b.png").write_text("not an image")
  return {"00b.jpg": "does not decode", "01b.jpg": "is empty (0 bytes)",
          "02b.jpg": "is a folder", "03b.png": "is not an image"}


def _by_name(result: dict):
  """What a user compares: per caption the images (by file name) and scores, the
  alignment; per image the captions and scores."""
  name = os.path.basename
  return ([(c["caption"], [(name(h["image"]), h["score"]) for h in c["top"]],
            c["alignment"]) for c in result["captions_to_images"]],
          [(name(i["image"]), [(h["caption"], h["score"]) for h in i["top"]])
           for i in result["images_to_captions"]])


def test_unreadable_files_are_skipped_and_listed(trained, tmp_path, monkeypatch):
  workdir, test, _ = trained
  good = list(test.image_paths[10:14])
  _copy(good, tmp_path / "good")
  _copy(good, tmp_path / "mixed")
  bad = _add_bad_files(tmp_path / "mixed", good[0])
  run = inference.load_run(workdir, log=_quiet)
  captions = ["a red circle", test.captions[52]]
  want = inference.retrieve(run, inference.gallery_split(str(tmp_path / "good")),
                            captions, k=3, log=_quiet)
  lines = []
  got = inference.retrieve(run, inference.gallery_split(str(tmp_path / "mixed")),
                           captions, k=3, log=lines.append)
  assert _by_name(got) == _by_name(want)
  assert len(got["images"]) == 4
  skipped = {os.path.basename(s["path"]): s["reason"] for s in got["skipped_images"]}
  assert skipped.keys() == bad.keys()
  for name, words in bad.items():
    assert words in skipped[name], (name, skipped[name])
  assert lines[0] == (f"Skipped {len(bad)} of {len(bad) + 4} image files in "
                      f"{tmp_path / 'mixed'} (not readable images); retrieving from the "
                      "other 4:")
  assert sorted(lines[1:1 + len(bad)]) == sorted(
      f"  {tmp_path / 'mixed' / name} {why}" for name, why in skipped.items())
  # Again from the cache: the same, the decoding failures included, nothing decoded.
  fail = lambda *a: pytest.fail("the gallery should come from its cache")
  with monkeypatch.context() as m:
    m.setattr(run.evaluator, "encode_images_and_count_bad", fail)
    m.setattr(images_lib, "decode_image", fail)
    again = inference.retrieve(run, inference.gallery_split(str(tmp_path / "mixed")),
                               captions, k=3, log=_quiet)
  assert again == got
  # data.skip_bad_images (the pipeline zeroes bad images instead of raising) and
  # small chunks: the same images are found and skipped.
  _copy(good, tmp_path / "mixed2")
  _add_bad_files(tmp_path / "mixed2", good[0])
  run.config.data.skip_bad_images = True
  monkeypatch.setattr(inference_gallery, "_CHUNK_IMAGES", 3)
  other = inference.retrieve(run, inference.gallery_split(str(tmp_path / "mixed2")),
                             captions, k=3, log=_quiet)
  assert _by_name(other) == _by_name(want)
  assert [os.path.basename(s["path"]) for s in other["skipped_images"]] == sorted(bad)


@pytest.mark.skipif(ROOT, reason="file modes do not stop root: no file is unreadable")
def test_a_file_without_read_permission_is_skipped(trained, tmp_path):
  workdir, test, _ = trained
  good = list(test.image_paths[10:12])
  _copy(good, tmp_path / "good")
  _copy(good, tmp_path / "mixed")
  shutil.copyfile(good[0], tmp_path / "mixed" / "00b.jpg")
  os.chmod(tmp_path / "mixed" / "00b.jpg", 0)
  run = inference.load_run(workdir, log=_quiet)
  want = inference.retrieve(run, inference.gallery_split(str(tmp_path / "good")),
                            ["a red circle"], k=2, log=_quiet)
  got = inference.retrieve(run, inference.gallery_split(str(tmp_path / "mixed")),
                           ["a red circle"], k=2, log=_quiet)
  assert _by_name(got) == _by_name(want)
  assert got["skipped_images"] == [{"path": str(tmp_path / "mixed" / "00b.jpg"),
                                    "reason": "cannot be read (permission denied)"}]


def test_a_folder_without_a_readable_image_is_an_error(trained, tmp_path):
  workdir, test, _ = trained
  folder = tmp_path / "junk"
  folder.mkdir()
  (folder / "x.jpg").mkdir()
  (folder / "empty.jpg").write_bytes(b"")
  with pytest.raises(inference.RetrievalError,
                     match=(f"^No readable image in folder '{folder}': all 2 "
                            r".jpg/.jpeg/.png files are skipped: empty.jpg is empty")):
    inference.gallery_split(str(folder))
  data = open(test.image_paths[0], "rb").read()
  (folder / "y.jpg").write_bytes(data[:200])                   # found when decoded
  split = inference.gallery_split(str(folder))
  run = inference.load_run(workdir, log=_quiet)
  with pytest.raises(inference.RetrievalError,
                     match=(f"^No readable image in folder '{folder}': all 3 .* y.jpg "
                            "does not decode")):
    inference.retrieve(run, split, ["a red circle"], log=_quiet)


def test_bad_k_empty_captions_and_long_captions(trained):
  workdir, test, _ = trained
  run = inference.load_run(workdir, log=_quiet)
  split = inference.gallery_split(list(test.image_paths[:4]))
  for k in (0, -2):
    with pytest.raises(inference.RetrievalError,
                       match=rf"^k={k}: expected a positive number of results"):
      inference.retrieve(run, split, ["a red circle"], k=k)
  with pytest.raises(inference.RetrievalError,
                     match=r"^Caption 1 is '  ': expected text with at least one word"):
    inference.retrieve(run, split, ["a red circle", "  "], k=2)
  long = " ".join(["a red circle left of a blue square"] * 63)    # 504 words
  tokens = len(run.tokenizer(long)["input_ids"])
  max_len = run.config.data.max_len
  assert tokens > 500 > max_len
  lines = []
  out = inference.retrieve(run, split, ["a red circle", long], k=10, log=lines.append)
  start = "a red circle left of a blue square a red..."
  assert out["truncated_captions"] == [
      {"index": 1, "start": start, "tokens": tokens, "max_len": max_len}]
  assert lines == [
      f"Caption 1 (\"{start}\") is {tokens} tokens long; the run reads at most "
      f"{max_len} (data.max_len), so the rest is cut.",
      "k=10 is more than the 4 images retrieved from: each caption lists all 4."]
  assert out["notes"] == lines
  assert out["k_used"] == {"images_per_caption": 4, "captions_per_image": 2}
  assert all(len(c["top"]) == 4 for c in out["captions_to_images"])


def test_command_line_refuses_bad_flags_in_one_line(tmp_path):
  (tmp_path / "empty.txt").write_text("")
  (tmp_path / "blank.txt").write_text("\n  \n\n")
  (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
  cases = [
      (["--query="], "--query='' is empty; expected a caption with at least one word"),
      (["--query=a", "--query=   "], "--query='   ' is empty; expected a caption"),
      (["--query=a", "--k=0"], "--k=0: expected a positive number of results per query"),
      (["--query=a", "--k=-3"], "--k=-3: expected a positive number"),
      ([f"--captions={tmp_path / 'no.txt'}"],
       f"--captions='{tmp_path / 'no.txt'}' does not exist; expected a UTF-8 text file"),
      ([f"--captions={tmp_path / 'empty.txt'}"],
       f"--captions='{tmp_path / 'empty.txt'}' holds no caption (the file is empty"),
      (["--query=a", f"--captions={tmp_path / 'blank.txt'}"],
       f"--captions='{tmp_path / 'blank.txt'}' holds no caption"),
      ([f"--captions={tmp_path}"], f"--captions='{tmp_path}' is a folder"),
      ([f"--captions={tmp_path / 'latin1.txt'}"],
       f"--captions='{tmp_path / 'latin1.txt'}' is not UTF-8 (byte 0xe9 at offset 3)"),
      # A FIFO: open() waited for a writer for ever.
      ([f"--captions={tmp_path / 'fifo'}"],
       f"--captions='{tmp_path / 'fifo'}' is a named pipe (FIFO), expected a file"),
      (["--query=a", "--pictures=-1"], "--pictures=-1: expected 0 or more"),
      # Outputs: never a folder, never a file of the user's, never the JSON twice.
      (["--query=a", f"--out={tmp_path}"], f"--out='{tmp_path}' is a folder"),
      (["--query=a", f"--html={tmp_path}"], f"--html='{tmp_path}' is a folder"),
      (["--query=a", f"--out={tmp_path / 'mine.json'}"],
       f"--out='{tmp_path / 'mine.json'}' exists and was not written by "
       "experiments.retrieve; it is left as it is"),
      (["--query=a", f"--html={tmp_path / 'mine.html'}"],
       f"--html='{tmp_path / 'mine.html'}' exists and was not written by"),
      (["--query=a", f"--out={tmp_path / 'r.html'}"],
       f"--out='{tmp_path / 'r.html'}' and the page (--html='{tmp_path / 'r.html'}') "
       "are the same file"),
      (["--query=a", f"--out={tmp_path / 'r.json'}", f"--html={tmp_path / 'r.json'}"],
       f"--out='{tmp_path / 'r.json'}' and the page (--html='{tmp_path / 'r.json'}') "
       "are the same file"),
  ]
  os.mkfifo(tmp_path / "fifo")
  (tmp_path / "mine.json").write_text('{"my": "notes"}')
  (tmp_path / "mine.html").write_text("<html>my page</html>")
  for flags, message in cases:
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.retrieve", f"--workdir={tmp_path / 'run'}",
         f"--images={tmp_path}"] + flags, cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 1, (flags, proc.stderr)
    assert "Traceback" not in proc.stderr, (flags, proc.stderr)
    assert proc.stderr.strip().splitlines()[-1].startswith(f"Error: {message}"), (
        flags, proc.stderr)
  assert (tmp_path / "mine.json").read_text() == '{"my": "notes"}'
  assert (tmp_path / "mine.html").read_text() == "<html>my page</html>"


# ------------------------------------------------------------ read-only storage


def read_only_patch(root: str, setattr_) -> None:
  """Every write under root fails as on a read-only mount (EROFS): for tests run as
  root, whom file modes do not stop. Also used by the command-line test's child."""
  root = os.path.realpath(root)

  def refuse_under_root(path):
    if isinstance(path, int):
      return
    p = os.path.realpath(os.fspath(path))
    if p == root or p.startswith(root + os.sep):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), os.fspath(path))

  def guard(fn, writes=lambda *a, **kw: True, paths=1):
    def guarded(*args, **kwargs):
      if writes(*args[paths:], **kwargs):
        for path in args[:paths]:
          refuse_under_root(path)
      return fn(*args, **kwargs)
    return guarded

  setattr_(builtins, "open", guard(
      builtins.open, lambda mode="r", *a, **kw: any(c in mode for c in "wax+")))
  setattr_(os, "open", guard(
      os.open, lambda flags, *a, **kw: flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT)))
  for name in ("mkdir", "rmdir", "remove", "unlink", "chmod", "utime"):
    setattr_(os, name, guard(getattr(os, name)))
  for name in ("rename", "replace", "link", "symlink"):
    setattr_(os, name, guard(getattr(os, name), paths=2))


@contextlib.contextmanager
def _read_only(workdir: str, monkeypatch):
  """workdir as on read-only storage: its modes without write bits, or, for root,
  read_only_patch (undone on exit)."""
  if ROOT:
    with monkeypatch.context() as m:
      read_only_patch(workdir, m.setattr)
      yield
    return
  modes = {}
  for folder, _, files in os.walk(workdir):
    for p in [folder] + [os.path.join(folder, f) for f in files]:
      modes[p] = os.stat(p).st_mode
      os.chmod(p, modes[p] & ~0o222)
  try:
    yield
  finally:
    for p, mode in modes.items():
      os.chmod(p, mode)


def _tree(folder: str) -> dict:
  out = {}
  for d, _, files in os.walk(folder):
    for p in [d] + [os.path.join(d, f) for f in files]:
      st = os.stat(p)
      out[p] = (st.st_size, st.st_mtime_ns)
  return out


_NOT_WRITABLE = r"is not writable \((Read-only file system|Permission denied)\)"


def test_read_only_workdir_caches_in_the_user_folder(trained, tmp_path, monkeypatch):
  workdir, test, _ = trained
  monkeypatch.setenv("GRALIGN_CACHE", str(tmp_path / "cache"))
  fallback = inference.fallback_dir(workdir)
  assert fallback.startswith(str(tmp_path / "cache" / "galleries") + os.sep)
  split = inference.gallery_split(list(test.image_paths[14:18]))  # no other test's
  captions = ["a red circle", test.captions[71]]
  before, lines = _tree(workdir), []
  with _read_only(workdir, monkeypatch):
    run = inference.load_run(workdir, log=lines.append)
    got = inference.retrieve(run, split, captions, k=3, log=lines.append)
    written = inference.write_result(got, log=lines.append)
  assert _tree(workdir) == before  # nothing written, created or moved
  assert os.path.dirname(got["gallery_cache"]) == fallback
  assert os.path.isfile(os.path.join(got["gallery_cache"], "manifest.json"))
  assert written == os.path.join(fallback, "retrieval.json")
  with open(written) as f:
    assert json.load(f) == got
  assert len(lines) == 2, "\n".join(lines)
  assert re.fullmatch(
      rf"Gallery cache: {re.escape(os.path.join(workdir, 'galleries'))} {_NOT_WRITABLE}"
      rf"; cached in {re.escape(got['gallery_cache'])} instead\.", lines[0]), lines[0]
  assert re.fullmatch(rf"{re.escape(workdir)} {_NOT_WRITABLE}; retrieval\.json goes to "
                      rf"{re.escape(written)} instead\.", lines[1]), lines[1]
  # The same results as a writable run directory encoding the images afresh.
  monkeypatch.setenv("GRALIGN_CACHE", str(tmp_path / "elsewhere"))
  want = inference.retrieve(run, split, captions, k=3, log=_quiet)
  assert os.path.dirname(want["gallery_cache"]) == os.path.join(workdir, "galleries")
  assert _by_name(got) == _by_name(want)
  # A read-only run directory that holds the cache is read, and only read.
  before, lines = _tree(workdir), []
  with _read_only(workdir, monkeypatch):
    monkeypatch.setattr(run.evaluator, "encode_images_and_count_bad",
                        lambda *a: pytest.fail("the gallery should come from its cache"))
    again = inference.retrieve(run, split, captions, k=3, log=lines.append)
  assert _tree(workdir) == before and not lines
  assert again == want


_CHILD = """import runpy, sys
sys.path.insert(0, {tests!r})
import test_retrieval
test_retrieval.read_only_patch({workdir!r}, setattr)
sys.argv[0] = "retrieve"
runpy.run_module("experiments.retrieve", run_name="__main__", alter_sys=True)
"""


def test_command_line_on_read_only_storage_with_bad_files(trained, tmp_path,
                                                         monkeypatch):
  workdir, test, _ = trained
  _copy(test.image_paths[17:20], tmp_path / "photos")
  bad = _add_bad_files(tmp_path / "photos", test.image_paths[17])
  monkeypatch.setenv("GRALIGN_CACHE", str(tmp_path / "cache"))
  fallback = inference.fallback_dir(workdir)
  long = " ".join(["a red circle left of a blue square"] * 63)  # 504 words: 506 tokens
  args = [f"--workdir={workdir}", f"--images={tmp_path / 'photos'}",
          "--query=a blue square", f"--query={long}", "--k=2"]
  before = _tree(workdir)
  if ROOT:
    child = _CHILD.format(tests=os.path.join(REPO, "tests"), workdir=workdir)
    command = [sys.executable, "-c", child] + args
  else:
    command = [sys.executable, "-m", "experiments.retrieve"] + args
  with _read_only(workdir, monkeypatch) if not ROOT else contextlib.nullcontext():
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  assert _tree(workdir) == before
  lines = proc.stdout.splitlines()
  out = os.path.join(fallback, "retrieval.json")
  assert lines[0].startswith('Caption 1 ("a red circle left of a blue square a red...") '
                             "is 506 tokens long; the run reads at most")
  assert lines[1].startswith(f"Gallery cache: {workdir}/galleries is not writable")
  assert lines[2] == (f"Skipped {len(bad)} of {len(bad) + 3} image files in "
                      f"{tmp_path / 'photos'} (not readable images); retrieving from "
                      "the other 3:")
  assert re.fullmatch(rf"{re.escape(workdir)} {_NOT_WRITABLE}; retrieval\.json goes to "
                      rf"{re.escape(out)} instead\.", lines[-3]), lines[-3]
  assert lines[-2] == "Drawing the word-to-patch pictures of 2 caption(s) for the page ..."
  assert lines[-1] == f"Written to {out}, {out[:-len('.json')]}.html"
  with open(out) as f:
    result = json.load(f)
  assert sorted(os.path.basename(s["path"]) for s in result["skipped_images"]) == sorted(
      bad)
  assert [c["tokens"] for c in result["truncated_captions"]] == [506]
  assert os.path.dirname(result["gallery_cache"]) == fallback


# ------------------------------------------------------------------ a self-contained run
def test_moved_workdir_retrieves_without_its_data_set_from_anywhere(smoke_root, tmp_path,
                                                                    monkeypatch):
  """Train, move the workdir, delete the data set, change the working directory:
  retrieval gives the same top-k and scores, and shows paths as they were given."""
  data = tmp_path / "data"
  shutil.copytree(smoke_root, data)
  photos = tmp_path / "photos"
  photos.mkdir()
  for name in sorted(os.listdir(data / "images"))[-6:]:
    shutil.copy(data / "images" / name, photos / name)
  config = demo.get_config("smoke")
  config.data.root = str(data)
  workdir = tmp_path / "run"
  train.train_and_evaluate(config, str(workdir))
  with open(workdir / "config.json") as f:
    assert json.load(f)["data"]["root"] == str(data)  # absolute, as the run saw it
  captions = ["a small red circle", "a large blue square left of a green star"]
  before = inference.retrieve(inference.load_run(str(workdir)),
                              inference.gallery_split(str(photos)), captions, k=3)

  moved = tmp_path / "elsewhere" / "moved_run"
  moved.parent.mkdir()
  shutil.move(str(workdir), str(moved))
  shutil.rmtree(data)
  shutil.rmtree(moved / "galleries")  # encode the images again, with the moved run
  cwd = tmp_path / "cwd" / "deeper"
  cwd.mkdir(parents=True)
  monkeypatch.chdir(cwd)
  run = inference.load_run(os.path.join("..", "..", "elsewhere", "moved_run"))
  after = inference.retrieve(run, inference.gallery_split("../../photos"), captions, k=3)
  for b, a in zip(before["captions_to_images"], after["captions_to_images"]):
    assert [h["index"] for h in a["top"]] == [h["index"] for h in b["top"]]
    np.testing.assert_allclose([h["score"] for h in a["top"]],
                               [h["score"] for h in b["top"]], rtol=1e-6)
    assert all(h["image"].startswith("../../photos/") for h in a["top"])


def test_resume_with_another_tokenizer_is_refused_naming_both(smoke_root, tmp_path):
  from gralign_jax import run_dir  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import text  # pylint: disable=g-import-not-at-top
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  other = str(tmp_path / "other_tokenizer")
  text.train_wordpiece(["a red circle", "a blue square", "two green stars"] * 20, other,
                       200)
  config.data.tokenizer = other
  with pytest.raises(run_dir.RunDirError) as e:
    train.train_and_evaluate(config, workdir, allow_config_changes=True)
  message = str(e.value)
  assert other in message and os.path.join(workdir, "tokenizer") in message
  assert "\n" not in message
