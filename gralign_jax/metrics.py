"""Run logging: metrics.jsonl and TensorBoard event files, written by process 0 only.

Every record carries `step` and `split` ("train", "dev", "test"), so a notebook can
read the run back with `pandas.read_json(path, lines=True)`. There is one record per
(step, split): a resumed run replays the steps after its last checkpoint bit for bit,
and their records, already written before the interruption, are not written again.
"""
import io
import json
import time
from typing import Mapping

import jax
import numpy as np

from gralign_jax import paths


def _plain(value):
  """numpy / jax scalars -> Python numbers, so that json can write them."""
  if isinstance(value, (np.generic, np.ndarray, jax.Array)):
    value = np.asarray(value)
    return value.item() if value.ndim == 0 else value.tolist()
  return value


class MetricWriter:
  """Appends one JSON object per (step, split) to `<workdir>/metrics.jsonl` and to
  TensorBoard; a (step, split) already in the file is not written again."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self._tb = self._bucket = None
    if not self._active:
      return
    paths.makedirs(workdir)
    self._path = paths.join(workdir, "metrics.jsonl")
    self._written = set()
    if paths.exists(self._path):
      text = paths.read_text(self._path)
      self._written = {(r.get("step"), r.get("split")) for r in _parse(text)}
      if text and not text.endswith("\n"):  # a line cut short by a kill stays its own
        paths.append_text(self._path, "\n")
    try:  # TensorBoard is a convenience: the JSONL file is the record.
      from tensorboardX import SummaryWriter
      from tensorboardX import record_writer
      self._bucket = _BucketEvents()
      record_writer.register_writer_factory("gs", self._bucket)
      self._tb = SummaryWriter(paths.join(workdir, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, object]) -> None:
    if not self._active or (int(step), split) in self._written:
      return
    self._written.add((int(step), split))
    record = {"step": int(step), "split": split, "time": time.time()}
    record.update({k: _plain(v) for k, v in metrics.items()})
    paths.append_text(self._path, json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()
      if self._bucket.error is not None:  # met by tensorboardX's writer thread
        raise self._bucket.error

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run directory, in the order they were written."""
  return _parse(paths.read_text(paths.join(workdir, "metrics.jsonl")))


def _parse(text: str) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a kill is left out."""
  records = []
  for line in text.splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return records


class _BucketEventFile:
  """An event file in a bucket, for tensorboardX: a bucket object cannot grow, so
  each flush uploads the whole file again (paths.py). It runs in tensorboardX's writer
  thread, whose death would leave every later SummaryWriter.flush waiting for ever: a
  failed upload is kept in `events.error` for the trainer's thread to raise."""

  def __init__(self, path: str, events: "_BucketEvents"):
    self._path, self._buffer, self._events = path, io.BytesIO(), events

  def write(self, data: bytes) -> None:
    self._buffer.write(data)

  def flush(self) -> None:
    try:
      paths.write_bytes(self._path, self._buffer.getvalue())
    except Exception as e:  # pylint: disable=broad-except  (handed to the main thread)
      self._events.error = e

  def close(self) -> None:
    self.flush()


class _BucketEvents:
  """tensorboardX's writer factory for gs:// log folders, through paths.py (its own
  needs google-cloud-storage and its credentials)."""

  def __init__(self):
    self.error = None

  def open(self, path: str) -> _BucketEventFile:
    return _BucketEventFile(path, self)

  def directory_check(self, path: str) -> None:
    del path  # a bucket has no folders to create
