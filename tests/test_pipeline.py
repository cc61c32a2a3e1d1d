"""The grain pipeline: deterministic order, worker processes, resumable state, host
shards, the four formats, and bad images (stop naming the file, or skip and count)."""
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

import format_fixtures
from experiments.configs import demo
from gralign_jax import configs
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.data import pipeline
from gralign_jax.data import readers
from gralign_jax.data import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pipe") / "syn")
  synthetic.generate(root, num_train=24, num_dev=5, num_test=5, image_size=32)
  config = configs.finalize(demo.get_config("smoke"))
  config.data.root = root
  config.train.batch_size = 8
  split = datasets.read_split(config, "train")
  captions = pipeline.encode_captions(split.captions, datasets.load_tokenizer(config),
                                      config.data.max_len)
  return config, split, captions


def take(it, n):
  return [next(it) for _ in range(n)]


def assert_batches_equal(a, b):
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_epoch_covers_every_caption_once_then_reshuffles(data):
  config, split, captions = data
  steps = split.num_captions // config.train.batch_size  # 120 captions, 15 batches
  batches = take(pipeline.train_iterator(split, captions, config, seed=3), 2 * steps)
  ids = [tuple(row) for b in batches[:steps] for row in b["ids"]]
  # every caption of the epoch once (captions may repeat as text, so compare multisets)
  expected = sorted(tuple(row) for row in captions.ids)
  assert sorted(ids) == expected
  second = [tuple(row) for b in batches[steps:] for row in b["ids"]]
  assert sorted(second) == expected and second != ids
  for b in batches:  # each caption travels with its own image id
    assert b["image"].shape == (8, 32, 32, 3) and b["image"].dtype == np.uint8
    assert b["image_id"].max() < split.num_images


def test_hard_negatives_are_false_captions_of_each_rows_own_caption(data):
  """loss.hard_negatives with 2 per caption: every row carries false captions made from
  its own caption, of distinct kinds (as many as that caption has, up to 2; padding
  after), and the images, crops included, are those of the same iterator without them."""
  from gralign_jax.data import false_captions  # pylint: disable=g-import-not-at-top
  config, split, captions = data
  tokenizer = datasets.load_tokenizer(config)
  made, info = false_captions.build(config, split, seed=0)
  false = pipeline.encode_false_captions(made, split.num_captions, info["kinds"],
                                         tokenizer, config.data.max_len, per_caption=2)
  texts = {}  # caption -> the ids of its false captions, tokenised apart
  for c, text in zip(made.caption, made.text):
    ids = pipeline.encode_captions([text], tokenizer, config.data.max_len).ids[0]
    texts.setdefault(int(c), []).append(tuple(ids))
  with_false = take(pipeline.train_iterator(split, captions, config, seed=2,
                                            false=false), 6)
  plain = take(pipeline.train_iterator(split, captions, config, seed=2), 6)
  drawn = set()
  for b, p in zip(with_false, plain):
    assert set(b) - set(p) == {"false_ids", "false_mask", "false_valid"}
    assert b["false_ids"].shape == (8, 2, config.data.max_len)
    for k in p:
      np.testing.assert_array_equal(b[k], p[k])
    for row in range(len(b["ids"])):
      c = int(b["caption_id"][row])
      has = min(2, len(texts.get(c, ())))
      np.testing.assert_array_equal(b["false_valid"][row], np.arange(2) < has)
      got = [tuple(ids) for ids in b["false_ids"][row][:has]]
      assert len(set(got)) == has  # distinct kinds
      for ids in got:
        assert ids in texts[c] and ids != tuple(captions.ids[c])
      np.testing.assert_array_equal(b["false_mask"][row], b["false_ids"][row] != 0)
      assert not b["false_ids"][row][has:].any()  # padding past the kinds it has
      drawn.update(got)
  assert len(drawn) > 20  # many kinds and captions, not one fixed choice


def test_hard_negative_kinds_are_drawn_in_proportion_to_their_weights(data):
  """loss.hard_negatives="order:1,colour:3": among captions that have both kinds,
  colour is drawn about 3 times in 4; a caption with one kind always gets that one."""
  from gralign_jax.data import false_captions  # pylint: disable=g-import-not-at-top
  config, split, captions = data
  kinds = false_captions.chosen_kinds("order:1,colour:3", config.data.root)
  assert kinds == {"order": 1.0, "colour": 3.0}
  made, info = false_captions.build(config, split, seed=0, kinds=tuple(kinds))
  false = pipeline.encode_false_captions(made, split.num_captions, info["kinds"],
                                         datasets.load_tokenizer(config),
                                         config.data.max_len, list(kinds.values()))
  kind_of = {(int(c), tuple(false.ids[c, info["kinds"].index(k)])): k
             for c, k in zip(made.caption, made.kind)}
  steps = split.num_captions // config.train.batch_size
  drawn = {"both": [], "one": []}
  for b in take(pipeline.train_iterator(split, captions, config, seed=5, false=false),
                8 * steps):
    for row in range(len(b["ids"])):
      c = int(b["caption_id"][row])
      if b["false_valid"][row, 0]:
        k = kind_of[(c, tuple(b["false_ids"][row, 0]))]
        drawn["both" if false.valid[c].all() else "one"].append(k == "colour")
  both = np.mean(drawn["both"])
  assert len(drawn["both"]) > 300 and 0.68 < both < 0.82, (len(drawn["both"]), both)
  # a caption with only one kind (colour: every caption names a colour) draws it
  assert drawn["one"] and all(drawn["one"])


@pytest.mark.parametrize("spec", ["relation:0", "relation:x", "shape,shape", "teeth:2", ""])
def test_hard_negative_kinds_that_do_not_parse_are_named(data, spec):
  from gralign_jax.data import false_captions  # pylint: disable=g-import-not-at-top
  config = data[0]
  with pytest.raises(false_captions.FalseCaptionError, match="kind:weight"):
    false_captions.chosen_kinds(spec, config.data.root)


def test_worker_processes_give_the_same_batches(data):
  config, split, captions = data
  in_process = take(pipeline.train_iterator(split, captions, config, seed=0), 4)
  config = config.copy_and_resolve_references()
  config.data.num_workers = 2
  with_workers = take(pipeline.train_iterator(split, captions, config, seed=0), 4)
  assert_batches_equal(in_process, with_workers)


@pytest.mark.parametrize("workers", [0, 2])
def test_state_restores_the_exact_position(data, workers):
  config, split, captions = data
  config = config.copy_and_resolve_references()
  config.data.num_workers = workers
  it = pipeline.train_iterator(split, captions, config, seed=1)
  take(it, 3)
  state = it.get_state()
  expected = take(it, 3)
  fresh = pipeline.train_iterator(split, captions, config, seed=1)
  fresh.set_state(state)
  assert_batches_equal(expected, take(fresh, 3))


def test_different_seeds_differ(data):
  config, split, captions = data
  a = next(pipeline.train_iterator(split, captions, config, seed=0))
  b = next(pipeline.train_iterator(split, captions, config, seed=1))
  assert not np.array_equal(a["ids"], b["ids"])


@pytest.mark.parametrize("hosts", [2, 4])
def test_hosts_hold_their_rows_of_every_global_batch(data, monkeypatch, hosts):
  """Host p holds rows [p*b, (p+1)*b) of each global batch: the hosts' batches, put
  side by side, are one host's batches row for row (images, crops and captions)."""
  config, split, captions = data
  per_host = []
  for host in range(hosts):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    monkeypatch.setattr(jax, "process_count", lambda: hosts)
    per_host.append(take(pipeline.train_iterator(split, captions, config, seed=0), 15))
  monkeypatch.undo()
  one_host = take(pipeline.train_iterator(split, captions, config, seed=0), 15)
  for step, whole in enumerate(one_host):
    for key in ("ids", "image", "caption_id"):
      merged = np.concatenate([per_host[h][step][key] for h in range(hosts)])
      np.testing.assert_array_equal(merged, whole[key])


def test_eval_hosts_read_their_rows_and_pad_the_last_batch(data, monkeypatch):
  config, split, _ = data
  whole = list(pipeline.eval_image_batches(split, config, batch_size=8))
  parts = [list(pipeline.eval_image_batches(split, config, 8, host, 2))
           for host in range(2)]
  assert len(parts[0]) == len(parts[1]) == len(whole)
  index = np.concatenate([np.concatenate([parts[h][s]["index"] for h in range(2)])
                          for s in range(len(whole))])
  n = split.num_images
  np.testing.assert_array_equal(index[:n], np.arange(n))
  assert (index[n:] == -1).all() and len(index) % 8 == 0
  images = np.concatenate([np.concatenate([parts[h][s]["image"] for h in range(2)])
                           for s in range(len(whole))])
  np.testing.assert_array_equal(images[:n], np.concatenate([b["image"] for b in whole]))
  assert not images[n:].any()


# ---------------------------------------------------------------- the four formats


@pytest.fixture(scope="module")
def roots(tmp_path_factory):
  pytest.importorskip("tensorflow_datasets")
  return format_fixtures.build(str(tmp_path_factory.mktemp("formats")))


def format_data(roots, fmt, workers=0):
  config = format_fixtures.configure(demo.get_config("smoke"), fmt, roots)
  config.train.batch_size = 8
  config.data.num_workers = workers
  split = datasets.read_split(config, "train")
  captions = pipeline.encode_captions(split.captions, datasets.load_tokenizer(config),
                                      config.data.max_len)
  return config, split, captions


@pytest.mark.parametrize("fmt", format_fixtures.FORMATS)
def test_every_format_pairs_each_caption_with_its_image(roots, fmt):
  config, split, captions = format_data(roots, fmt)
  steps = split.num_captions // config.train.batch_size
  batches = take(pipeline.train_iterator(split, captions, config, seed=0), steps)
  seen = np.concatenate([b["caption_id"] for b in batches])
  np.testing.assert_array_equal(np.sort(seen), np.arange(split.num_captions))
  for b in batches[:3]:
    np.testing.assert_array_equal(b["image_id"], b["caption_id"] // 5)
    np.testing.assert_array_equal(b["ids"], captions.ids[b["caption_id"]])
    assert not b["bad_images"].any()
    if fmt == "precomp":  # features pass unaugmented
      assert b["image"].dtype == np.float32 and b["image"].shape == (8, 6, 64)
      for row, i in zip(b["image"], b["image_id"]):
        np.testing.assert_array_equal(row, split.load_image(i))
    else:
      assert b["image"].dtype == np.uint8 and b["image"].shape == (8, 32, 32, 3)
  evals = list(pipeline.eval_image_batches(split, config, batch_size=10))
  assert [len(b["index"]) for b in evals] == [10, 10, 4]
  first = evals[0]["image"][2]
  want = split.load_image(2)
  np.testing.assert_array_equal(first, want if fmt == "precomp"
                                else images_lib.resize(want, 32))


@pytest.mark.parametrize("fmt", format_fixtures.FORMATS)
def test_every_format_resumes_at_the_exact_position(roots, fmt):
  config, split, captions = format_data(roots, fmt)
  it = pipeline.train_iterator(split, captions, config, seed=5)
  take(it, 16)  # into the second epoch
  state = it.get_state()
  expected = take(it, 3)
  fresh = pipeline.train_iterator(split, captions, config, seed=5)
  fresh.set_state(state)
  assert_batches_equal(expected, take(fresh, 3))


@pytest.mark.parametrize("fmt", ["precomp", "tfds"])
def test_sources_cross_to_worker_processes(roots, fmt):
  config, split, captions = format_data(roots, fmt)
  in_process = take(pipeline.train_iterator(split, captions, config, seed=0), 3)
  config.data.num_workers = 2
  assert_batches_equal(in_process,
                       take(pipeline.train_iterator(split, captions, config, seed=0), 3))


@pytest.fixture
def broken(data, tmp_path):
  """A copy of the synthetic set whose image 3 is a truncated JPEG."""
  config, split, _ = data
  root = str(tmp_path / "broken")
  shutil.copytree(config.data.root, root)
  path = os.path.join(root, "images", "000003.jpg")
  with open(path, "rb") as f:
    data_bytes = f.read()
  with open(path, "wb") as f:
    f.write(data_bytes[:len(data_bytes) // 2])
  config = config.copy_and_resolve_references()
  config.data.root = root
  split = datasets.read_split(config, "train")
  return config, split, pipeline.encode_captions(split.captions,
                                                 datasets.load_tokenizer(config),
                                                 config.data.max_len)


@pytest.mark.parametrize("workers", [0, pytest.param(2, marks=pytest.mark.slow)])
def test_a_corrupt_jpeg_stops_the_run_naming_the_file(broken, workers):
  config, split, captions = broken
  config.data.num_workers = workers
  it = pipeline.train_iterator(split, captions, config, seed=0)
  with pytest.raises(images_lib.ImageDecodeError, match=r"images/000003\.jpg: OSError: "
                     "image file is truncated"):
    take(it, 15)
  with pytest.raises(images_lib.ImageDecodeError, match=r"000003\.jpg"):
    list(pipeline.eval_image_batches(split, config, batch_size=8))


def test_skip_bad_images_passes_over_and_counts(broken, caplog):
  config, split, captions = broken
  config.data.skip_bad_images = True
  batches = take(pipeline.train_iterator(split, captions, config, seed=0), 15)  # 1 epoch
  seen = np.concatenate([b["caption_id"] for b in batches])
  bad = np.concatenate([b["bad_images"] for b in batches])
  # Image 3's five captions became image 4's: counted once each, never paired with 3.
  assert bad.sum() == 5 and not np.isin(seen, np.arange(15, 20)).any()
  np.testing.assert_array_equal(np.sort(seen[bad == 1] % 5), np.arange(5))
  assert (seen[bad == 1] // 5 == 4).all()
  assert np.bincount(seen, minlength=120)[20:25].tolist() == [2] * 5
  assert "Skipping a bad image" in caplog.text and "000003.jpg" in caplog.text
  evals = list(pipeline.eval_image_batches(split, config, batch_size=8))
  assert sum(int(b["bad_images"].sum()) for b in evals) == 1
  assert evals[0]["bad_images"][3] == 1 and not evals[0]["image"][3].any()


def test_skip_bad_images_passes_over_a_folder_named_like_an_image(data, tmp_path,
                                                                  caplog):
  """An unreadable image (here a folder named 000003.jpg) is a bad image like a corrupt
  one: skipped in training, zeroed in evaluation, counted."""
  config, _, _ = data
  root = str(tmp_path / "folder")
  shutil.copytree(config.data.root, root)
  path = os.path.join(root, "images", "000003.jpg")
  os.remove(path)
  os.mkdir(path)
  config = config.copy_and_resolve_references()
  config.data.update(root=root, skip_bad_images=True)
  # read_split's "warn" is what data.skip_bad_images asks of it: logged, not refused
  split = readers.read_split(root, "train", check_images="warn")
  assert "000003.jpg is a folder, expected a file" in caplog.text
  captions = pipeline.encode_captions(split.captions, datasets.load_tokenizer(config),
                                      config.data.max_len)
  batches = take(pipeline.train_iterator(split, captions, config, seed=0), 15)  # 1 epoch
  seen = np.concatenate([b["caption_id"] for b in batches])
  bad = np.concatenate([b["bad_images"] for b in batches])
  assert bad.sum() == 5 and not np.isin(seen, np.arange(15, 20)).any()
  assert "Skipping a bad image" in caplog.text
  assert f"Image file {path} is a folder, expected a file" in caplog.text
  evals = list(pipeline.eval_image_batches(split, config, batch_size=8))
  assert evals[0]["bad_images"].tolist()[:5] == [0, 0, 0, 1, 0]
  assert not evals[0]["image"][3].any()
  config.data.skip_bad_images = False  # without it, the run stops naming the folder
  with pytest.raises(images_lib.ImageDecodeError, match=f"{path} is a folder"):
    list(pipeline.eval_image_batches(split, config, batch_size=8))


def test_two_processes_read_disjoint_shards_that_cover_the_epoch(roots, tmp_path):
  """Two real JAX processes (jax.distributed on CPU), each with its own grain
  pipeline: one epoch's caption ids split between them without overlap, in every
  format, and their batches assemble into one global array on the mesh."""
  with socket.socket() as s:
    s.bind(("localhost", 0))
    port = s.getsockname()[1]
  script = textwrap.dedent(f"""
      import json, sys
      import jax, numpy as np
      pid = int(sys.argv[1])
      jax.distributed.initialize(coordinator_address="localhost:{port}",
                                 num_processes=2, process_id=pid)
      sys.path.insert(0, "tests")
      import format_fixtures
      from experiments.configs import demo
      from gralign_jax import sharding
      from gralign_jax.data import datasets, pipeline
      roots = json.loads(sys.argv[2])
      out = {{}}
      mesh = sharding.make_mesh()
      for fmt in format_fixtures.FORMATS:
        config = format_fixtures.configure(demo.get_config("smoke"), fmt, roots)
        config.train.batch_size = 8
        split = datasets.read_split(config, "train")
        caps = pipeline.encode_captions(split.captions, datasets.load_tokenizer(config), 28)
        it = pipeline.train_iterator(split, caps, config, seed=0)
        ids = []
        for _ in range(split.num_captions // 8):
          local = next(it)
          ids += local["caption_id"].tolist()
          glob = sharding.global_batch(local, mesh)
          assert glob["ids"].shape == (8, 28) and mesh.devices.size == 4
        out[fmt] = ids
      print("IDS", json.dumps(out))
  """)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
             JAX_PLATFORMS="cpu")
  procs = [subprocess.Popen([sys.executable, "-c", script, str(pid), json.dumps(roots)],
                            cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True) for pid in (0, 1)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  shards = [json.loads(o.split("IDS ", 1)[1]) for o, _ in outs]
  for fmt in format_fixtures.FORMATS:
    a, b = shards[0][fmt], shards[1][fmt]
    assert len(a) == len(b) == 60
    assert not set(a) & set(b)
    assert sorted(a + b) == list(range(120))
