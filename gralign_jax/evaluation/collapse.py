"""Collapse: a model whose scores are all (nearly) equal ranks nothing. Every sign of
it the trainer watches, and the line that says it, in one place (docs/reliability.md's
'Collapse' section tells the cure).

- A training batch whose score spread (max - min of the batch's score matrix) is under
  SPREAD, once the objective says a collapse means something (Objective.watch_collapse:
  after the switch to hardest negatives for a triplet, else after the lr warm-up):
  COLLAPSE, said once per run, with the loss a collapsed model sits at.
- A dev score matrix whose standard deviation is under DEV_STD: COLLAPSE.
- After the lr warm-up, a dev rSum under twice that of random scores (chance_rsum):
  AT CHANCE (nearly equal scores, above the equality threshold, rank at chance too).
"""
from typing import Mapping

from gralign_jax.evaluation import recall

SPREAD = 1e-3    # a training batch's score spread under this: every score is equal
DEV_STD = 1e-4   # the dev score matrix's std under this: the same
_SEE = "See docs/reliability.md, 'Collapse'."


def chance_rsum(num_images: int, captions_per_image: int = 5) -> float:
  """The expected rSum of random scores on N images and M = P x N captions (P per
  image): an image finds one of its P captions in the top K of M with probability
  1 - C(M - P, K) / C(M, K); a caption finds its image in the top K of N with
  probability K / N. A model near this ranks nothing."""
  n, per = num_images, captions_per_image
  m = per * n
  total = 0.0
  for k in recall.RECALL_KS:
    miss = 1.0  # C(M - P, K) / C(M, K), as a product
    for i in range(min(k, m)):
      miss *= max(m - per - i, 0) / (m - i)
    total += 100.0 * ((1.0 - miss) + min(k, n) / n)
  return total


class TrainingWatch:
  """Says a collapse of the training batches once per run.

  objective: losses.Objective (when a collapse means something, and the loss a
  collapsed model has at a step).
  """

  def __init__(self, objective):
    self.objective = objective
    self.reported = False

  def check(self, step: int, aux: Mapping[str, float]) -> str | None:
    """The COLLAPSE line the first time a watched step's batch collapsed, else None."""
    if (self.reported or not self.objective.watch_collapse(step)
        or not aux["score_spread"] < SPREAD):
      return None
    self.reported = True
    return training_message(self.objective, step, aux)


def training_message(objective, step: int, aux: Mapping[str, float]) -> str:
  """The COLLAPSE line of a training batch: its spread, its contrastive loss and the
  loss a collapsed model of this objective sits at."""
  kind, hard = objective.config.kind, step >= objective.hard_from
  name = ("hardest-negative triplet" if kind == "triplet" and hard else
          "summed triplet" if kind == "triplet" else "InfoNCE")
  return (f"[train @ {step}] COLLAPSE: every score in the batch is equal (spread "
          f"{aux['score_spread']:.1e}, contrastive loss {aux['l_con']:.2f}; a "
          f"collapsed {name} sits at about {objective.collapsed_value(step):.1f}). "
          + _SEE)


def dev_message(step: int, metrics: Mapping[str, float], num_images: int,
                captions_per_image: int, lr_warmup_steps: int) -> str | None:
  """The COLLAPSE or AT CHANCE line of a dev evaluation (Evaluator.evaluate's
  metrics, on num_images images), or None when it ranks."""
  if metrics["score_std"] < DEV_STD:
    return (f"[dev @ {step}] COLLAPSE: every dev score is equal (std "
            f"{metrics['score_std']:.1e}); the model ranks nothing. " + _SEE)
  chance = chance_rsum(num_images, captions_per_image)
  if step > lr_warmup_steps and metrics["rsum"] < 2 * chance:
    return (f"[dev @ {step}] AT CHANCE: dev rSum {metrics['rsum']:.1f} is under twice "
            f"that of random scores ({chance:.1f} on {num_images} images; score std "
            f"{metrics['score_std']:.1e}). " + _SEE)
  return None
