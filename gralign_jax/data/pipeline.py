"""grain input pipelines: a Split on disk -> batches of (image, caption) pairs.

Training iterates over captions (each caption with its image, as VSE++ and its
successors do), reshuffled every epoch, with a deterministic order that depends only on
the seed: the iterator's state is saved with each checkpoint, so a resumed run sees
exactly the batches an uninterrupted run would have seen. Each host reads only its
share of the records (record g goes to host g % process_count).

Captions are tokenised once, up front, in the main process; images are decoded and
augmented per record (in grain worker processes when `data.num_workers > 0`).
Batches leave the pipeline as uint8 images and int32 ids: normalisation happens on the
device, inside the jitted step, so host-to-device traffic stays small. Images are resized
with `data.resize_method` (the vision checkpoint's filter, images.py). The same code
serves all four formats (readers.py): a "precomp" split yields its float32 (R, D)
region features in the "image" slot, unaugmented.
"""
import dataclasses
from typing import Iterator, Sequence

from absl import flags
import grain
import jax
import ml_collections
import numpy as np

from gralign_jax import configs
from gralign_jax import logs
from gralign_jax.data import false_captions
from gralign_jax.data import images as images_lib
from gralign_jax.data import readers
from gralign_jax.data import text


@dataclasses.dataclass(frozen=True)
class EncodedCaptions:
  """A split's captions, tokenised: ids/mask (M, max_len), caption c -> image c // cpi."""
  ids: np.ndarray
  mask: np.ndarray
  num_truncated: int


def encode_captions(captions: Sequence[str], tokenizer,
                    max_len: int) -> EncodedCaptions:
  """Captions (a split's, or any list) -> EncodedCaptions, tokenised once."""
  ids, mask, truncated = text.tokenize(tokenizer, list(captions), max_len)
  return EncodedCaptions(ids.astype(np.int32), mask.astype(bool), int(truncated.sum()))


@dataclasses.dataclass(frozen=True)
class FalseCaptions:
  """Each caption of a split made false in K ways, tokenised: ids / mask (M, K, L);
  valid (M, K) bool: whether caption m has a false caption of kind kinds[k];
  weights (K,): a caption's false captions are drawn among the kinds it has with
  probability proportional to these; per_caption: how many a training row carries."""
  ids: np.ndarray
  mask: np.ndarray
  valid: np.ndarray
  kinds: tuple[str, ...]
  weights: np.ndarray
  per_caption: int = 1

  def draw(self, c: int, rng: np.random.Generator) -> dict:
    """Caption c's per_caption false captions, distinct kinds drawn one after another
    in proportion to their weights -> false_ids int32 (n, L), false_mask bool (n, L),
    false_valid bool (n,) (False, and padding, past the kinds the caption has)."""
    kinds, picked = list(np.flatnonzero(self.valid[c])), []
    for _ in range(min(self.per_caption, len(kinds))):
      cum = np.cumsum(self.weights[kinds])
      picked.append(kinds.pop(int(np.searchsorted(cum, rng.random() * cum[-1],
                                                   side="right"))))
    valid = np.arange(self.per_caption) < len(picked)
    k = np.asarray(picked + [0] * (self.per_caption - len(picked)), np.int64)
    return dict(false_ids=np.where(valid[:, None], self.ids[c, k], 0),
                false_mask=self.mask[c, k] & valid[:, None], false_valid=valid)


def encode_false_captions(made: false_captions.Perturbed, num_captions: int,
                          kinds: Sequence[str], tokenizer, max_len: int,
                          weights: Sequence[float] | None = None,
                          per_caption: int = 1) -> FalseCaptions:
  """false_captions.build's captions (at most one per kind per caption) -> FalseCaptions
  over the split's num_captions captions, tokenised once; weights per kind (default
  all 1: kinds drawn uniformly among those a caption has), per_caption drawn per row."""
  enc = encode_captions(made.text, tokenizer, max_len)
  ids = np.zeros((num_captions, len(kinds), max_len), np.int32)
  mask = np.zeros((num_captions, len(kinds), max_len), bool)
  valid = np.zeros((num_captions, len(kinds)), bool)
  k = np.asarray([kinds.index(kind) for kind in made.kind], np.int64)
  ids[made.caption, k], mask[made.caption, k], valid[made.caption, k] = (
      enc.ids, enc.mask, True)
  weights = np.ones(len(kinds)) if weights is None else np.asarray(weights, np.float64)
  return FalseCaptions(ids, mask, valid, tuple(kinds), weights, per_caption)


_WARNED: set = set()  # images already reported bad by this process
_MAX_BAD_IN_A_ROW = 100


def _load_or_skip(split: readers.Split, i: int, skip: bool) -> np.ndarray | None:
  """split.load_image(i); with skip, None (and one warning per image) if it is bad."""
  try:
    return split.load_image(i)
  except images_lib.ImageDecodeError as e:
    if not skip:
      raise
    if split.image_paths[i] not in _WARNED:
      _WARNED.add(split.image_paths[i])
      logs.warning(f"Skipping a bad image (data.skip_bad_images=True): {e}")
    return None


@dataclasses.dataclass(frozen=True)
class _TrainExample:
  """Record index -> one augmented (image, caption) pair. Picklable for worker processes.

  With skip_bad_images, a caption whose image cannot be read is replaced by the same
  caption slot of the next readable image, so batches keep their size and every host
  its step count; "bad_images" counts the failed reads behind this record (a bad
  image is met once per caption per epoch). With `false`, the record also holds
  false.per_caption of its caption's false captions (FalseCaptions.draw: "false_ids",
  "false_mask", "false_valid").
  """
  split: readers.Split
  captions: EncodedCaptions
  image_size: int
  crop_scale: tuple[float, float]
  hflip: bool
  skip_bad_images: bool = False
  resize_method: str = "bilinear"
  false: FalseCaptions | None = None

  def __call__(self, index: int, rng: np.random.Generator) -> dict:
    cpi, n = self.split.captions_per_image, self.split.num_images
    c = int(index) % self.split.num_captions
    i, bad = c // cpi, 0
    image = _load_or_skip(self.split, i, self.skip_bad_images)
    while image is None:
      bad += 1
      if bad >= min(n, _MAX_BAD_IN_A_ROW):
        raise images_lib.ImageDecodeError(
            f"{bad} unreadable images in a row, from {self.split.image_paths[c // cpi]} "
            f"on (split {self.split.name!r}); data.skip_bad_images passes over a few "
            "bad files, not a broken data set.")
      i = (i + 1) % n
      image = _load_or_skip(self.split, i, self.skip_bad_images)
    c = i * cpi + c % cpi
    if self.split.kind == "pixels":  # region features are used as they are
      image = images_lib.random_resized_crop(image, rng, self.image_size,
                                             scale=tuple(self.crop_scale),
                                             method=self.resize_method)
      if self.hflip and rng.random() < 0.5:
        image = images_lib.hflip(image)
    out = {"image": image, "ids": self.captions.ids[c], "mask": self.captions.mask[c],
           "image_id": np.int32(i), "caption_id": np.int32(c),
           "bad_images": np.int32(bad)}
    if self.false is not None:  # drawn after the crop: the crops stay those of a run without
      out.update(self.false.draw(c, rng))
    return out


@dataclasses.dataclass(frozen=True)
class _EvalImage:
  """Image index -> resized image (no augmentation), or its region features.

  With skip_bad_images an unreadable image becomes zeros (the protocol needs every
  image in its place), counted in "bad_images".
  """
  split: readers.Split
  image_size: int
  skip_bad_images: bool = False
  feature_shape: tuple[int, int] = (36, 2048)
  resize_method: str = "bilinear"

  def __call__(self, index: int) -> dict:
    if index >= self.split.num_images:  # padding of the last global batch (many hosts)
      shape = (self.feature_shape if self.split.kind == "features"
               else (self.image_size, self.image_size, 3))
      dtype = np.float32 if self.split.kind == "features" else np.uint8
      return {"image": np.zeros(shape, dtype), "index": np.int32(-1),
              "bad_images": np.int32(0)}
    image = _load_or_skip(self.split, int(index), self.skip_bad_images)
    bad = image is None
    if self.split.kind == "features":
      image = np.zeros(self.feature_shape, np.float32) if bad else image
    elif bad:
      image = np.zeros((self.image_size, self.image_size, 3), np.uint8)
    else:
      image = images_lib.resize(image, self.image_size, self.resize_method)
    return {"image": image, "index": np.int32(index), "bad_images": np.int32(bad)}


@dataclasses.dataclass(frozen=True)
class _HostRows:
  """Local record k of host p -> record (k // b) * B + p * b + k % b of the global
  stream: host p holds rows [p*b, (p+1)*b) of every global batch of B = P * b, so the
  batches that P hosts assemble equal, row for row, those of one process."""
  records: grain.MapDataset
  global_batch: int
  local_batch: int
  process: int

  def __call__(self, k: int):
    step, row = divmod(int(k), self.local_batch)
    return self.records[step * self.global_batch + self.process * self.local_batch + row]


def _resize_method(config: ml_collections.ConfigDict) -> str:
  # Run directories written before data.resize_method existed resized bilinearly.
  return str(config.data.get("resize_method", "bilinear"))


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
                   config: ml_collections.ConfigDict, *, seed: int,
                   false: FalseCaptions | None = None) -> grain.DatasetIterator:
  """Endless iterator of this host's training batches.

  Yields dicts: image uint8 (b, S, S, 3) (features: float32 (b, R, D)), ids int32
  (b, L), mask bool (b, L), image_id and caption_id int32 (b,), bad_images int32 (b,)
  (images passed over, see _TrainExample), where b = train.batch_size / process_count;
  with `false` (loss.hard_negatives) also false_ids int32 (b, n, L), false_mask bool
  (b, n, L) and false_valid bool (b, n): n = loss.hard_negatives_per_caption false
  captions of each row's caption.
  `get_state()` / `set_state()` give its position for checkpoints.
  """
  configs.require_final(config, "pipeline.train_iterator")
  process_count = jax.process_count()
  global_batch = config.train.batch_size
  if global_batch % process_count:
    raise ValueError(f"train.batch_size={global_batch} must be a multiple of the number "
                     f"of hosts ({process_count}).")
  ds = grain.MapDataset.range(split.num_captions).shuffle(seed=seed).repeat()
  # Augment before sharding: a record's crop depends on its global position only, not
  # on how many hosts share the stream.
  ds = ds.random_map(_TrainExample(split, captions, config.data.image_size,
                                   tuple(config.data.crop_scale), bool(config.data.hflip),
                                   bool(config.data.skip_bad_images),
                                   _resize_method(config), false), seed=seed)
  local = global_batch // process_count
  ds = grain.MapDataset.range(len(ds) // global_batch * local).map(
      _HostRows(ds, global_batch, local, jax.process_index()))
  ds = ds.batch(local, drop_remainder=True)
  it = ds.to_iter_dataset(_read_options(config))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(_worker_options(config))
  return iter(it)


def eval_image_batches(split: readers.Split, config: ml_collections.ConfigDict,
                       batch_size: int, process: int = 0,
                       process_count: int = 1) -> Iterator[dict]:
  """All images of a split in order, resized: image uint8 (b, S, S, 3) (features:
  float32 (b, R, D)), index int32 (b,), bad_images int32 (b,).

  One process: b = batch_size, the last batch may be short (the caller pads it).
  Several: host `process` reads only its rows [p*b, (p+1)*b) of every global batch of
  batch_size (b = batch_size / process_count); rows past the last image are zeros
  with index -1, so every host yields the same number of full batches.
  """
  configs.require_final(config, "pipeline.eval_image_batches")
  example = _EvalImage(split, config.data.image_size, bool(config.data.skip_bad_images),
                       tuple(config.data.feature_shape), _resize_method(config))
  if process_count == 1:
    ds = grain.MapDataset.range(split.num_images).map(example).batch(batch_size)
  else:
    local = batch_size // process_count
    steps = -(-split.num_images // batch_size)
    ds = grain.MapDataset.range(steps * local).map(
        _HostRows(grain.MapDataset.range(steps * batch_size), batch_size, local,
                  process)).map(example).batch(local)
  it = ds.to_iter_dataset(_read_options(config))
  if config.data.num_workers > 0:
    it = it.mp_prefetch(_worker_options(config))
  return iter(it)
