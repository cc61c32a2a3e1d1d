"""experiments.retrieve's HTML page, opened in a real headless browser (Debian's
chromium, driven by Playwright through its executable path; .ci/run installs chromium),
and its --export of the gallery's encodings."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from gralign_jax import inference
from test_retrieval import trained  # pylint: disable=unused-import  (a fixture)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUERIES = ["a red circle", "a small blue square left of a green triangle"]


def _chromium() -> str:
  """The browser's executable; a skip where there is none, except under .ci/run."""
  for name in ("chromium", "chromium-browser", "google-chrome"):
    path = shutil.which(name)
    if path:
      return path
  if os.environ.get("GRALIGN_CI"):
    pytest.fail("no chromium on PATH: .ci/run installs it (apt-get install chromium)")
  pytest.skip("no chromium on PATH (apt-get install chromium)")


@pytest.fixture(scope="module")
def page(trained, tmp_path_factory):  # pylint: disable=redefined-outer-name
  """One retrieval through the command line: (result, page path, export path)."""
  workdir, test, _ = trained
  tmp = tmp_path_factory.mktemp("page")
  photos = tmp / "photos"
  photos.mkdir()
  for p in test.image_paths[:8]:
    shutil.copyfile(p, photos / os.path.basename(p))
  out, export = tmp / "result.json", tmp / "gallery.npz"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
       f"--images={photos}", *[f"--query={q}" for q in QUERIES], "--k=3",
       f"--out={out}", f"--export={export}"],
      cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stderr
  html = tmp / "result.html"
  assert proc.stdout.splitlines()[-1] == f"Written to {out}, {html}, {export}"
  return json.loads(out.read_text()), str(html), str(export)


def test_export_holds_the_gallery_encodings_in_row_order(trained, page):  # pylint: disable=redefined-outer-name
  result, _, export = page
  run = inference.load_run(trained[0])
  found = inference.encode_gallery(run, inference.gallery_split(result["images"]),
                                   log=lambda line: None)
  with np.load(export, allow_pickle=False) as npz:
    assert list(npz["paths"]) == result["images"] and int(npz["step"]) == run.step
    names = {k[len("images."):] for k in npz.files if k.startswith("images.")}
    assert names == set(found.images) and "tokens" in names
    for name, x in found.images.items():
      np.testing.assert_array_equal(npz[f"images.{name}"], np.asarray(x, np.float32)
                                    if np.asarray(x).dtype.name == "bfloat16" else x)


def test_the_page_opens_offline_and_shows_the_ranking(page, tmp_path):  # pylint: disable=redefined-outer-name
  playwright = pytest.importorskip("playwright.sync_api")
  result, html, _ = page
  requests = []
  with playwright.sync_playwright() as p:
    browser = p.chromium.launch(executable_path=_chromium(),
                                args=["--no-sandbox", "--disable-gpu"])
    try:
      tab = browser.new_page(viewport={"width": 1280, "height": 900})
      tab.on("request", lambda r: requests.append(r.url))
      tab.goto("file://" + html, wait_until="load")
      widths = tab.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
      # Thumbnails: CSS backgrounds (each image's data: URI once, in the style sheet);
      # each drawn box and the width its picture decodes to.
      thumbs = tab.eval_on_selector_all(".thumb", """els => Promise.all(els.map(e => {
          const url = getComputedStyle(e).backgroundImage.slice(5, -2);
          const box = e.getBoundingClientRect();
          return new Promise(done => { const i = new Image();
            i.onload = () => done([box.width, url.slice(0, 15), i.naturalWidth]);
            i.onerror = () => done([box.width, url.slice(0, 15), 0]); i.src = url; });
          }))""")
      top1 = tab.eval_on_selector_all(
          "section.query", "els => els.map(s => s.querySelector("
          "'figure.hit[data-rank=\"1\"]').dataset.image)")
      pictures = tab.eval_on_selector_all("img.alignment", "els => els.length")
      tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    finally:
      browser.close()
  n, k = len(result["images"]), 3
  # thumbnails: k per caption, one per image; one alignment picture per caption
  assert len(thumbs) == len(QUERIES) * k + n
  assert all(box > 0 and url == "data:image/jpeg" and width > 0
             for box, url, width in thumbs), thumbs
  assert len(widths) == len(QUERIES) and all(w > 0 for w in widths), widths
  assert top1 == [c["top"][0]["image"] for c in result["captions_to_images"]]
  assert pictures == len(QUERIES)
  assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
  assert os.path.getsize(tmp_path / "page.png") > 10_000


def test_hostile_names_and_captions_print_escaped_and_the_page_stays_small(trained,
                                                                          tmp_path):  # pylint: disable=redefined-outer-name
  """Issue 22, findings 3 and 10: a file name that is not UTF-8 crashed the page after
  the JSON was written; control characters reached the terminal raw (one cleared the
  screen, one set its title) and a newline in a file name forged a result line; every
  caption got a 0.3 s, 150 KB picture, and every hit a copy of its thumbnail."""
  workdir, test, _ = trained
  photos = tmp_path / "photos"
  photos.mkdir()
  names = [b"not-utf8-\xff.jpg", b"clear\x1b[2J.jpg", b"two\nlines.jpg", b"$5.jpg",
           b"plain.jpg"]
  for name, source in zip(names, test.image_paths):
    with open(os.path.join(os.fsencode(photos), name), "wb") as f:
      f.write(open(source, "rb").read())
  captions = [f"a red circle number {i}" for i in range(12)]
  captions[1] = "a red $\\foo{$ circle \x1b]0;pwned\x07"
  out, html = tmp_path / "r.json", tmp_path / "r.html"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
       f"--images={photos}", *[f"--query={c}" for c in captions], "--k=5",
       "--pictures=2", f"--out={out}"], cwd=REPO, capture_output=True)
  stdout = proc.stdout.decode("utf-8")
  assert proc.returncode == 0, proc.stderr.decode("utf-8", "replace")
  assert "\x1b" not in stdout and "\x07" not in stdout
  assert "not-utf8-\\xff.jpg" in stdout and "clear\\x1b[2J.jpg" in stdout
  assert "\\x1b]0;pwned\\x07" in stdout
  # Every result line of an image list starts with its rank: no forged line.
  assert not any(line.startswith("lines.jpg") for line in stdout.splitlines())
  assert any(line.endswith("two\\nlines.jpg") for line in stdout.splitlines())
  page = html.read_text(encoding="utf-8")
  assert page.count('class="alignment"') == 2
  assert "first 2 of 12 captions" in page
  assert page.count("data:image/jpeg") == len(names)  # each thumbnail once
  assert "not-utf8-\\xff.jpg" in page and "\x1b" not in page
  result = json.loads(out.read_text())
  assert len(result["captions_to_images"]) == 12
  # Run again with --html= (no page): the JSON is replaced (it is this command's own),
  # the page from before stays as it was.
  before = html.read_bytes()
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.retrieve", f"--workdir={workdir}",
       f"--images={photos}", "--query=a blue square", f"--out={out}", "--html="],
      cwd=REPO, capture_output=True, text=True, errors="replace")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.splitlines()[-1] == f"Written to {out}"
  assert html.read_bytes() == before


def test_the_pictures_draw_from_what_the_query_computed(trained, monkeypatch):  # pylint: disable=redefined-outer-name
  """The page's word-to-patch pictures use the query's encodings (nothing is encoded
  again), and those are the encodings visualize.encode_* gives the same image and
  caption: the pair's scores agree."""
  from gralign_jax import visualize  # pylint: disable=g-import-not-at-top
  from gralign_jax.inference import page as page_lib  # pylint: disable=g-import-not-at-top
  from gralign_jax.visualize import encode  # pylint: disable=g-import-not-at-top
  workdir, test, _ = trained
  run = inference.load_run(workdir, log=lambda line: None)
  found = inference.run_query(run, inference.gallery_split(list(test.image_paths[:5])),
                              QUERIES, k=2, log=lambda line: None)
  drawn = []
  fail = lambda *a, **k: pytest.fail("the page encoded again")
  with monkeypatch.context() as m:
    for name in ("_apply_image", "_apply_text"):
      m.setattr(encode, name, fail)
    m.setattr(run.evaluator, "encode_images_and_count_bad", fail)
    m.setattr(run.evaluator, "encode_texts", fail)
    real = visualize.make_pair
    m.setattr(visualize, "make_pair", lambda *a: drawn.append(real(*a)) or drawn[-1])
    pictures = page_lib.alignment_pictures(run, found, count=len(QUERIES))
  assert len(pictures) == len(QUERIES) and all(
      p.startswith("data:image/png;base64,") for p in pictures)
  assert len(drawn) == len(QUERIES)
  for m, pair in enumerate(drawn):
    best = found.record["captions_to_images"][m]["top"][0]
    assert pair.image.name == os.path.basename(best["image"])
    image = visualize.encode_image(run, visualize.load_image(best["image"]))
    (caption,) = visualize.encode_captions(run, [QUERIES[m]])
    again = visualize.make_pair(run, image, caption, "again").scores
    assert pair.scores.keys() == again.keys()
    for key in again:
      np.testing.assert_allclose(pair.scores[key], again[key], rtol=0, atol=2e-3,
                                 err_msg=key)
    np.testing.assert_allclose(pair.scores["total"], best["score"], atol=1e-3)
