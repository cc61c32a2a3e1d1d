"""Tests of image decoding, crops, resizing, flips and normalisation."""
import os

import numpy as np
from PIL import Image, ImageFile
import pytest

from experiments.configs import common
from gralign_jax.data import images


def _picture(h=48, w=64, seed=0):
  rng = np.random.default_rng(seed)
  # Smooth content (JPEG-friendly) plus a little noise.
  yy, xx = np.mgrid[0:h, 0:w]
  base = np.stack([xx * 255 / w, yy * 255 / h, (xx + yy) * 255 / (w + h)], -1)
  return np.clip(base + rng.normal(0, 3, base.shape), 0, 255).astype(np.uint8)


def test_decode_png_lossless(tmp_path):
  img = _picture()
  path = str(tmp_path / "a.png")
  Image.fromarray(img).save(path)
  out = images.decode_image(path)
  assert out.dtype == np.uint8 and out.shape == (48, 64, 3)
  np.testing.assert_array_equal(out, img)


def test_decode_converts_to_rgb(tmp_path):
  grey = (np.arange(32 * 16) % 256).reshape(16, 32).astype(np.uint8)
  path = str(tmp_path / "g.png")
  Image.fromarray(grey, "L").save(path)
  out = images.decode_image(path)
  assert out.shape == (16, 32, 3)
  np.testing.assert_array_equal(out[..., 1], grey)


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_sixteen_bit_greyscale_is_scaled_not_clipped_to_white(tmp_path, suffix):
  # PIL opens these as mode I;16 (PNG) or I (TIFF); its convert("RGB") clips every
  # value above 255 to white. Expected: round(v * 255 / 65535) in each channel.
  grey = (np.arange(24 * 40).reshape(24, 40) * 68).astype(np.uint16)
  path = str(tmp_path / f"g16{suffix}")
  Image.fromarray(grey if suffix == ".png" else grey.astype(np.int32)).save(path)
  with Image.open(path) as opened:
    assert opened.mode in images.SIXTEEN_BIT_MODES
  out = images.decode_image(path)
  expected = np.round(grey.astype(np.float64) * 255 / 65535).astype(np.uint8)
  assert out.shape == (24, 40, 3)
  for channel in range(3):
    np.testing.assert_array_equal(out[..., channel], expected)
  assert out.min() == 0 and out.max() == round(int(grey.max()) * 255 / 65535) < 255


def test_floating_point_pixels_are_refused(tmp_path):
  path = str(tmp_path / "f.tif")
  Image.fromarray(np.full((8, 8), 0.5, np.float32)).save(path)
  with pytest.raises(images.ImageDecodeError, match=r"f\.tif.*floating point.*expected 8- or 16-bit"):
    images.decode_image(path)


def test_a_named_pipe_is_refused_not_waited_on(tmp_path):
  os.mkfifo(tmp_path / "pipe.jpg")  # open() would block until a writer came
  with pytest.raises(images.ImageDecodeError, match=r"pipe\.jpg is a named pipe \(FIFO\)"):
    images.decode_image(str(tmp_path / "pipe.jpg"))


def test_decode_jpeg_within_tolerance(tmp_path):
  img = _picture()
  path = str(tmp_path / "a.jpg")
  Image.fromarray(img).save(path, quality=95)
  out = images.decode_image(path)
  assert out.shape == img.shape
  assert np.abs(out.astype(int) - img).mean() < 4


def test_truncated_jpeg_raises(tmp_path):
  path = tmp_path / "t.jpg"
  Image.fromarray(_picture(128, 128)).save(path, quality=95)
  data = path.read_bytes()
  path.write_bytes(data[:len(data) // 2])
  assert not ImageFile.LOAD_TRUNCATED_IMAGES
  with pytest.raises(images.ImageDecodeError, match=str(path)):
    images.decode_image(str(path))


def test_garbage_and_missing_raise(tmp_path):
  path = tmp_path / "g.jpg"
  path.write_bytes(b"this is not an image at all" * 10)
  with pytest.raises(images.ImageDecodeError, match=f"{path}.*UnidentifiedImageError"):
    images.decode_image(str(path))
  with pytest.raises(images.ImageDecodeError, match="nope.jpg does not exist"):
    images.decode_image(str(tmp_path / "nope.jpg"))


def test_a_folder_named_like_an_image_raises(tmp_path):
  path = tmp_path / "x.jpg"
  path.mkdir()
  with pytest.raises(images.ImageDecodeError) as e:
    images.decode_image(str(path))
  assert str(e.value) == f"Image file {path} is a folder, expected a file."


@pytest.mark.parametrize("error, reason", [
    (PermissionError(13, "Permission denied"), "cannot be read (permission denied)"),
    (OSError(5, "Input/output error"), "cannot be read: OSError: Input/output error"),
])
def test_unreadable_files_raise(tmp_path, monkeypatch, error, reason):
  """What a user without read permission (or a failing disk) meets; simulated, because
  tests may run as root, who reads any file."""
  path = tmp_path / "a.png"
  Image.fromarray(_picture()).save(path)

  def fake_open(p, *args, **kwargs):
    raise error

  monkeypatch.setattr(images, "open", fake_open, raising=False)
  with pytest.raises(images.ImageDecodeError) as e:
    images.decode_image(str(path))
  assert str(e.value) == f"Image file {path} {reason}."


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file_for_real(tmp_path):
  path = tmp_path / "a.png"
  Image.fromarray(_picture()).save(path)
  path.chmod(0)
  with pytest.raises(images.ImageDecodeError, match="permission denied"):
    images.decode_image(str(path))


def test_load_truncated_images_guard(tmp_path, monkeypatch):
  path = str(tmp_path / "a.png")
  Image.fromarray(_picture()).save(path)
  monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
  with pytest.raises(images.ImageDecodeError, match="LOAD_TRUNCATED_IMAGES"):
    images.decode_image(path)


def test_crop_shape_and_determinism():
  img = _picture()
  a = images.random_resized_crop(img, np.random.default_rng(7), 32)
  b = images.random_resized_crop(img, np.random.default_rng(7), 32)
  c = images.random_resized_crop(img, np.random.default_rng(8), 32)
  assert a.shape == (32, 32, 3) and a.dtype == np.uint8
  np.testing.assert_array_equal(a, b)
  assert not np.array_equal(a, c)


def test_crop_boxes_inside_and_in_range():
  rng = np.random.default_rng(0)
  for h, w in ((48, 64), (64, 64), (20, 200), (200, 20)):
    for _ in range(200):
      top, left, ch, cw = images.sample_crop_box(h, w, rng, (0.6, 1.0), (3 / 4, 4 / 3))
      assert 0 <= top and top + ch <= h and 0 <= left and left + cw <= w
      assert ch > 0 and cw > 0
      if (h, w) == (64, 64):  # no fallback here: area and ratio as asked
        assert 0.6 * 64 * 64 * 0.9 <= ch * cw <= 64 * 64
        assert 3 / 4 * 0.9 <= cw / ch <= 4 / 3 * 1.1


def test_crop_fallback_is_centre():
  # Ratio range excludes the image's shape and scale 1 cannot fit: centre crop.
  top, left, h, w = images.sample_crop_box(20, 200, np.random.default_rng(0), (1.0, 1.0),
                                           (3 / 4, 4 / 3))
  assert (h, w) == (20, 27) and left == (200 - 27) // 2 and top == 0


def test_crop_matches_manual_crop_and_resize():
  img = _picture()
  out = images.random_resized_crop(img, np.random.default_rng(3), 24)
  top, left, h, w = images.sample_crop_box(48, 64, np.random.default_rng(3))
  manual = Image.fromarray(img[top:top + h, left:left + w]).resize((24, 24),
                                                                  Image.BILINEAR)
  np.testing.assert_array_equal(out, np.asarray(manual))


def test_crop_never_reads_outside_the_region():
  # A bright frame around a dark image: a crop that excludes the frame stays dark.
  img = np.full((40, 40, 3), 255, np.uint8)
  img[1:-1, 1:-1] = 0
  rng = np.random.default_rng(0)
  inside = 0
  for _ in range(50):
    seed = int(rng.integers(1 << 30))
    top, left, h, w = images.sample_crop_box(40, 40, np.random.default_rng(seed))
    out = images.random_resized_crop(img, np.random.default_rng(seed), 16)
    touches = top == 0 or left == 0 or top + h == 40 or left + w == 40
    if not touches:
      assert out.max() == 0
      inside += 1
  assert inside > 10


def test_resize_and_hflip():
  img = _picture()
  r = images.resize(img, 32)
  assert r.shape == (32, 32, 3) and r.dtype == np.uint8
  np.testing.assert_array_equal(
      r, np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR)))
  sq = img[:, :48]
  assert images.resize(sq, 48) is sq
  f = images.hflip(img)
  np.testing.assert_array_equal(f, img[:, ::-1])
  assert f.flags.c_contiguous
  np.testing.assert_array_equal(images.hflip(f), img)


def test_normalize_matches_numpy():
  batch = np.stack([_picture(8, 8, s) for s in range(3)])
  mean, std = (0.48, 0.45, 0.40), (0.27, 0.26, 0.28)
  out = images.normalize(batch, mean, std)
  want = (batch.astype(np.float32) / 255 - np.array(mean)) / np.array(std)
  assert out.dtype == np.float32 and out.shape == (3, 8, 8, 3)
  np.testing.assert_allclose(np.asarray(out), want, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------
# Resize filter and normalisation follow the vision checkpoint (data.resize_method,
# data.pixel_mean / pixel_std, preprocessor_config.json).
# ---------------------------------------------------------------------------
def test_resize_and_crop_take_the_configured_filter():
  img = _picture()
  for method, flt in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
    np.testing.assert_array_equal(
        images.resize(img, 32, method),
        np.asarray(Image.fromarray(img).resize((32, 32), flt)))
    out = images.random_resized_crop(img, np.random.default_rng(3), 24, method=method)
    top, left, h, w = images.sample_crop_box(48, 64, np.random.default_rng(3))
    want = Image.fromarray(img[top:top + h, left:left + w]).resize((24, 24), flt)
    np.testing.assert_array_equal(out, np.asarray(want))
  assert not np.array_equal(images.resize(img, 32, "bicubic"), images.resize(img, 32))
  with pytest.raises(ValueError, match="resize_method"):
    images.resize(img, 32, "cubic")


# The preprocessor_config.json files of the paper's checkpoints, as the Hub has them
# (Swin's states resample 3; ViT in21k's leaves it out).
SWIN_PREPROCESSOR = {"do_normalize": True, "do_resize": True,
                     "feature_extractor_type": "ViTFeatureExtractor",
                     "image_mean": [0.485, 0.456, 0.406],
                     "image_std": [0.229, 0.224, 0.225], "resample": 3, "size": 224}
VIT_PREPROCESSOR = {"do_normalize": True, "do_resize": True,
                    "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
                    "size": 224}


def test_preprocessor_settings_from_hugging_face_files():
  assert images.preprocessor_settings(SWIN_PREPROCESSOR) == {
      "pixel_mean": (0.485, 0.456, 0.406), "pixel_std": (0.229, 0.224, 0.225),
      "resize_method": "bicubic", "image_size": 224}
  assert images.preprocessor_settings(VIT_PREPROCESSOR) == {
      "pixel_mean": (0.5, 0.5, 0.5), "pixel_std": (0.5, 0.5, 0.5), "image_size": 224}
  assert images.preprocessor_settings(
      {"resample": 2, "size": {"height": 384, "width": 384}}) == {
          "resize_method": "bilinear", "image_size": 384}
  assert images.preprocessor_settings({"do_normalize": False, "image_mean": 0.3}) == {
      "pixel_mean": (0.0, 0.0, 0.0), "pixel_std": (1.0, 1.0, 1.0)}
  with pytest.raises(ValueError, match="resample"):
    images.preprocessor_settings({"resample": 9})


def _checkpoint(folder, preprocessor=None):
  import json
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump({"model_type": "swin"}, f)
  if preprocessor is not None:
    with open(os.path.join(folder, "preprocessor_config.json"), "w") as f:
      json.dump(preprocessor, f)
  return str(folder)


def test_the_checkpoint_preprocessor_config_wins(tmp_path):
  from gralign_jax import configs
  config = configs.finalize(common.paper_config("flickr30k", "swin224"))
  # Something else in the config, to see the file win.
  config.data.update(pixel_mean=(0.5, 0.5, 0.5), pixel_std=(0.5, 0.5, 0.5),
                     resize_method="bilinear")
  config.model.vision.weights = _checkpoint(tmp_path / "swin", SWIN_PREPROCESSOR)
  notes = []
  changes = configs.resolve_preprocessing(config, notes.append)
  assert (config.data.pixel_mean, config.data.pixel_std, config.data.resize_method) == (
      (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bicubic")
  assert set(changes) == {"data.pixel_mean", "data.pixel_std", "data.resize_method"}
  assert len(notes) == 3
  configs.finalize(config)
  # Again: nothing left to change.
  assert configs.resolve_preprocessing(config, notes.append) == {}
  # At 384 the size differs from the file's: only said.
  config.data.image_size = config.model.vision.image_size = 384
  configs.resolve_preprocessing(config, notes.append)
  assert "prepared at 224" in notes[-1]


def test_without_a_file_or_with_preprocessor_config_the_presets_stay(tmp_path):
  from gralign_jax import configs
  config = common.paper_config("flickr30k", "vit224")
  config.model.vision.weights = _checkpoint(tmp_path / "vit")
  before = config.data.to_dict()
  assert configs.resolve_preprocessing(config) == {}
  assert config.data.to_dict() == before
  config.model.vision.weights = _checkpoint(tmp_path / "swin", SWIN_PREPROCESSOR)
  config.data.preprocessor = "config"
  assert configs.resolve_preprocessing(config) == {}
  assert config.data.to_dict() == dict(before, preprocessor="config")
  # The demo: no weights, nothing read.
  demo = configs.base_config()
  assert configs.resolve_preprocessing(demo) == {}


class _FakeSplit:
  kind, name, num_images, num_captions, captions_per_image = "pixels", "fake", 3, 3, 1

  def __init__(self):
    self.images = [_picture(40, 56, s) for s in range(3)]
    self.image_paths = [f"{i}.png" for i in range(3)]

  def load_image(self, i):
    return self.images[i]


def test_the_pipeline_resizes_with_data_resize_method():
  from gralign_jax import configs
  from gralign_jax.data import pipeline
  split = _FakeSplit()
  for method, flt in (("bicubic", Image.BICUBIC), ("bilinear", Image.BILINEAR)):
    config = configs.base_config()
    config.model.vision.image_size = 24  # data.image_size follows
    config.data.update(resize_method=method, num_workers=0)
    assert configs.finalize(config).data.image_size == 24
    batch = next(pipeline.eval_image_batches(split, config, batch_size=3))
    for i in range(3):
      want = Image.fromarray(split.images[i]).resize((24, 24), flt)
      np.testing.assert_array_equal(batch["image"][i], np.asarray(want))
    captions = type("C", (), {"ids": np.zeros((3, 4), np.int32),
                              "mask": np.ones((3, 4), bool)})()
    example = pipeline._TrainExample(  # pylint: disable=protected-access
        split, captions, 24, (0.6, 1.0), False, resize_method=method)
    out = example(1, np.random.default_rng(5))["image"]
    want = images.random_resized_crop(split.images[1], np.random.default_rng(5), 24,
                                      (0.6, 1.0), method=method)
    np.testing.assert_array_equal(out, want)


def test_run_directories_without_resize_method_resize_bilinearly():
  """A config.json written before data.resize_method existed (retrieval loads those)."""
  import ml_collections

  from gralign_jax import configs
  from gralign_jax.data import pipeline
  d = configs.base_config().to_dict()
  del d["data"]["resize_method"], d["finalized"]  # neither key existed then
  config = ml_collections.ConfigDict(d)
  config.data.update(image_size=24, num_workers=0)
  split = _FakeSplit()
  batch = next(pipeline.eval_image_batches(split, config, batch_size=3))
  want = Image.fromarray(split.images[0]).resize((24, 24), Image.BILINEAR)
  np.testing.assert_array_equal(batch["image"][0], np.asarray(want))
