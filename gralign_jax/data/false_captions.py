"""A split's captions made false for their image: the probe's items and training's
composition-aware hard negatives (NegCLIP in ARO, Yuksekgonul et al., ICLR 2023).

On the synthetic scenes set each caption is checked against its scene record
(perturb_scenes.py: shape, colour, size, binding, relation, order); on real captions,
which have no record, only word order and phrase swaps are made (perturb_text.py).

  made, info = build(config, split, seed=0)          # every kind the data allow
  made.caption[p], made.kind[p], made.text[p]        # false caption p, from caption
                                                     # made.caption[p] of the split
"""
import dataclasses
import os

import ml_collections
import numpy as np

from gralign_jax import logs
from gralign_jax.data import perturb_scenes
from gralign_jax.data import perturb_text
from gralign_jax.data import readers
from gralign_jax.data import synthetic


class FalseCaptionError(ValueError):
  """Kinds the data do not allow, or a split's captions that do not match the scene
  record (said in full)."""


@dataclasses.dataclass
class Perturbed:
  """P perturbed captions: caption (P,) int, the index in the split of the true caption
  each was made from (its image: caption // captions_per_image); kind, text, detail."""
  caption: np.ndarray
  kind: list[str]
  text: list[str]
  detail: list[str]

  def __len__(self):
    return len(self.text)


def _scene_by_file(root: str, log: logs.Log) -> dict:
  try:
    record = synthetic.load_scene_record(root, log)
  except ValueError as e:  # a marker whose parameters do not draw the set on disk
    raise FalseCaptionError(str(e)) from e
  return {s["filename"]: s for s in record["scenes"]}


def is_synthetic(root: str) -> bool:
  """Whether root holds the synthetic scenes set (its record, or the marker that lets
  the record be drawn again)."""
  return (os.path.isfile(os.path.join(root, synthetic.SCENES_JSON))
          or synthetic.is_complete(root))


def _synthetic(split: readers.Split, root: str, seed: int, log: logs.Log) -> list[dict]:
  scenes = _scene_by_file(root, log)
  cpi = split.captions_per_image
  out = []
  for c, text in enumerate(split.captions):
    name = os.path.basename(str(split.image_paths[c // cpi]))
    scene = scenes.get(name)
    if scene is None:
      raise FalseCaptionError(f"Image {name} of split {split.name!r} is not in the scene record "
                       f"of {root}: expected the synthetic set that record describes.")
    rec = next((r for r in scene["captions"] if r["raw"] == text), None)
    if rec is None:
      raise FalseCaptionError(f"Caption {c} of split {split.name!r} ({text!r}) is not among the "
                       f"captions the scene record of {root} holds for {name}.")
    out.append(perturb_scenes.perturb(text, scene["objects"], rec.get("relation"),
                                      np.random.default_rng([seed, c])))
  return out


def kinds_of(root: str) -> tuple[str, ...]:
  """The kinds of false caption the data under root allow (module docstring)."""
  return perturb_scenes.KINDS if is_synthetic(root) else perturb_text.KINDS


def chosen_kinds(spec: str, root: str) -> dict[str, float]:
  """"all", or a comma list of kinds each with an optional weight ("relation:6,shape:3,
  binding") (e.g. loss.hard_negatives) -> {kind: weight}, checked against the kinds
  the data under root allow ("all": each of them, weight 1). A caption's false caption
  is drawn among the kinds it has with probability proportional to their weights.
  Raises FalseCaptionError naming what does not fit."""
  allowed = kinds_of(root)
  if spec.strip() == "all":
    return dict.fromkeys(allowed, 1.0)
  chosen, bad = {}, []
  for item in (i.strip() for i in spec.split(",")):
    kind, _, weight = item.partition(":")
    try:
      w = float(weight) if weight else 1.0
    except ValueError:
      w = float("nan")
    if kind.strip() not in allowed or not w > 0 or kind.strip() in chosen:
      bad.append(repr(item))
    else:
      chosen[kind.strip()] = w
  if bad or not chosen:
    raise FalseCaptionError(
        f"{spec!r}: expected 'all' or a comma list of kinds, each once with an optional "
        f"positive weight (kind:weight), among {', '.join(allowed)} (the kinds of false "
        f"caption the data under {root} allow); found {', '.join(bad) or 'none'}.")
  return chosen


def build(config: ml_collections.ConfigDict, split: readers.Split, *, seed: int = 0,
          kinds: tuple[str, ...] | None = None,
          log: logs.Log = logs.info) -> tuple[Perturbed, dict]:
  """The false captions of a split -> (Perturbed, info): info["set"] is
  "synthetic" or "captions", info["kinds"] the kinds tried, info["notes"] what was
  left out and why. kinds: those to make (default: every kind the data allow).
  Caption c draws from default_rng([seed, c])."""
  root, notes = config.data.root, []
  if is_synthetic(root):
    kinds = kinds or perturb_scenes.KINDS
    made, what = _synthetic(split, root, seed, log), "synthetic"
  else:
    kinds, what = kinds or perturb_text.KINDS, "captions"
    why = perturb_text.tagger_problem()
    swaps = [k for k in kinds if k in perturb_text.SWAP_KINDS]
    if why and swaps:
      kinds = tuple(k for k in kinds if k not in swaps)
      notes.append(f"{' and '.join(swaps)} left out: {why}.")
    made = perturb_text.perturb_all(list(split.captions), seed, kinds)
  caption, kind, text, detail = [], [], [], []
  for c, found in enumerate(made):
    for k in kinds:
      if k in found:
        caption.append(c)
        kind.append(k)
        text.append(found[k][0])
        detail.append(found[k][1])
  return (Perturbed(np.asarray(caption, np.int64), kind, text, detail),
          {"set": what, "kinds": list(kinds), "notes": notes})
