"""The tests' data sets in the on-disk layouts the readers read (the synthetic scenes
set rewritten as Flickr8k's release, a TFDS-prepared coco_captions, and as SCAN precomp
features with gralign_jax.data.precomp.write_precomp and toy_region_features):

  write_flickr8k(root, {"train": split, ...})
                                          captions.txt, Flickr_8k.{name}Images.txt,
                                          images/<id>_<file name>
  write_tfds(data_dir, {"train": split, "dev": split, ...})
                                          data_dir/coco_captions/2014/1.1.0/...

`toy_region_features` stands in for a Faster R-CNN: it turns an image
into (R, D) "region" vectors (grid cells through a fixed random projection), enough for
a model to learn from in a test; real BUTD features come from SCAN's release.
"""
import os
from typing import Mapping

import numpy as np

from gralign_jax.data import split as split_lib

# Karpathy split names of coco_captions, for ours.
TFDS_SPLITS = {"train": "train", "dev": "val", "test": "test", "restval": "restval"}


def toy_region_features(image: np.ndarray, shape=(36, 2048), seed: int = 0) -> np.ndarray:
  """uint8 (H, W, 3) -> float32 (R, D): R grid cells, each 4x4x3 pixels projected to D."""
  r, d = shape
  rows = int(np.floor(np.sqrt(r)))
  while r % rows:
    rows -= 1
  cols = r // rows
  h, w = image.shape[0] // rows, image.shape[1] // cols
  cells = []
  for i in range(rows):
    for j in range(cols):
      cell = image[i * h:(i + 1) * h, j * w:(j + 1) * w].astype(np.float32) / 255.0
      ys = np.linspace(0, cell.shape[0] - 1, 4).astype(int)
      xs = np.linspace(0, cell.shape[1] - 1, 4).astype(int)
      cells.append(cell[ys][:, xs].reshape(-1) - 0.5)
  proj = np.random.default_rng(seed).normal(0, 1 / np.sqrt(48), (48, d)).astype(np.float32)
  return np.maximum(np.stack(cells) @ proj, 0.0).astype(np.float32)


def write_flickr8k(root: str, splits: Mapping[str, split_lib.Split]) -> None:
  """Flickr8k's layout as Kaggle ships it: captions.txt (CSV `image,caption`, the csv
  module quoting captions that hold a comma), one Flickr_8k.{name}Images.txt list per
  split ("dev" for dev), and the images under images/, named <image id>_<file name>
  so that the reader's ids (the names' leading integers) are the splits' own. Image
  files are hard-linked where the file system allows, else copied."""
  import csv  # pylint: disable=g-import-not-at-top
  import shutil  # pylint: disable=g-import-not-at-top
  folder = os.path.join(root, "images")
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(root, "captions.txt"), "w", newline="", encoding="utf-8") as f:
    rows = csv.writer(f, lineterminator="\n")
    rows.writerow(["image", "caption"])
    for name, split in splits.items():
      names = [f"{i}_{os.path.basename(p)}" for i, p in zip(split.image_ids,
                                                            split.image_paths)]
      for k, (path, new) in enumerate(zip(split.image_paths, names)):
        target = os.path.join(folder, new)
        try:
          os.link(path, target)
        except OSError:
          shutil.copyfile(path, target)
        cpi = split.captions_per_image
        rows.writerows([new, c] for c in split.captions[k * cpi:(k + 1) * cpi])
      with open(os.path.join(root, f"Flickr_8k.{name}Images.txt"), "w",
                encoding="utf-8") as lst:
        lst.write("".join(n + "\n" for n in names))


def _builder_class(splits: Mapping[str, split_lib.Split]):
  """A GeneratorBasedBuilder named coco_captions, with coco_captions' features.

  The features are those of tfds' own CocoCaptions (COCO 2014 + Karpathy captions),
  declared with NumPy dtypes: the registered class names tf.int64 and so needs
  TensorFlow, which writing array_record does not.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  from tensorflow_datasets.core import registered  # pylint: disable=g-import-not-at-top

  with registered.skip_registration():
    class CocoCaptions(tfds.core.GeneratorBasedBuilder):
      """coco_captions/2014 written from Splits."""
      name = "coco_captions"
      VERSION = tfds.core.Version("1.1.0")
      BUILDER_CONFIGS = [tfds.core.BuilderConfig(name="2014")]
      # No checksums or docs next to the code: tfds would look for them through
      # importlib_resources, which is not installed with it.
      code_path = None

      def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(encoding_format="jpeg"),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence({
                "id": np.int64, "area": np.int64, "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(num_classes=80), "is_crowd": np.bool_}),
            "captions": tfds.features.Sequence({"text": np.str_, "id": np.int64}),
        }))

      def _split_generators(self, dl_manager):
        del dl_manager
        return [tfds.core.SplitGenerator(TFDS_SPLITS.get(ours, ours),
                                         gen_kwargs={"split": ours}) for ours in splits]

      def _generate_examples(self, split):
        s = splits[split]
        cpi = s.captions_per_image
        for i, (path, image_id) in enumerate(zip(s.image_paths, s.image_ids)):
          caps = s.captions[i * cpi:(i + 1) * cpi]
          yield f"{split}/{i}", {
              "image": path, "image/filename": os.path.basename(path),
              "image/id": int(image_id), "objects": [],
              "captions": [{"text": c, "id": i * cpi + k} for k, c in enumerate(caps)]}

  return CocoCaptions


def write_tfds(data_dir: str, splits: Mapping[str, split_lib.Split]) -> str:
  """A TFDS-prepared coco_captions (array_record) of image-file splits -> its folder.

  Split names: ours ("train", "dev", "test", "restval") become coco_captions' Karpathy
  names ("train", "val", "test", "restval"). Needs tensorflow-datasets, not TensorFlow.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tfds.disable_progress_bar()
  builder = _builder_class(splits)(data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare()
  return str(builder.data_dir)
