"""Captions of the synthetic scenes set made false for their image, one change each.

In the style of ARO (Yuksekgonul et al., ICLR 2023) and SugarCrepe (Hsieh et al.,
NeurIPS 2023), but checked against the scene: the scene record (scenes.json) knows every
object's shape, colour, size and centre, so each perturbation is kept only where it is
certainly false for the image, and the caption it came from stays true.

  kinds = perturb(caption, objects, relation=(a, b), rng=rng)
  # {"shape": ("a small red hexagon left of a blue square", "circle->hexagon"), ...}

Kinds (at most one of each per caption; a kind that cannot be made false is absent):
  shape     one mentioned object's shape replaced by one that no object of that colour
            has: the phrase describes nothing in the scene
  colour    one mentioned object's colour replaced by one that no object of that shape has
  size      one size word replaced by the other size's word (small <-> large,
            little <-> big); (colour, shape) is unique in a scene, so the phrase then
            names an object at the wrong size
  binding   two mentioned objects exchange their colours (or their shapes), where neither
            new (colour, shape) is in the scene
  relation  the relation word flipped (left <-> right, above/over <-> below/under,
            beneath -> above) where the flipped relation is false given the centres
  order     the words shuffled, kept only where the text changes and the bag of words
            read both ways (each size and colour word bound to the next shape word, or to
            the previous one) names an object that is not in the scene; a shuffle that
            only reorders whole phrases is never kept

Captions are those synthetic/ writes: mentions are "a|an [size] colour shape".
"""
import dataclasses
import re

import numpy as np

from gralign_jax.data import synthetic as scenes_lib

KINDS = ("shape", "colour", "size", "binding", "relation", "order")

# Size word -> size, and the word that says the other size.
SIZE_OF_WORD = {w: size for size, words in scenes_lib.SIZE_WORDS.items() for w in words}
_OTHER_SIZE_WORD = {"small": "large", "little": "big", "large": "small", "big": "little"}
# Relation word -> the relation it states, and its flip.
RELATION_OF_WORD = {w: rel for rel, phrases in scenes_lib.RELATION_WORDS.items()
                    for p in phrases for w in p.split() if w in (
                        "left", "right", "above", "over", "below", "under", "beneath")}
_FLIP = {"left": "right", "right": "left", "above": "below", "below": "above",
         "over": "under", "under": "over", "beneath": "above"}

_MENTION = re.compile(
    r"\b(an?) (?:(" + "|".join(SIZE_OF_WORD) + r") )?(" + "|".join(scenes_lib.COLOURS)
    + r") (" + "|".join(scenes_lib.SHAPES) + r")\b")
_RELATION_WORD = re.compile(r"\b(" + "|".join(_FLIP) + r")\b")
_SHUFFLE_TRIES = 30


@dataclasses.dataclass(frozen=True)
class Mention:
  """One "a [size] colour shape" phrase: its character span (article included) and
  the index of the scene object it names (-1: none)."""
  start: int
  end: int
  size_word: str | None
  colour: str
  shape: str
  obj: int


def mentions(text: str, objects: list[dict]) -> list[Mention]:
  """The object phrases of a caption, in order."""
  index = {(o["colour"], o["shape"]): i for i, o in enumerate(objects)}
  return [Mention(m.start(), m.end(), m.group(2), m.group(3), m.group(4),
                  index.get((m.group(3), m.group(4)), -1))
          for m in _MENTION.finditer(text)]


def phrase(size_word: str | None, colour: str, shape: str) -> str:
  """"a|an [size] colour shape", the article fitted to the first word."""
  words = ([size_word] if size_word else []) + [colour, shape]
  return f"{'an' if words[0][0] in 'aeiou' else 'a'} {' '.join(words)}"


def _replace(text: str, edits: list[tuple[Mention, str]]) -> str:
  """text with each mention's span replaced by its new phrase."""
  for m, new in sorted(edits, key=lambda e: -e[0].start):
    text = text[:m.start] + new + text[m.end:]
  return text


def _pick(rng, options: list):
  return options[int(rng.integers(len(options)))] if options else None


def _shape(text, objects, found, rng):
  have = {(o["colour"], o["shape"]) for o in objects}
  options = [(m, s) for m in found for s in scenes_lib.SHAPES
             if s != m.shape and (m.colour, s) not in have]
  choice = _pick(rng, options)
  if choice:
    m, s = choice
    return _replace(text, [(m, phrase(m.size_word, m.colour, s))]), f"{m.shape}->{s}"
  return None


def _colour(text, objects, found, rng):
  have = {(o["colour"], o["shape"]) for o in objects}
  options = [(m, c) for m in found for c in scenes_lib.COLOURS
             if c != m.colour and (c, m.shape) not in have]
  choice = _pick(rng, options)
  if choice:
    m, c = choice
    return _replace(text, [(m, phrase(m.size_word, c, m.shape))]), f"{m.colour}->{c}"
  return None


def _size(text, objects, found, rng):
  options = []
  for m in found:
    if m.size_word is None or m.obj < 0:
      continue
    new = _OTHER_SIZE_WORD[m.size_word]
    # (colour, shape) names exactly one object; it must have the other size.
    if objects[m.obj]["size"] != SIZE_OF_WORD[new]:
      options.append((m, new))
  choice = _pick(rng, options)
  if choice:
    m, new = choice
    return (_replace(text, [(m, phrase(new, m.colour, m.shape))]),
            f"{SIZE_OF_WORD[m.size_word]}->{SIZE_OF_WORD[new]}")
  return None


def _binding(text, objects, found, rng):
  have = {(o["colour"], o["shape"]) for o in objects}
  options = []
  for i, a in enumerate(found):
    for b in found[i + 1:]:
      if a.colour == b.colour or a.shape == b.shape:
        continue
      for attr in ("colour", "shape"):
        if attr == "colour":
          new_a, new_b = (b.colour, a.shape), (a.colour, b.shape)
        else:
          new_a, new_b = (a.colour, b.shape), (b.colour, a.shape)
        if new_a not in have and new_b not in have:
          options.append((a, b, attr, new_a, new_b))
  choice = _pick(rng, options)
  if choice:
    a, b, attr, new_a, new_b = choice
    return _replace(text, [(a, phrase(a.size_word, *new_a)),
                           (b, phrase(b.size_word, *new_b))]), attr
  return None


def holds(rel: str, a: dict, b: dict) -> bool:
  """Whether object a is `rel` ("left", "right", "above", "below") of object b, by
  their centres (image y grows downwards)."""
  (ax, ay), (bx, by) = a["centre"], b["centre"]
  return {"left": ax < bx, "right": ax > bx, "above": ay < by, "below": ay > by}[rel]


def _relation(text, objects, found, pair):
  if pair is None:
    return None
  a, b = pair
  ma = [m for m in found if m.obj == a]
  mb = [m for m in found if m.obj == b]
  if len(ma) != 1 or len(mb) != 1 or ma[0].end > mb[0].start:
    return None
  gap = _RELATION_WORD.search(text, ma[0].end, mb[0].start)
  if gap is None:
    return None
  word = gap.group(1)
  flipped = _FLIP[word]
  if holds(RELATION_OF_WORD[flipped], objects[a], objects[b]):
    return None  # not certainly false
  new = text[:gap.start()] + flipped + text[gap.end():]
  return new, f"{RELATION_OF_WORD[word]}->{RELATION_OF_WORD[flipped]}"


def _groups(words: list[str]) -> list[tuple[set, set, str]]:
  """Reading of a word list where each size and colour word binds to the next shape
  word: [(colours, sizes, shape)]. Attributes after the last shape bind to nothing."""
  out, colours, sizes = [], set(), set()
  for w in words:
    if w in scenes_lib.COLOURS:
      colours.add(w)
    elif w in SIZE_OF_WORD:
      sizes.add(SIZE_OF_WORD[w])
    elif w in scenes_lib.SHAPES:
      out.append((colours, sizes, w))
      colours, sizes = set(), set()
  return out


def _describes(group, objects) -> bool:
  colours, sizes, shape = group
  return any(o["shape"] == shape and colours <= {o["colour"]} and sizes <= {o["size"]}
             for o in objects)


def bag_is_false(text: str, objects: list[dict]) -> bool:
  """Whether the words of text, with adjectives bound forwards and, separately, bound
  backwards, name in both readings an object that is not in the scene."""
  words = [w.strip(":,.").lower() for w in text.split()]
  return all(any(not _describes(g, objects) for g in _groups(order))
             for order in (words, words[::-1]))


def _order(text, objects, rng):
  words = text.split()
  for _ in range(_SHUFFLE_TRIES):
    new = " ".join(words[i] for i in rng.permutation(len(words)))
    if new != text and bag_is_false(new, objects):
      return new, ""
  return None


def perturb(text: str, objects: list[dict], relation: tuple[int, int] | None = None,
            rng: np.random.Generator | None = None) -> dict[str, tuple[str, str]]:
  """One caption of a scene -> {kind: (perturbed caption, detail)} for the kinds that
  can be made certainly false (module docstring).

  objects: the scene's objects (scenes.json: shape, colour, size, centre);
  relation: (a, b) when the caption states "object a <rel> object b" (its record's
  "relation"); rng: the draws among the possible changes (default: seed 0).
  """
  rng = rng if rng is not None else np.random.default_rng(0)
  found = mentions(text, objects)
  out = {"shape": _shape(text, objects, found, rng),
         "colour": _colour(text, objects, found, rng),
         "size": _size(text, objects, found, rng),
         "binding": _binding(text, objects, found, rng),
         "relation": _relation(text, objects, found, relation),
         "order": _order(text, objects, rng)}
  return {k: v for k, v in out.items() if v is not None and v[0] != text}
