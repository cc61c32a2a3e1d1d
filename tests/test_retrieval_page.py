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

from gralign_jax import retrieval
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
  run = retrieval.load_run(trained[0])
  found = retrieval.encode_gallery(run, retrieval.gallery_split(result["images"]),
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
      top1 = tab.eval_on_selector_all(
          "section.query", "els => els.map(s => s.querySelector("
          "'figure.hit[data-rank=\"1\"]').dataset.image)")
      pictures = tab.eval_on_selector_all("img.alignment", "els => els.length")
      tab.screenshot(path=str(tmp_path / "page.png"), full_page=True)
    finally:
      browser.close()
  n, k = len(result["images"]), 3
  # thumbnails: k per caption, one per image; one alignment picture per caption
  assert len(widths) == len(QUERIES) * k + n + len(QUERIES)
  assert all(w > 0 for w in widths), widths
  assert top1 == [c["top"][0]["image"] for c in result["captions_to_images"]]
  assert pictures == len(QUERIES)
  assert [u for u in requests if not u.startswith(("file:", "data:"))] == []
  assert os.path.getsize(tmp_path / "page.png") > 10_000
