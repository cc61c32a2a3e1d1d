"""The grain training pipeline: deterministic order, worker processes, resumable state."""
import jax
import numpy as np
import pytest

from experiments.configs import demo
from gralign_jax.data import datasets
from gralign_jax.data import pipeline
from gralign_jax.data import synthetic_scenes


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp("pipe") / "syn")
  synthetic_scenes.generate(root, num_train=24, num_dev=5, num_test=5, image_size=32)
  config = demo.get_config("smoke")
  config.data.root = root
  config.train.batch_size = 8
  split = datasets.read_split(config, "train")
  captions = pipeline.encode_captions(split, datasets.load_tokenizer(config),
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


def test_hosts_read_disjoint_shards(data, monkeypatch):
  """Record g goes to host g % process_count: two hosts' batches partition the stream."""
  config, split, captions = data
  per_host = []
  for host in range(2):
    monkeypatch.setattr(jax, "process_index", lambda host=host: host)
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    per_host.append(take(pipeline.train_iterator(split, captions, config, seed=0), 15))
  monkeypatch.undo()
  one_host = take(pipeline.train_iterator(split, captions, config, seed=0), 15)
  merged = np.stack([np.concatenate([b["ids"] for b in per_host[h]]) for h in range(2)],
                    axis=1).reshape(-1, captions.ids.shape[1])
  np.testing.assert_array_equal(merged, np.concatenate([b["ids"] for b in one_host]))
