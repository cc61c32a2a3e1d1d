"""The pictures of gralign_jax.visualize show the model's own numbers: the saliency
heat map's cells are the visual gates, a word's box sits on the patch of highest
cosine (computed here again with NumPy), the region panels are A_hat's columns and the
sigma bars mean_d exp(0.5 log sigma^2), the curves are metrics.jsonl's records. For a
ViT run and a BUTD region-feature run (smoke size, a few training steps each); and the
command line writes the four PNGs, or stops in one line on a bad input."""
import json
import os
import subprocess
import sys

import jax
import matplotlib.text
import ml_collections
import numpy as np
import pytest
from matplotlib import patches as mpatches
from PIL import Image

from experiments.configs import demo
from experiments.configs import common
from gralign_jax import configs
from gralign_jax import metrics as metrics_lib
from gralign_jax import inference
from gralign_jax import train
from gralign_jax import visualize as vis
from gralign_jax.data import datasets
from gralign_jax.data import images as images_lib
from gralign_jax.data import readers
from gralign_jax.data import precomp
import layout_writers as writers  # tests/, beside this file
from gralign_jax.models import backbones

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FEATURE_SHAPE = (6, 64)
PNGS = ("saliency", "regions", "alignment", "curves")


def _quiet(*_):
  pass


def _smoke(root: str) -> ml_collections.ConfigDict:
  config = demo.get_config("smoke")
  config.data.root = root
  config.train.update(num_steps=4, log_every=1)
  return config


@pytest.fixture(scope="module")
def vit_run(smoke_root, tmp_path_factory):
  """A smoke ViT run with 8 px patches: a 4 x 4 grid after CLS (17 visual tokens)."""
  config = _smoke(smoke_root)
  config.model.vision.patch_size = 8
  workdir = str(tmp_path_factory.mktemp("vit_run"))
  train.train_and_evaluate(config, workdir)
  return workdir, datasets.read_split(config, "test")


@pytest.fixture(scope="module")
def butd_run(smoke_root, tmp_path_factory):
  """The smoke set rewritten as SCAN precomp features (6 regions x 64), trained on
  with the region-feature backbone."""
  pre = str(tmp_path_factory.mktemp("precomp"))
  for name in ("train", "dev", "test"):
    s = readers.read_split(smoke_root, name)
    precomp.write_precomp(pre, s, lambda i, s=s: writers.toy_region_features(
        images_lib.decode_image(s.image_paths[i]), FEATURE_SHAPE),
                          feature_shape=FEATURE_SHAPE)
  config = _smoke(pre)
  config.data.update(format="precomp", tokenizer=os.path.join(smoke_root, "tokenizer"),
                     feature_shape=FEATURE_SHAPE)
  config.data.synthetic.generate = False
  config.model.vision = ml_collections.ConfigDict(dict(
      name="butd", num_regions=FEATURE_SHAPE[0], feature_dim=FEATURE_SHAPE[1], width=32,
      mlp=True, dropout=0.0, weights=""))
  workdir = str(tmp_path_factory.mktemp("butd_run"))
  train.train_and_evaluate(config, workdir)
  return workdir, datasets.read_split(config, "test")


@pytest.fixture(scope="module")
def vit_views(vit_run):
  workdir, test = vit_run
  run = inference.load_run(workdir, log=_quiet)
  image = vis.encode_image(run, vis.load_image(test.image_paths[0]), name="test 0")
  caption, other = vis.encode_captions(run, [test.captions[0], test.captions[7]])
  return run, image, caption, other


def _np_cosine(t, v):
  t = np.asarray(t, np.float64)
  v = np.asarray(v, np.float64)
  return (t / np.linalg.norm(t, axis=1, keepdims=True)) @ (
      v / np.linalg.norm(v, axis=1, keepdims=True)).T


def _images(ax):
  return [im.get_array() for im in ax.get_images()]


# ------------------------------------------------------------------ pure numbers


def test_visual_layout_of_each_backbone():
  vit = dict(name="vit", image_size=224, patch_size=16)
  assert vis.visual_layout(vit, 197) == vis.TokenLayout("grid", 1, (14, 14))
  swin = dict(name="swin", image_size=384, patch_size=4, depths=(2, 2, 18, 2))
  assert vis.visual_layout(swin, 144) == vis.TokenLayout("grid", 0, (12, 12))
  assert vis.visual_layout(dict(swin, image_size=224), 49).grid == (7, 7)
  assert vis.visual_layout(dict(name="butd"), 36).kind == "regions"
  # The smoke backbones' real token counts (shapes only: nothing is computed).
  for vision in (dict(vit, image_size=32, patch_size=8),
                 dict(swin, image_size=32, depths=(1, 1))):
    config = configs.base_config()
    config.model.vision.update(name=vision["name"])
    if vision["name"] == "swin":
      config.model.vision = ml_collections.ConfigDict(common.swin_b(224))
    common.smoke(config)
    config.model.vision.update(vision)
    module = backbones.build(config.model, "vision")
    (x,) = module.example_inputs()
    tokens = jax.eval_shape(lambda m=module, x=x: m.init_with_output(
        jax.random.key(0), x)[0]).shape[1]
    assert vis.visual_layout(config.model.vision, tokens).grid == (4, 4)
  with pytest.raises(ValueError, match="should give 1 \\+ 14x14"):
    vis.visual_layout(vit, 50)


def test_numbers_on_a_handmade_example():
  layout = vis.TokenLayout("grid", 1, (2, 3))
  gates = np.arange(7) / 10
  np.testing.assert_array_equal(vis.saliency_grid(gates, layout),
                                np.float32([[.1, .2, .3], [.4, .5, .6]]))
  assign = np.arange(14, dtype=np.float32).reshape(7, 2)
  maps = vis.region_maps(assign, layout)
  np.testing.assert_array_equal(maps[1], assign[1:, 1].reshape(2, 3))
  logvar = np.log(np.array([[1.0, 4.0], [0.25, 0.25]]))
  np.testing.assert_allclose(vis.region_sigma(logvar), [1.5, 0.5], rtol=1e-6)
  # Word 0 points at patch 4 (token 5); the CLS token (0) matches word 1 best, but
  # only patches compete; word 2 is padding.
  v = np.eye(7, 3)[[2, 0, 0, 0, 0, 1, 0]] + 0.01
  t = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], np.float32)
  best = vis.best_patches(t, np.array([1, 1, 0], bool), v, layout)
  assert best[0] == 4 and best[2] == -1 and vis.patch_cell(4, layout) == (1, 1)
  assert vis.hardest_negative([0.1, 0.9, 0.5], positives=[1]) == 2
  with pytest.raises(ValueError, match="positives"):
    vis.hardest_negative([0.3, 0.2], positives=[0, 1])


# ------------------------------------------------------------------ the ViT run


def test_saliency_heat_map_cells_are_the_gates(vit_views):
  _, image, _, _ = vit_views
  gates = image.encoded["gates"]
  assert image.layout == vis.TokenLayout("grid", 1, (4, 4)) and gates.shape == (17,)
  grid = vis.saliency_grid(gates, image.layout)
  np.testing.assert_array_equal(grid, gates[1:].reshape(4, 4))
  fig = vis.saliency_figure(image)
  drawn = [a for ax in fig.axes for a in _images(ax) if a.shape == (4, 4)]
  assert len(drawn) == 1
  np.testing.assert_array_equal(np.asarray(drawn[0]), grid)
  texts = {t.get_text() for ax in fig.axes for t in ax.texts}
  assert f"{gates[6]:.2f}" in texts  # patch (1, 1) written in its cell


def test_region_panels_are_the_assignment_and_sigma(vit_views):
  _, image, _, _ = vit_views
  assign, logvar = image.encoded["assign"], image.encoded["region_logvar"]
  k = assign.shape[1]
  sigma = np.exp(0.5 * logvar.astype(np.float64)).mean(axis=1)
  np.testing.assert_allclose(vis.region_sigma(logvar), sigma, rtol=1e-6)
  fig = vis.regions_figure(image)
  panels = [ax for ax in fig.axes if ax.get_title().startswith("prompt ")]
  assert len(panels) == k
  for i, ax in enumerate(panels):
    (overlay,) = [a for a in _images(ax) if a.shape == (4, 4)]
    np.testing.assert_array_equal(np.asarray(overlay), assign[1:, i].reshape(4, 4))
    assert f"{sigma[i]:.3f}" in ax.get_title()
  (bars,) = [ax for ax in fig.axes if ax.patches and not ax.get_images()]
  np.testing.assert_allclose([p.get_height() for p in bars.patches], sigma, rtol=1e-5)


def test_each_word_is_boxed_on_its_best_patch(vit_views):
  run, image, caption, other = vit_views
  mask = caption.encoded["mask"]
  cos = _np_cosine(caption.encoded["tokens"], image.encoded["tokens"])[:, 1:]
  want = np.argmax(cos, axis=1)[mask]
  best = vis.best_patches(caption.encoded["tokens"], mask, image.encoded["tokens"],
                          image.layout)
  np.testing.assert_array_equal(best[mask], want)
  assert np.all(best[~mask] == -1)
  matched = vis.make_pair(run, image, caption, "matched pair")
  negative = vis.make_pair(run, image, other, "hard negative caption")
  fig = vis.alignment_figure([matched, negative])
  rows = [ax for ax in fig.axes if ax.get_title().startswith("best patch")]
  assert len(rows) == 2
  boxes = {(round(p.get_x()), round(p.get_y())) for p in rows[0].patches
           if isinstance(p, mpatches.Rectangle)}
  assert boxes == {(int(b) % 4, int(b) // 4) for b in want}
  gate_axes = [ax for ax in fig.axes if ax.get_title().startswith("word pieces")]
  heights = [p.get_width() for p in gate_axes[0].patches]
  np.testing.assert_allclose(heights, caption.encoded["gates"][mask], rtol=1e-6)
  words = [t.get_text() for t in gate_axes[0].get_yticklabels()]
  assert words == [f"{i} {w}" for i, w in
                   enumerate(np.asarray(caption.words)[mask])]


def test_dollars_in_captions_and_names_are_drawn_as_written(vit_views, tmp_path):
  # matplotlib reads text between two `$` as math: the first caption stopped the
  # drawing (unknown symbol \\foo), the second lost its dollars.
  run, image, _, _ = vit_views
  image = vis.encode_image(run, image.pixels, name="price $3 and $4.png")
  for text in (r"a red $\foo{$ circle", "$5 to $10", r"a \$ sign"):
    (caption,) = vis.encode_captions(run, [text])
    fig = vis.alignment_figure([vis.make_pair(run, image, caption, "matched $pair$")])
    fig.savefig(str(tmp_path / "a.png"))  # renders every text: raised before the fix
    drawn = [t for t in fig.findobj(matplotlib.text.Text) if t.get_text()]
    shown = {t._preprocess_math(t.get_text()) for t in drawn}  # pylint: disable=protected-access
    title = [s for s, math in shown if text in s]
    assert len(title) == 1 and "price $3 and $4.png" in title[0], shown
    assert "matched $pair$" in title[0]
    assert not any(math for s, math in shown if "$" in s and "a_" not in s
                   and "sigma" not in s and "hat" not in s), shown


def test_pair_scores_and_hard_negative_agree_with_the_scorer(vit_run, vit_views):
  run, image, caption, other = vit_views
  workdir, test = vit_run
  scores = vis.caption_scores(run, image, list(test.captions))
  # The run's own scorer over the same image (test image 0) and every test caption.
  from gralign_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  one = readers.Split("one", test.image_paths[:1], (0,), test.captions[:5])
  captions = pipeline.encode_captions(test.captions, run.tokenizer,
                                      run.config.data.max_len)
  want = run.evaluator.scores(run.params, one, captions)[0]
  np.testing.assert_allclose(scores, want, atol=1e-4)
  best, score = vis.pick_negative_caption(run, image, list(test.captions), range(5))
  assert best >= 5 and best == 5 + int(np.argmax(want[5:]))
  assert score == pytest.approx(float(want[best]), abs=1e-4)
  pair = vis.make_pair(run, image, caption, "matched pair")
  assert pair.scores["total"] == pytest.approx(float(want[0]), abs=1e-4)
  assert set(pair.scores) == {"ori", "key", "unc", "total"}


def test_curves_are_the_logged_records(vit_run):
  workdir, _ = vit_run
  records = metrics_lib.read_metrics(workdir)
  config = ml_collections.ConfigDict(json.load(open(os.path.join(workdir,
                                                                 "config.json"))))
  series = vis.training_series(records, vis.lr_schedule(config, records))
  train_records = [r for r in records if r["split"] == "train"]
  np.testing.assert_array_equal(series["loss"][0], [r["step"] for r in train_records])
  np.testing.assert_allclose(series["loss"][1], [r["loss"] for r in train_records])
  np.testing.assert_allclose(series["score_spread"][1],
                             [r["score_spread"] for r in train_records])
  assert list(series["dev_rsum"][1]) == [r["rsum"] for r in records if r["split"] == "dev"]
  # warm-up 100 steps at lr 1e-3: step s's update used lr(s - 1) = 1e-3 (s - 1) / 100
  np.testing.assert_allclose(series["lr"][1], 1e-3 * (series["lr"][0] - 1) / 100,
                             rtol=1e-5)
  fig = vis.run_curves_figure(workdir)
  (loss_ax,) = [ax for ax in fig.axes if ax.get_title() == "train loss"]
  np.testing.assert_allclose(loss_ax.lines[0].get_ydata(), series["loss"][1])


# ------------------------------------------------------------------ the BUTD run


def test_region_feature_run(butd_run, tmp_path):
  workdir, test = butd_run
  run = inference.load_run(workdir, log=_quiet)
  features = test.load_image(2)
  assert features.shape == FEATURE_SHAPE
  image = vis.encode_image(run, features, name="test image 2")
  assert image.layout.kind == "regions" and image.pixels is None
  gates = image.encoded["gates"]
  fig = vis.saliency_figure(image)
  np.testing.assert_allclose([p.get_height() for p in fig.axes[0].patches], gates,
                             rtol=1e-6)
  fig.savefig(tmp_path / "s.png")
  (caption,) = vis.encode_captions(run, [test.captions[10]])
  mask = caption.encoded["mask"]
  want = np.argmax(_np_cosine(caption.encoded["tokens"], image.encoded["tokens"]),
                   axis=1)[mask]
  best = vis.best_patches(caption.encoded["tokens"], mask, image.encoded["tokens"],
                          image.layout)
  np.testing.assert_array_equal(best[mask], want)
  fig = vis.alignment_figure([vis.make_pair(run, image, caption, "matched pair")])
  (heat,) = [ax for ax in fig.axes if ax.get_title().startswith("cosine")]
  marks = sorted((round(p.get_y() + 0.5), round(p.get_x() + 0.5)) for p in heat.patches)
  assert marks == list(enumerate(want))
  fig.savefig(tmp_path / "a.png")
  fig = vis.regions_figure(image)
  np.testing.assert_array_equal(np.asarray(_images(fig.axes[0])[0]),
                                image.encoded["assign"].T)
  fig.savefig(tmp_path / "r.png")
  with pytest.raises(vis.InputError, match=r"expected .*\(6, 64\)"):
    np.save(tmp_path / "bad.npy", np.zeros((5, 64), np.float32))
    vis.load_features(str(tmp_path / "bad.npy"), FEATURE_SHAPE)


# ------------------------------------------------------------------ command line


def _cli(*args):
  return subprocess.run([sys.executable, "-m", "experiments.visualize", *args],
                        cwd=REPO, capture_output=True, text=True, timeout=300)


def _check_pngs(proc, out):
  assert proc.returncode == 0, proc.stderr[-3000:]
  printed = [line for line in proc.stdout.splitlines() if line.endswith(".png")]
  assert printed == [os.path.join(out, f"{n}.png") for n in PNGS]
  for path in printed:
    assert os.path.getsize(path) > 1000
    with Image.open(path) as im:
      im.verify()


def test_command_line_writes_the_four_pictures(vit_run, tmp_path):
  workdir, test = vit_run
  out = str(tmp_path / "vis")
  proc = _cli(f"--workdir={workdir}", f"--image={test.image_paths[1]}",
              f"--caption={test.captions[5]}", f"--out={out}")
  _check_pngs(proc, out)
  # The image is test image 1: its own five captions are never the hard negative.
  neg = [l for l in proc.stdout.splitlines() if l.startswith("Hard negative caption")]
  assert len(neg) == 1 and "not the image's own" in neg[0]
  assert not any(f'"{c}"' in neg[0] for c in test.captions[5:10])


def test_command_line_bad_image_is_one_line(vit_run, tmp_path):
  workdir, _ = vit_run
  os.mkfifo(tmp_path / "fifo.jpg")  # open() waited on it for ever (issue 22, 11)
  for bad, why in ((tmp_path / "missing.jpg", "does not exist"),
                   (tmp_path, "is a folder"),
                   (tmp_path / "fifo.jpg", "is a named pipe (FIFO), expected a file")):
    proc = _cli(f"--workdir={workdir}", f"--image={bad}", "--caption=a red circle",
                f"--out={tmp_path / 'o'}")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(f"Error: --image: Image file {bad} {why}")
    assert not os.path.exists(tmp_path / "o")


@pytest.mark.slow  # about 20 s: the region-feature path is checked in-process above
def test_command_line_on_region_features(butd_run, tmp_path):
  workdir, test = butd_run
  out = str(tmp_path / "vis")
  proc = _cli(f"--workdir={workdir}", f"--image_id={test.image_ids[3]}",
              f"--caption={test.captions[15]}", "--negative_caption=a red circle",
              f"--out={out}")
  _check_pngs(proc, out)
  np.save(tmp_path / "f.npy", test.load_image(0))
  proc = _cli(f"--workdir={workdir}", f"--image={tmp_path / 'f.npy'}",
              "--caption=a red circle")
  assert proc.returncode == 1
  assert proc.stderr.strip().splitlines()[-1].startswith("Error: ")
  assert "--features=FILE.npy or --image_id=N" in proc.stderr
