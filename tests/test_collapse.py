"""evaluation/collapse.py: the signs of a collapse and the lines that say them."""
import time
import types

import numpy as np
import pytest

from gralign_jax import train
from gralign_jax.evaluation import collapse
from gralign_jax.evaluation import recall


def test_chance_rsum_is_the_mean_rsum_of_random_scores():
  """The closed form against the average of 400 random score matrices (N = 20)."""
  rng = np.random.default_rng(0)
  n = 20
  mean = np.mean([recall.recall_metrics(rng.normal(size=(n, 5 * n)))["rsum"]
                  for _ in range(400)])
  assert collapse.chance_rsum(n) == pytest.approx(mean, rel=0.03)
  # 500 dev images: 6.4-ish, where the collapsed triplet run of the README sat (6.6).
  assert 6.0 < collapse.chance_rsum(500) < 6.6


def _objective(watch_from=3):
  return types.SimpleNamespace(
      config=types.SimpleNamespace(kind="infonce"), hard_from=10**9,
      watch_collapse=lambda step: step > watch_from, collapsed_value=lambda step: 4.2)


def test_a_training_collapse_is_said_once_and_only_when_watched():
  watch = collapse.TrainingWatch(_objective())
  flat, ranking = {"score_spread": 1e-4, "l_con": 4.2}, {"score_spread": 0.2, "l_con": 1.0}
  assert watch.check(3, flat) is None        # before the objective's watch point
  assert watch.check(4, ranking) is None     # scores that differ
  said = watch.check(5, flat)
  assert said.startswith("[train @ 5] COLLAPSE: every score in the batch is equal")
  assert "a collapsed InfoNCE sits at about 4.2" in said
  assert watch.check(6, flat) is None        # once per run


@pytest.mark.parametrize("std,rsum,step,want", [
    (1e-5, 600.0, 9, "COLLAPSE"),     # equal scores, whatever the rSum
    (0.1, 10.0, 9, "AT CHANCE"),      # under twice chance, after the warm-up
    (0.1, 10.0, 5, None),             # in the warm-up
    (0.1, 40.0, 9, None)])            # ranks
def test_dev_lines(std, rsum, step, want):
  chance = collapse.chance_rsum(500)  # 6.4
  assert 10.0 < 2 * chance < 40.0
  said = collapse.dev_message(step, {"score_std": std, "rsum": rsum}, 500, 5,
                              lr_warmup_steps=5)
  if want is None:
    assert said is None
  else:
    assert said.startswith(f"[dev @ {step}] {want}") and "docs/reliability.md, 'Collapse'" in said


def test_the_training_clock_adds_up_across_pauses_and_resumptions(monkeypatch):
  now = [100.0]
  monkeypatch.setattr(time, "time", lambda: now[0])
  meta = {}
  clock = train.TrainingClock(meta, budget=10.0)
  now[0] += 4.0
  with clock.paused():
    now[0] += 50.0                    # an evaluation: not counted
  now[0] += 3.0
  assert not clock.out_of_time()
  clock.bank()
  assert meta["train_seconds"] == 7.0
  again = train.TrainingClock(dict(meta), budget=10.0)   # resumed from that checkpoint
  assert again.banked == 7.0 and not again.spent_before()
  now[0] += 3.5
  assert again.out_of_time()
  assert train.TrainingClock({"train_seconds": 10.0}, 10.0).spent_before()
  assert not train.TrainingClock({"train_seconds": 99.0}, -1.0).out_of_time()
