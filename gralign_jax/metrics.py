"""Run logging: metrics.jsonl and TensorBoard event files, written by process 0 only.

Every record carries `step` and `split` ("train", "dev", "test"), so a notebook can
read the run back with `pandas.read_json(path, lines=True)`.
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
  """Appends one JSON object per call to `<workdir>/metrics.jsonl` and to TensorBoard."""

  def __init__(self, workdir: str):
    self._active = jax.process_index() == 0
    self._tb = None
    if not self._active:
      return
    os.makedirs(workdir, exist_ok=True)
    self._path = os.path.join(workdir, "metrics.jsonl")
    try:  # TensorBoard is a convenience: the JSONL file is the record.
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    except ImportError:
      self._tb = None

  def write(self, step: int, split: str, metrics: Mapping[str, object]) -> None:
    if not self._active:
      return
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
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f if line.strip()]
