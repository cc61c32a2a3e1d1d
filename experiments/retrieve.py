"""Retrieve with a trained run on your own images and captions, and see what aligned.

  python -m experiments.retrieve --workdir=runs/demo --images=my_photos/ \
      --captions=captions.txt --k=5
  python -m experiments.retrieve --workdir=runs/demo --images=my_photos/ \
      --query="a small red circle" --query="two blue squares"

Prints, per caption, the k best images and, for the best one, each word piece with
its saliency gate and the image patch (or region) it matches best; per image, the k
best captions. Everything printed is also written as JSON (--out, default
<workdir>/retrieval.json), and as an HTML page beside it (--html; word-to-patch pictures
for the first --pictures=20 captions; --html= for none). Neither replaces a file this
command did not write. The gallery's encodings are cached under
<workdir>/galleries/, so new captions for the same photos only encode the captions.

Files of the folder that are not readable images are skipped and listed, captions
longer than the run's data.max_len are cut and named, and a k larger than the gallery
is clamped: each is said in one line before the results and recorded in the JSON. A
run on read-only storage is only read: the cache and retrieval.json go to
$GRALIGN_CACHE/galleries/ (default ~/.cache/gralign_jax/galleries/), said in one line.
Wrong flags or files stop the run with one line, "Error: ...", before any model is
loaded where possible.
"""
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging

from experiments import entry_point
from gralign_jax import paths  # paths and logs import no jax (flags first: XLA_FLAGS)
from gralign_jax.logs import shown

# Files this command may replace: its own JSON (these keys) and its own page (this tag).
_JSON_KEYS = ("captions_to_images", "images_to_captions")

_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory of a training run.")
_IMAGES = flags.DEFINE_string("images", None, "Folder of .jpg/.jpeg/.png images.")
_CAPTIONS = flags.DEFINE_string("captions", None, "UTF-8 text file, one caption a line.")
_QUERY = flags.DEFINE_multi_string("query", [], "A caption (repeatable).")
_K = flags.DEFINE_integer("k", 5, "How many results per query (1 or more).")
_CHECKPOINT = flags.DEFINE_enum("checkpoint", "best", ["best", "latest"],
                                "The best-on-dev checkpoint or the last one.")
_OUT = flags.DEFINE_string("out", None, "JSON output (default <workdir>/retrieval.json).")
_HTML = flags.DEFINE_string("html", None, "The result as one self-contained HTML page "
                            "(default: beside the JSON output, .html; --html= writes "
                            "no page).")
_PICTURES = flags.DEFINE_integer("pictures", 20, "Word-to-patch pictures on the page for "
                                 "the first N captions (about 0.3 s and 150 KB each).")
_EXPORT = flags.DEFINE_string("export", None, "Also write the gallery's encodings with "
                              "their image paths to this .npz file.")
_DISTRIBUTED = entry_point.define_distributed_flags()


class UsageError(ValueError):
  """A flag or the captions file cannot be used."""


def _read_captions() -> list[str]:
  """--query values, then the --captions file's lines (blank lines are not captions)."""
  for q in _QUERY.value:
    if not q.strip():
      raise UsageError(f"--query={q!r} is empty; expected a caption with at least one "
                       "word, e.g. --query=\"a red circle\".")
  captions = list(_QUERY.value)
  path = _CAPTIONS.value
  if path is not None:
    expect = "expected a UTF-8 text file, one caption a line"
    special = paths.not_a_regular_file(path)
    if special:  # open() would wait on a FIFO for ever
      raise UsageError(f"--captions={path!r} {special}; {expect}.")
    try:
      with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    except FileNotFoundError as e:
      raise UsageError(f"--captions={path!r} does not exist; {expect}.") from e
    except IsADirectoryError as e:
      raise UsageError(f"--captions={path!r} is a folder; {expect}.") from e
    except OSError as e:
      raise UsageError(f"--captions={path!r} cannot be read ({e.strerror or e}); "
                       f"{expect}.") from e
    except UnicodeDecodeError as e:
      raise UsageError(f"--captions={path!r} is not UTF-8 (byte {e.object[e.start]:#x} "
                       f"at offset {e.start}); {expect}.") from e
    if not lines:
      raise UsageError(f"--captions={path!r} holds no caption (the file is empty or "
                       f"only blank lines); {expect}.")
    captions += lines
  if not captions:
    raise UsageError("No captions: give --captions=FILE (one per line) and/or "
                     "--query=TEXT.")
  return captions


def _written_here(path: str, is_mine) -> bool:
  try:
    return is_mine(paths.read_text(path))
  except (OSError, ValueError, UnicodeDecodeError):
    return False


def _is_result(text: str) -> bool:
  data = json.loads(text)
  return isinstance(data, dict) and all(key in data for key in _JSON_KEYS)


def _check_output(flag: str, path: str, what: str, is_mine) -> None:
  """--out / --html: a new file, or one this command wrote; never a folder or a file
  of the user's."""
  if paths.isdir(path):
    raise UsageError(f"--{flag}={path!r} is a folder; expected the path of {what}.")
  if paths.exists(path) and not _written_here(path, is_mine):
    raise UsageError(f"--{flag}={path!r} exists and was not written by "
                     f"experiments.retrieve; it is left as it is: choose another --{flag}.")


def _check_flags() -> list[str]:
  if not _WORKDIR.value or not _IMAGES.value:
    raise UsageError("--workdir (a training run) and --images (a folder) are required.")
  if _K.value < 1:
    raise UsageError(f"--k={_K.value}: expected a positive number of results per query "
                     "(1 or more).")
  if _PICTURES.value < 0:
    raise UsageError(f"--pictures={_PICTURES.value}: expected 0 or more captions to draw "
                     "word-to-patch pictures for.")
  out, page = _OUT.value, _HTML.value
  if out:
    _check_output("out", out, "a JSON file", _is_result)
  if page:
    # pylint: disable-next=g-import-not-at-top
    from gralign_jax.inference import page as page_lib
    _check_output("html", page, "an HTML page", page_lib.is_page)
  if out and page != "" and paths.resolve(page or os.path.splitext(out)[0] + ".html"
                                          ) == paths.resolve(out):
    raise UsageError(f"--out={out!r} and the page (--html={page or out!r}) are the same "
                     "file: the page would replace the JSON. Give --out a .json name, "
                     "or --html another file.")
  return _read_captions()


def _print_results(result: dict) -> None:
  for item in result["captions_to_images"]:
    print(f"\"{shown(item['caption'])}\"")
    for rank, hit in enumerate(item["top"], 1):
      print(f"  {rank}. {hit['score']:7.4f}  {shown(hit['image'])}")
    print("  word piece -> best visual token in image 1 (gate, cosine):")
    words = [f"{shown(a['token'])} -> {a['visual_token']} ({a['gate']:.2f}, "
             f"{a['cos']:.2f})" for a in item["alignment"]]
    line = "    "
    for word in words:  # wrap between entries, never inside one
      if len(line) + len(word) > 100 and line.strip():
        print(line.rstrip())
        line = "    "
      line += f" {word};"
    print(line.rstrip(";"))
  print()
  for item in result["images_to_captions"]:
    print(shown(item["image"]))
    for rank, hit in enumerate(item["top"], 1):
      print(f"  {rank}. {hit['score']:7.4f}  {shown(hit['caption'])}")


def main(argv):
  del argv
  # orbax warns at WARNING about every read-only restore; what matters here is printed.
  logging.set_verbosity(logging.ERROR)
  try:
    captions = _check_flags()
  except UsageError as e:
    sys.exit(f"Error: {shown(str(e))}")
  entry_point.start_distributed(_DISTRIBUTED)  # before anything touches a JAX backend
  from gralign_jax import inference  # after flag parsing: jax reads XLA_FLAGS at import
  from gralign_jax.inference import page as page_lib
  user_errors = entry_point.user_errors() + (inference.RetrievalError,)
  try:
    split = inference.gallery_split(_IMAGES.value)  # before the model: fails fast
    run = inference.load_run(_WORKDIR.value, _CHECKPOINT.value)
    found = inference.run_query(run, split, captions, k=_K.value)
    result = found.record
    print(f"Run {run.workdir}, step {run.step}: {len(result['images'])} images, "
          f"{len(captions)} captions\n")
    _print_results(result)
    print()
    out = inference.write_result(result, _OUT.value)
    written = [out]
    if _HTML.value != "":
      page = _HTML.value or os.path.splitext(out)[0] + ".html"
      pictures = page_lib.alignment_pictures(run, found, _PICTURES.value, log=print)
      paths.write_text(page, page_lib.render(result, pictures))
      written.append(page)
    if _EXPORT.value:  # the encodings the query used
      written.append(inference.export_gallery(found.gallery, _EXPORT.value, run.step))
  except user_errors as e:
    # Something about the user's files or flags, said in full by the message itself;
    # a traceback would only bury it. Bugs still raise with one.
    sys.exit(f"Error: {shown(str(e))}")
  print(f"Written to {', '.join(map(shown, written))}")


if __name__ == "__main__":
  app.run(main)
