"""The compositional probe: perturbations false for their scene, scores, accuracy, CLI."""
import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from experiments.configs import demo
from gralign_jax import configs
from gralign_jax.data import perturb_scenes
from gralign_jax.data import perturb_text
from gralign_jax.data import synthetic as ss
from gralign_jax.evaluation import probe
from gralign_jax.scores import scorer as scorer_lib
from gralign_jax.scores import similarity

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE = {w: s for s, ws in ss.SIZE_WORDS.items() for w in ws}
REL = {"left": "left", "right": "right", "above": "above", "over": "above",
       "below": "below", "under": "below", "beneath": "below"}


# ------------------------------------------------------------------ an independent reading
# Written apart from perturb_scenes.py: a caption of the grammar is true when every
# "a [size] colour shape" phrase names an object of the scene (at that size) and every
# relation word between two phrases holds for their objects' centres.

def _phrases(text):
  """[(word position, size word or None, colour, shape)] of "a|an [size] colour shape"."""
  words = [w.strip(":,") for w in text.split()]
  out = []
  for i, w in enumerate(words):
    if w not in ("a", "an"):
      continue
    rest = words[i + 1:i + 4]
    if rest and rest[0] in SIZE:
      size, rest = rest[0], rest[1:]
    else:
      size, rest = None, rest[:2]
    if len(rest) >= 2 and rest[0] in ss.COLOURS and rest[1] in ss.SHAPES:
      end = i + 3 + (size is not None)
      out.append((i, end, size, rest[0], rest[1]))
  return out


def _object(objects, size, colour, shape):
  for i, o in enumerate(objects):
    if o["colour"] == colour and o["shape"] == shape and (
        size is None or SIZE[size] == o["size"]):
      return i
  return None


def _true_caption(text, objects) -> bool:
  found = _phrases(text)
  if not found:
    return False
  named = [_object(objects, s, c, sh) for _, _, s, c, sh in found]
  if None in named:
    return False
  for (a, b), (pa, pb) in zip(zip(named, named[1:]), zip(found, found[1:])):
    words = [w.strip(":,") for w in text.split()]
    rels = [REL[w] for w in words[pa[1]:pb[0]] if w in REL]
    if rels and "from" not in words[:pa[0]]:  # "from left to right:" lists
      (ax, ay), (bx, by) = objects[a]["centre"], objects[b]["centre"]
      if not {"left": ax < bx, "right": ax > bx, "above": ay < by,
              "below": ay > by}[rels[0]]:
        return False
  return True


def _bag_names_a_missing_object(words, objects) -> bool:
  """Each shape word with the size/colour words between it and the shape word before
  it (forwards) or after it (backwards): True when both readings name some object the
  scene lacks."""
  words = [w.strip(":,.") for w in words]
  at = [i for i, w in enumerate(words) if w in ss.SHAPES]

  def missing(spans):
    for i, (lo, hi) in zip(at, spans):
      attrs = words[lo:hi]
      colours = {w for w in attrs if w in ss.COLOURS}
      sizes = {SIZE[w] for w in attrs if w in SIZE}
      if not any(o["shape"] == words[i] and colours <= {o["colour"]}
                 and sizes <= {o["size"]} for o in objects):
        return True
    return False

  forwards = [(prev + 1, i) for prev, i in zip([-1] + at, at)]
  backwards = [(i + 1, nxt) for i, nxt in zip(at, at[1:] + [len(words)])]
  return missing(forwards) and missing(backwards)


def test_every_perturbation_is_false_for_its_scene_and_its_caption_true():
  counts = dict.fromkeys(perturb_scenes.KINDS, 0)
  details = set()
  for seed in range(40):
    scenes = ss.make_scenes(num_train=1, num_dev=1, num_test=25, image_size=64, seed=seed)
    for scene in scenes:
      objects = scene["objects"]
      for c, (text, rec) in enumerate(scene["captions"]):
        assert _true_caption(text, objects), text  # the reading accepts the truth
        made = perturb_scenes.perturb(text, objects, rec.get("relation"),
                                      np.random.default_rng([seed, c]))
        for kind, (new, detail) in made.items():
          counts[kind] += 1
          details.add((kind, detail))
          assert new != text, (kind, text)
          if kind == "order":  # word salad: read as a bag, adjectives either way
            assert sorted(new.split()) == sorted(text.split())
            assert _bag_names_a_missing_object(new.split(), objects), (text, new)
          else:
            assert not _true_caption(new, objects), (kind, text, new, objects)
            assert len(_phrases(new)) == len(_phrases(text))
          if kind == "relation":
            # only the relation word moved
            assert [f[2:] for f in _phrases(new)] == [f[2:] for f in _phrases(text)]
  # Every kind is made often enough for the property to mean something.
  assert min(counts.values()) > 200, counts
  assert ("relation", "left->right") in details and ("relation", "above->below") in details


def test_what_cannot_be_made_false_is_not_made():
  objects = [dict(shape="circle", colour="red", size="small", centre=[10.0, 15.0]),
             dict(shape="square", colour="red", size="large", centre=[40.0, 20.0])]
  made = perturb_scenes.perturb("a red circle left of a red square", objects, (0, 1),
                                np.random.default_rng(0))
  assert "binding" not in made  # same colour: exchanging colours says the same
  assert "size" not in made     # no size word
  assert made["relation"][0] == "a red circle right of a red square"
  # 5 px above the square and 30 px to its left: "below" is false, and its flip
  # "above" would be true, so it is not made.
  assert "relation" not in perturb_scenes.perturb(
      "a red circle below a red square", objects, (0, 1), np.random.default_rng(0))
  # One object named: no order of its words names an object the scene lacks.
  assert "order" not in perturb_scenes.perturb("there is a small red circle", objects)
  shape = perturb_scenes.perturb("a red circle", objects)["shape"][0]
  assert shape.split()[-1] not in ("circle", "square")  # no red square: that is true


# ------------------------------------------------------------------ scores and accuracy


def test_accuracy_equals_a_hand_scored_case_and_ties_count_as_wrong():
  true = {"total": np.array([1.0, 0.5, 0.3, 0.2, 0.7], np.float32),
          "ori": np.array([1.0, 0.6, 0.3, 0.1, 0.7], np.float32)}
  pert = {"total": np.array([0.9, 0.5, 0.4, np.nan, 0.1], np.float32),
          "ori": np.array([0.9, 0.5, 0.3, 0.2, 0.7], np.float32)}
  # total: right, tie, wrong, NaN, right -> 2 of 5; ori: right, right, tie, wrong, tie
  assert probe.accuracy(true["total"], pert["total"]) == pytest.approx(40.0)
  got = probe.tally(true, pert, ["a", "b", "a", "b", "a"], order=("b",))
  assert list(got) == ["b", "a"]
  assert got["a"] == {"n": 3, "accuracy": pytest.approx(200 / 3, abs=0.01),
                      "parts": {"ori": pytest.approx(100 / 3, abs=0.01)}}
  assert got["b"] == {"n": 2, "accuracy": 0.0, "parts": {"ori": 50.0}}


def _encodings(rng, n, l, d, k=None):
  enc = {"tokens": rng.normal(size=(n, l, d)).astype(np.float32),
         "mask": np.arange(l)[None] < rng.integers(2, l + 1, size=(n, 1)),
         "gates": rng.uniform(size=(n, l)).astype(np.float32)}
  if k:
    enc["regions"] = rng.normal(size=(n, 1, k, d)).astype(np.float32)
  return enc


def test_pair_scores_are_the_scorers_matrix_entries():
  model = configs.finalize(demo.get_config("smoke")).model
  rng = np.random.default_rng(0)
  images = _encodings(rng, 4, 9, 16, k=3)
  texts = _encodings(rng, 7, 6, 16)
  index = np.array([0, 3, 3, 1, 2, 0, 1])
  got = probe.pair_scores(images, texts, index, model, block=3)  # 3 blocks, one padded
  parts = similarity.pair_scores(images, texts, model)
  assert set(got) == {"ori", "key", "unc", "total"}
  for name, matrix in parts.items():
    np.testing.assert_allclose(got[name], np.asarray(matrix)[index, np.arange(7)],
                               rtol=1e-5, atol=1e-6)
  matrix = scorer_lib.Scorer(model, backend="xla").matrix(images, texts)
  np.testing.assert_allclose(got["total"], matrix[index, np.arange(7)], rtol=1e-5,
                             atol=1e-6)


class _Pieces:
  """A tokenizer stand-in: ids are positions in a fixed list of pieces."""
  pieces = ["[PAD]", "[CLS]", "[SEP]", "a", "red", "hex", "##agon", "left", "of",
            "big", "blue", "circle", "there"]
  all_special_tokens = ["[PAD]", "[CLS]", "[SEP]"]

  def convert_ids_to_tokens(self, ids):
    return [self.pieces[i] for i in ids]


def test_gates_are_averaged_per_word_class():
  classes = probe.piece_classes(["[CLS]", "a", "red", "hex", "##agon", "left", "of",
                                 "a", "big", "blue", "circle", "[SEP]"],
                                set(_Pieces.all_special_tokens))
  assert classes == [None, "other", "colour", "shape", "shape", "relation", "other",
                     "other", "size", "colour", "shape", None]
  # "a red hex##agon" and "there big blue circle", gates by hand
  ids = np.array([[1, 3, 4, 5, 6, 2, 0], [1, 12, 9, 10, 11, 2, 0]])
  mask = ids > 0
  gates = np.array([[0.9, 0.1, 1.0, 0.2, 0.4, 0.9, 0.0],
                    [0.9, 0.3, 0.5, 0.8, 0.0, 0.9, 0.0]])
  got = probe.gates_by_class(gates, ids, mask, _Pieces())
  assert got == {"colour": {"gate": 0.9, "n": 2}, "shape": {"gate": 0.2, "n": 3},
                 "size": {"gate": 0.5, "n": 1}, "other": {"gate": 0.2, "n": 2}}


# ------------------------------------------------------------------ the scene record


def test_a_missing_scene_record_is_drawn_again_byte_for_byte(tmp_path):
  root = str(tmp_path / "set")
  ss.generate(root, num_train=6, num_dev=2, num_test=3, image_size=32, vocab_size=120)
  path = os.path.join(root, ss.SCENES_JSON)
  with open(path, "rb") as f:
    original = f.read()
  marker = os.path.join(root, ss.MARKER)
  with open(marker, "rb") as f:
    original_marker = f.read()
  os.remove(path)
  params = json.loads(original_marker)
  params["files"].remove(ss.SCENES_JSON)  # as a set written before the record existed
  with open(marker, "w", encoding="utf-8") as f:
    f.write(json.dumps(params, indent=1, sort_keys=True) + "\n")
  said = []
  record = ss.load_scene_record(root, said.append)
  assert "Wrote" in said[0]
  with open(path, "rb") as f:
    assert f.read() == original
  with open(marker, "rb") as f:
    assert f.read() == original_marker  # the manifest lists it again
  assert record == json.loads(original)
  ss.generate(root, num_train=6, num_dev=2, num_test=3, image_size=32,
              vocab_size=120)  # the generator still takes the folder for its own
  # A set whose captions the marker's parameters do not draw: refused, nothing written.
  os.remove(path)
  caps = os.path.join(root, "precomp", "test_caps.txt")
  with open(caps, "a", encoding="utf-8") as f:
    f.write("a caption of mine\n")
  with pytest.raises(ValueError, match="captions on disk"):
    ss.load_scene_record(root, said.append)
  assert not os.path.exists(path)
  os.remove(marker)
  with pytest.raises(FileNotFoundError, match="no scenes.json"):
    ss.load_scene_record(root)


# ------------------------------------------------------------------ real captions


def test_word_shuffles_change_the_caption():
  rng = np.random.default_rng(0)
  for text in ("a dog runs on the beach .", "two men", "A girl in a red coat"):
    new = perturb_text.shuffle_words(text, rng)
    assert new != text and sorted(new.split()) == sorted(text.split())
  assert perturb_text.shuffle_words("dog", rng) is None
  assert perturb_text.shuffle_words("go go go", rng) is None
  made = perturb_text.perturb_all(["dog", "a dog runs"], kinds=("order",))
  assert made[0] == {} and set(made[1]) == {"order"}


def _need_tagger():
  why = perturb_text.tagger_problem()
  if why:
    if os.environ.get("GRALIGN_CI"):
      pytest.fail(f"CI installs the real extra: {why}")
    pytest.skip(why)


def test_noun_phrase_and_adjective_swaps():
  _need_tagger()
  made = perturb_text.perturb_all([
      "A black dog is running through the green grass .",
      "A man and a woman sit .",
      "A dog ."])
  assert made[0]["noun_swap"] == ("the green grass is running through A black dog .",
                                  "dog<->grass")
  assert made[0]["adjective_swap"] == (
      "A green dog is running through the black grass .", "black<->green")
  assert "noun_swap" not in made[1]  # coordinated: exchanged it says the same
  assert set(made[2]) <= {"order"}


# ------------------------------------------------------------------ a trained run


def _probe_cli(*flags):
  return subprocess.run([sys.executable, "-m", "experiments.probe", *flags], cwd=REPO,
                        capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_trained_run_results_and_command_line_agree(smoke_root, tmp_path):
  from gralign_jax import inference  # pylint: disable=g-import-not-at-top
  from gralign_jax import train  # pylint: disable=g-import-not-at-top
  from gralign_jax.data import datasets  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = demo.get_config("smoke")
  config.data.root = smoke_root
  config.eval.probe = True
  results = train.train_and_evaluate(config, workdir)
  inside = results["probe"]
  assert inside["split"] == "test" and inside["data"] == "synthetic"
  assert set(inside["kinds"]) == set(perturb_scenes.KINDS)
  assert inside["perturbed"] == sum(k["n"] for k in inside["kinds"].values())
  assert set(inside["gates"]) <= set(probe.WORD_CLASSES)
  with open(os.path.join(workdir, "results.json"), encoding="utf-8") as f:
    assert json.load(f)["probe"]["kinds"] == inside["kinds"]

  out = tmp_path / "probe.json"
  done = _probe_cli(f"--workdir={workdir}", f"--out={out}")
  assert done.returncode == 0, done.stderr
  written = json.loads(out.read_text())
  assert written["kinds"] == inside["kinds"]  # the same checkpoint, the same draws
  assert written["step"] == results["best_step"]
  assert os.path.isfile(os.path.join(workdir, "probe_test.json"))
  assert re.search(r"^relation\s+\d+\s", done.stdout, re.M), done.stdout
  # With a changed setting the run's own report stays as it was; --out gets the new one.
  beside = os.path.join(workdir, "probe_test.json")
  kept = open(beside, "rb").read()
  changed = _probe_cli(f"--workdir={workdir}", f"--out={tmp_path / 'other.json'}",
                       "--config.eval.batch_size=7")
  assert changed.returncode == 0, changed.stderr
  assert open(beside, "rb").read() == kept
  assert "Not written to" in changed.stdout + changed.stderr
  other = json.loads((tmp_path / "other.json").read_text())
  assert other["config_changes"]["eval.batch_size"][1] == 7
  assert other["perturbed"] == written["perturbed"]

  # Real captions: the same run on a copy of the set that is not known as synthetic.
  plain = str(tmp_path / "plain")
  shutil.copytree(smoke_root, plain,
                  ignore=shutil.ignore_patterns(ss.SCENES_JSON, ss.MARKER))
  saved = ml_collections.ConfigDict(json.loads(
      open(os.path.join(workdir, "config.json"), encoding="utf-8").read()))
  saved.data.root = plain
  run = inference.load_run(workdir, config=saved)
  split = datasets.read_split(run.config, "test")
  real = probe.run(run.evaluator, run.params, run.config, run.tokenizer, split,
                   log=lambda *a: None)
  assert real["data"] == "captions" and "gates" not in real
  assert real["kinds"]["order"]["n"] == real["captions"]  # every caption has 2+ words
  assert not os.path.exists(os.path.join(plain, ss.SCENES_JSON))

  # Bad input: one line, last, starting with "Error:".
  bad = _probe_cli(f"--workdir={tmp_path}")
  assert bad.returncode != 0
  assert bad.stderr.strip().splitlines()[-1].startswith("Error:"), bad.stderr
  again = _probe_cli(f"--workdir={workdir}", f"--out={os.path.join(workdir, 'config.json')}")
  assert again.returncode != 0
  assert "was not written by experiments.probe" in again.stderr.strip().splitlines()[-1]
