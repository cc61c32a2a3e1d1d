"""evaluation/gallery.py: exact round trips, atomic replacement, stale-cache errors,
and a second place for the cache when the first cannot be written."""
import errno
import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from gralign_jax import configs
from gralign_jax.evaluation import gallery
from gralign_jax.scores import scorer


def _sides(seed=0, n=6, m=10):
  rng = np.random.default_rng(seed)
  images = {"tokens": rng.normal(size=(n, 7, 8)).astype(jnp.bfloat16),
            "mask": rng.random((n, 7)) > 0.2,
            "gates": rng.random((n, 7)).astype(np.float32),
            "regions": rng.normal(size=(n, 1, 3, 8)).astype(np.float32),
            "global": rng.normal(size=(n, 8)).astype(np.float32)}
  texts = {"tokens": rng.normal(size=(m, 5, 8)).astype(np.float32),
           "mask": rng.random((m, 5)) > 0.3,
           "gates": rng.random((m, 5)).astype(np.float32)}
  return {"images": (images, np.arange(100, 100 + n)),
          "texts": (texts, np.array([f"cap{i}" for i in range(m)]))}


def _assert_same(a, b):
  assert a.keys() == b.keys()
  for side in a:
    (xa, ia), (xb, ib) = a[side], b[side]
    assert xa.keys() == xb.keys()
    np.testing.assert_array_equal(ia, ib)
    assert ia.dtype == ib.dtype
    for name in xa:
      assert xa[name].dtype == xb[name].dtype, (side, name)
      # Bit for bit, bfloat16 included (compared as raw bytes).
      assert xa[name].tobytes() == np.asarray(xb[name]).tobytes(), (side, name)


def test_round_trip_is_exact(tmp_path):
  sides = _sides()
  meta = {"step": 300, "split": "test", "config": "abc123"}
  gallery.save(str(tmp_path / "g"), sides, meta)
  got, got_meta = gallery.load(str(tmp_path / "g"), expect_meta={"step": 300})
  assert got_meta == meta
  _assert_same(sides, got)


def test_mmap_round_trip(tmp_path):
  sides = _sides(seed=1)
  sides["images"][0]["tokens"] = sides["images"][0]["tokens"].astype(np.float32)
  gallery.save(str(tmp_path / "g"), sides)
  got, _ = gallery.load(str(tmp_path / "g"), mmap=True)
  assert isinstance(got["texts"][0]["tokens"], np.memmap)
  _assert_same(sides, got)


def test_cached_tokens_score_like_fresh_ones(tmp_path):
  sides = _sides(seed=2)
  gallery.save(str(tmp_path / "g"), sides)
  got, _ = gallery.load(str(tmp_path / "g"))
  sc = scorer.Scorer(configs.model_config(), backend="xla")
  np.testing.assert_array_equal(
      sc.matrix(got["images"][0], got["texts"][0]),
      sc.matrix(sides["images"][0], sides["texts"][0]))


def test_stale_or_mismatched_cache_is_refused(tmp_path):
  folder = str(tmp_path / "g")
  gallery.save(folder, _sides(), {"step": 300, "split": "test"})
  with pytest.raises(ValueError, match=r"Stale.*meta\['step'\] is 300, expected 400"):
    gallery.load(folder, expect_meta={"step": 400})
  with pytest.raises(ValueError, match=r"meta\['model'\] is '<absent>'"):
    gallery.load(folder, expect_meta={"model": "grm"})
  # A file replaced behind the manifest's back.
  np.save(os.path.join(folder, "texts.gates.npy"), np.zeros((3, 5), np.float32))
  with pytest.raises(ValueError, match="texts.gates.npy holds float32 \\[3, 5\\]"):
    gallery.load(folder)
  os.remove(os.path.join(folder, "texts.gates.npy"))
  with pytest.raises(FileNotFoundError, match="lacks texts.gates.npy"):
    gallery.load(folder)
  with pytest.raises(FileNotFoundError, match="No gallery cache"):
    gallery.load(str(tmp_path / "nothing"))
  manifest = os.path.join(folder, gallery.MANIFEST)
  with open(manifest) as f:
    m = json.load(f)
  m["format"] = 99
  with open(manifest, "w") as f:
    json.dump(m, f)
  with pytest.raises(ValueError, match="format 99"):
    gallery.load(folder)


def test_replace_is_atomic_and_bad_input_leaves_old_cache(tmp_path):
  folder = str(tmp_path / "g")
  gallery.save(folder, _sides(seed=0), {"v": 1})
  gallery.save(folder, _sides(seed=3), {"v": 2})     # replaces
  got, meta = gallery.load(folder)
  assert meta == {"v": 2}
  _assert_same(_sides(seed=3), got)
  bad = _sides(seed=4)
  bad["texts"][0]["gates"] = bad["texts"][0]["gates"][:4]  # 4 rows for 10 ids
  with pytest.raises(ValueError, match=r"texts\['gates'\] has shape \(4, 5\)"):
    gallery.save(folder, bad, {"v": 3})
  got, meta = gallery.load(folder)                   # the old cache, whole
  assert meta == {"v": 2}
  _assert_same(_sides(seed=3), got)
  assert sorted(os.listdir(tmp_path)) == ["g"]       # no temporary folders left


def test_first_writable_place_and_first_valid_cache(tmp_path, monkeypatch):
  read_only, writable = str(tmp_path / "ro" / "g"), str(tmp_path / "rw" / "g")
  mkdir = os.mkdir

  def refuse_under_ro(path, *args, **kwargs):  # a read-only mount; root writes anyway
    if os.fspath(path).startswith(str(tmp_path / "ro")):
      raise OSError(errno.EROFS, os.strerror(errno.EROFS), path)
    return mkdir(path, *args, **kwargs)

  monkeypatch.setattr(os, "mkdir", refuse_under_ro)
  folder, failed = gallery.save_first_writable([read_only, writable], _sides(),
                                               {"step": 1})
  assert folder == writable
  assert [(f, e.errno) for f, e in failed] == [(read_only, errno.EROFS)]
  assert not os.path.exists(tmp_path / "ro")
  assert gallery.save_first_writable([read_only], _sides(), {"step": 1})[0] is None
  # Stale and damaged caches before the good one are passed over.
  stale, damaged = str(tmp_path / "stale"), str(tmp_path / "damaged")
  gallery.save(stale, _sides(), {"step": 0})
  gallery.save(damaged, _sides(), {"step": 1})
  with open(os.path.join(damaged, gallery.MANIFEST), "w") as f:
    f.write("{")
  places = [str(tmp_path / "none"), stale, damaged, writable]
  folder, sides, meta = gallery.load_first(places, expect_meta={"step": 1})
  assert folder == writable and meta == {"step": 1}
  _assert_same(_sides(), sides)
  assert gallery.load_first(places[:3], expect_meta={"step": 1}) is None


def test_cache_root(monkeypatch, tmp_path):
  monkeypatch.setenv("GRALIGN_CACHE", str(tmp_path / "mine"))
  assert gallery.cache_root() == str(tmp_path / "mine")
  monkeypatch.delenv("GRALIGN_CACHE")
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert gallery.cache_root() == str(tmp_path / "xdg" / "gralign_jax")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert gallery.cache_root() == str(tmp_path / "home" / ".cache" / "gralign_jax")
