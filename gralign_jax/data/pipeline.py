"""grain input pipelines: a Split on disk -> batches of (image, caption) pairs.

Training iterates over captions (each caption with its image, as VSE++ and its
successors do), reshuffled every epoch, with a deterministic order that depends only on
the seed: the iterator's state is saved with each checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would have seen. Each host reads only its
share of the records (record g goes to host g % process_count).

Captions are tokenised once, up front, in the main process; images are decoded and
augmented per record (in grain worker processes when `data.num_workers > 0`).
Batches leave the pipeline as uint8 images and int32 ids: normalisation happens on the
device, inside the jitted step, so host-to-device traffic stays small.
"""
import dataclasses
from typing import Iterator

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from gralign_jax.data import images as images_lib
from gralign_jax.data import readers
from gralign_jax.data import text


@dataclasses.dataclass(frozen=True)
class EncodedCaptions:
  """A split's captions, tokenised: ids/mask (M, max_len), caption c -> image c // cpi."""
  ids: np.ndarray
  mask: np.ndarray
  num_truncated: int


def encode_captions(split: readers.Split, tokenizer, max_len: int) -> EncodedCaptions:
  ids, mask, truncated = text.tokenize(tokenizer, list(split.captions), max_len)
  return EncodedCaptions(ids.astype(np.int32), mask.astype(bool), int(truncated.sum()))


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Record index -> one augmented (image, caption) pair. Picklable for worker processes."""
  split: readers.Split
  captions: EncodedCaptions
  image_size: int
  crop_scale: tuple[float, float]
  hflip: bool

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    c = int(index) % self.split.num_captions
    i = c // self.split.captions_per_image
    image = images_lib.decode_image(self.split.image_paths[i])
    image = images_lib.random_resized_crop(image, rng, self.image_size,
                                           scale=tuple(self.crop_scale))
    if self.hflip and rng.random() < 0.5:
      image = images_lib.hflip(image)
    return {"image": image, "ids": self.captions.ids[c], "mask": self.captions.mask[c],
            "image_id": np.int32(i)}


@dataclasses.dataclass(frozen=True)
class _EvalImage:
  """Image index -> resized image (no augmentation)."""
  split: readers.Split
  image_size: int

  def __call__(self, index: int) -> dict:
    image = images_lib.decode_image(self.split.image_paths[int(index)])
    return {"image": images_lib.resize(image, self.image_size), "index": np.int32(index)}


def _worker_options(config: ml_collections.ConfigDict) -> grain.MultiprocessingOptions:
  # grain's workers read absl flags; outside an absl main (tests, notebooks) nothing
  # has parsed them, so take the defaults.
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  return grain.MultiprocessingOptions(num_workers=config.data.num_workers)


def _read_options(config: ml_collections.ConfigDict) -> grain.ReadOptions:
  return grain.ReadOptions(num_threads=max(1, config.data.num_threads),
                           prefetch_buffer_size=max(1, int(config.data.prefetch)))


def train_iterator(split: readers.Split, captions: EncodedCaptions,
                   config: ml_collections.ConfigDict, *, seed: int) -> grain.DatasetIterator:
  """Endless iterator of this host's training batches.

  Yields dicts: image uint8 (b, S, S, 3), ids int32 (b, L), mask bool (b, L),
  image_id int32 (b,), where b = train.batch_size / process_count.
  `get_state()` / `set_state()` give its position for checkpoints.
  """
  process_count = jax.process_count()
  global_batch = config.train.batch_size
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} must be a multiple of the number "
                     f"of hosts ({process_count}).")
  ds = grain.MapDataset.range(split.num_captions).shuffle(seed=seed).repeat()
  # Augment before sharding: a record's crop depends on its global position only, not
  # on how many hosts share the stream.
  ds = ds.random_map(_TrainExample(split, captions, config.data.image_size,
                                   tuple(config.data.crop_scale), bool(config.data.hflip)),
                     seed=seed)
  ds = ds[jax.process_index()::process_count]
  ds = ds.batch(global_batch // process_count, drop_remainder=True)
  it = ds.to_iter_dataset(_read_options(config))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(_worker_options(config))
  return iter(it)


def eval_image_batches(split: readers.Split, config: ml_collections.ConfigDict,
                       batch_size: int) -> Iterator[dict]:
  """All images of a split in order, resized: image uint8 (b, S, S, 3), index (b,).

  The last batch may be short; the caller pads it.
  """
  ds = grain.MapDataset.range(split.num_images).map(
      _EvalImage(split, config.data.image_size)).batch(batch_size)
  it = ds.to_iter_dataset(_read_options(config))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(_worker_options(config))
  return iter(it)
