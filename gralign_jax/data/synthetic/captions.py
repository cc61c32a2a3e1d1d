"""The caption grammar: five captions per scene, each with a record of which objects it
names (scenes.json keeps them for the probe's perturbations)."""
from gralign_jax.data.synthetic.vocabulary import (BACKGROUND_WORDS, COUNT_WORDS,
                                                   RELATION_WORDS, SIZE_WORDS)


def _article(word):
  return "an" if word[0] in "aeiou" else "a"


def _phrase(rng, obj, with_size):
  words = [obj["colour"], obj["shape"]]
  if with_size:
    syn = SIZE_WORDS[obj["size"]]
    words.insert(0, syn[0] if rng.random() < 0.75 else syn[1])
  return f"{_article(words[0])} {' '.join(words)}"


def _join(items):
  if len(items) == 1:
    return items[0]
  return ", ".join(items[:-1]) + " and " + items[-1]


def relation(a, b):
  """The relation of object a to object b along the axis where they differ most.

  Image y grows downwards, so "above" means a smaller y. Returns "left", "right",
  "above" or "below".
  """
  dx = a["centre"][0] - b["centre"][0]
  dy = a["centre"][1] - b["centre"][1]
  if abs(dx) >= abs(dy):
    return "left" if dx < 0 else "right"
  return "above" if dy < 0 else "below"


def _pick(rng, options):
  return options[rng.integers(len(options))]


def _full_caption(rng, scene):
  objs = scene["objects"]
  n = len(objs)
  order = [int(i) for i in rng.permutation(n)]
  phrases = [_phrase(rng, objs[i], True) for i in order]
  listed = _join(phrases)
  xs = sorted(o["centre"][0] for o in objs)
  x_separable = min(b - a for a, b in zip(xs, xs[1:])) >= 0.1 * scene["_size"]
  choices = ["plain", "prefix", "count", "there", "background", "relation"]
  if x_separable:
    choices.append("left_to_right")
  kind = _pick(rng, choices)
  if kind == "plain":
    text = listed
  elif kind == "prefix":
    text = f"{_pick(rng, ('a photo of', 'a picture of', 'an image of', 'a drawing of'))} {listed}"
  elif kind == "count":
    text = f"{COUNT_WORDS[n]} {_pick(rng, ('shapes', 'objects'))}: {listed}"
  elif kind == "there":
    text = (f"there are {COUNT_WORDS[n]} shapes: {listed}" if rng.random() < 0.5
            else f"there is {listed}")
  elif kind == "background":
    word = _pick(rng, BACKGROUND_WORDS[scene["_background"]["kind"]])
    text = f"{listed} on a {word} background"
  elif kind == "left_to_right":
    order = sorted(range(n), key=lambda i: objs[i]["centre"][0])
    text = "from left to right: " + _join([_phrase(rng, objs[i], True) for i in order])
  else:  # relation between the first two listed, the rest appended
    a, b = order[0], order[1]
    rel = _pick(rng, RELATION_WORDS[relation(objs[a], objs[b])])
    text = f"{phrases[0]} {rel} {phrases[1]}"
    if n > 2:
      text += ", and also " + _join(phrases[2:])
    return text, dict(kind="full", objects=order, relation=[a, b])
  return text, dict(kind="full", objects=order)


def _single_caption(rng, scene):
  i = int(rng.integers(len(scene["objects"])))
  p = _phrase(rng, scene["objects"][i], rng.random() < 0.5)
  template = _pick(rng, ("there is {}", "{}", "a photo of {}", "a picture with {} in it",
                         "{} among other shapes", "one of the shapes is {}",
                         "{} somewhere in the picture"))
  return template.format(p), dict(kind="single", objects=[i])


def _relation_caption(rng, scene):
  objs = scene["objects"]
  a, b = [int(i) for i in rng.choice(len(objs), 2, replace=False)]
  with_size = rng.random() < 0.5
  pa, pb = _phrase(rng, objs[a], with_size), _phrase(rng, objs[b], with_size)
  rel = _pick(rng, RELATION_WORDS[relation(objs[a], objs[b])])
  template = _pick(rng, ("{} {} {}", "{} is {} {}", "there is {} {} {}",
                         "a picture of {} {} {}"))
  return template.format(pa, rel, pb), dict(kind="relation", objects=[a, b],
                                            relation=[a, b])


def _subset_caption(rng, scene):
  n = len(scene["objects"])
  k = int(rng.integers(2, n))
  idx = [int(i) for i in rng.choice(n, k, replace=False)]
  listed = _join([_phrase(rng, scene["objects"][i], rng.random() < 0.5) for i in idx])
  template = _pick(rng, ("{}", "there is {}", "a photo of {} among other shapes",
                         "{} and more"))
  return template.format(listed), dict(kind="subset", objects=idx)


def draw_captions(rng, scene):
  """Five captions: two full, one single, and a mix (expected single share ~1/4)."""
  n = len(scene["objects"])
  slots = ["full", "full", "single", "relation" if rng.random() < 0.6 else "full"]
  if rng.random() < 0.25:
    slots.append("single")
  else:
    slots.append(_pick(rng, ("relation", "subset", "full") if n > 2 else ("relation", "full")))
  makers = dict(full=_full_caption, single=_single_caption, relation=_relation_caption,
                subset=_subset_caption)
  out, seen = [], set()
  for slot in slots:
    for _ in range(10):  # avoid two identical captions for one image
      text, rec = makers[slot](rng, scene)
      if text not in seen:
        break
    seen.add(text)
    out.append((text, rec))
  return [out[i] for i in rng.permutation(len(out))]
