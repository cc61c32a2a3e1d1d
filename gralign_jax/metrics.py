"""Run logging: metrics.jsonl and TensorBoard event files, written by process 0 only.

Every record carries `step` and `split` ("train", "dev", "test"), so a notebook can
read the run back with `pandas.read_json(path, lines=True)`. There is one record per
(step, split): a resumed run replays the steps after its last checkpoint bit for bit,
and their records, already written before the interruption, are not written again.
"""
import json
import os
import time
from typing import Mapping

import jax
import numpy as np


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
    self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    self._written = set()
    if os.path.exists(self._path):
      self._written = {(r.get("step"), r.get("split")) for r in _read(self._path)}
      with open(self._path, "rb+") as f:  # a line cut short by a kill stays its own
        if f.seek(0, os.SEEK_END) and (f.seek(-1, os.SEEK_END), f.read(1))[1] != b"\n":
          f.write(b"\n")
    try:  # TensorBoard is a convenience: the JSONL file is the record.
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, object]) -> None:
    if not self._active or (int(step), split) in self._written:
      return
    self._written.add((int(step), split))
    record = {"step": int(step), "split": split, "time": time.time()}
    record.update({k: _plain(v) for k, v in metrics.items()})
    with open(self._path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split", "time") and isinstance(v, (int, float)):
          self._tb.add_scalar(f"{split}/{k}", v, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(workdir: str) -> list[dict]:
  """All records of a run directory, in the order they were written."""
  return _read(os.path.join(workdir, "metrics.jsonl"))


def _read(path: str) -> list[dict]:
  """The records of a metrics.jsonl; a line cut short by a kill is left out."""
  records = []
  with open(path, encoding="utf-8", errors="replace") as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return records
