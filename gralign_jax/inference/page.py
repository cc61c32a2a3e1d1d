"""A retrieval result as one self-contained HTML page: every picture is embedded (a
data: URI), so the page opens anywhere, offline, and travels as one file.

  found = query.run_query(run, split, captions)
  html_page = render(found.record, alignment_pictures(run, found, count=20))
  paths.write_text("retrieval.html", html_page)

Per caption: its top-k images (thumbnails, rank, score, file) and, for the first
`count` captions, the word-to-patch alignment picture of the best one
(visualize.alignment_figure: about 0.3 s and 150 KB each, so they are not drawn for
thousands). Per image: its top-k captions. Then what was skipped, cut or clamped
(result["notes"]). Each thumbnail is embedded once, as a CSS class (`thumb-N`), however
often the image ranks; the page lists at most ROWS captions and ROWS images and says
when the JSON holds more. Each hit carries data-rank and data-image, so that a test (or
a script) can read the ranking back.
"""
import base64
import html
import io
import os
from typing import Sequence

import numpy as np
from PIL import Image

from gralign_jax import logs
from gralign_jax import paths
from gralign_jax.data import images as images_lib
from gralign_jax.inference import query

THUMBNAIL = 160  # px, the longer side
ROWS = 1000  # captions, and images, listed on the page at most (the JSON has them all)
# The tag predates the move to inference/page.py: pages written before stay ours.
GENERATOR = '<meta name="generator" content="gralign_jax retrieval_page">'


def is_page(text: str) -> bool:
  """Whether `text` is a page this module wrote (one experiments.retrieve may replace)."""
  return GENERATOR in text[:2000]

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 32px; }
.meta, .note { color: #555; font-size: 13px; }
section.query { border-top: 1px solid #ccc; padding: 12px 0; }
.hits { display: flex; flex-wrap: wrap; gap: 12px; }
figure.hit { margin: 0; width: 170px; font-size: 12px; }
.thumb { display: block; width: 160px; height: 160px; background: center / contain
  no-repeat; border: 3px solid transparent; box-sizing: content-box; }
figure.hit[data-rank="1"] .thumb { border-color: #1f77b4; }
figcaption { word-break: break-all; }
img.alignment { max-width: 100%; margin-top: 8px; }
table.by-image td { vertical-align: top; padding: 6px 12px 6px 0; font-size: 13px; }
table.by-image .thumb { width: 96px; height: 96px; }
img { image-rendering: auto; }
"""


def data_uri(data: bytes, mime: str) -> str:
  return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def thumbnail(path: str, size: int = THUMBNAIL) -> str:
  """A JPEG data: URI of the image at `path`, its longer side `size` px."""
  image = Image.fromarray(images_lib.decode_image_bytes(paths.read_bytes(path), path))
  image.thumbnail((size, size))
  out = io.BytesIO()
  image.save(out, format="JPEG", quality=85)
  return data_uri(out.getvalue(), "image/jpeg")


def figure_uri(figure) -> str:
  """A PNG data: URI of a matplotlib figure."""
  out = io.BytesIO()
  figure.savefig(out, format="png", dpi=80, bbox_inches="tight")
  return data_uri(out.getvalue(), "image/png")


def alignment_pictures(run, found: query.QueryResult, count: int,
                       log=lambda line: None) -> list[str]:
  """For the first `count` captions of `found`: the alignment picture (PNG data: URI)
  of each one's best image, drawn from the encodings the query computed (nothing is
  encoded again; the image file is read for its pixels only)."""
  from gralign_jax import visualize  # pylint: disable=g-import-not-at-top
  items = found.record["captions_to_images"][:max(count, 0)]
  if not items:
    return []
  log(f"Drawing the word-to-patch pictures of {len(items)} caption(s) for the page ...")
  row = lambda tree, i: {k: np.asarray(v[i]) for k, v in tree.items()}
  pictures = []
  for m, item in enumerate(items):
    best = item["top"][0]["index"]
    path = found.gallery.split.image_paths[best]
    image = visualize.image_view(run, row(found.gallery.images, best),
                                 pixels=visualize.load_image(path),
                                 name=os.path.basename(path))
    caption = visualize.caption_view(run, item["caption"], found.ids[m],
                                     row(found.texts, m), m in found.truncated)
    pair = visualize.make_pair(run, image, caption, "best image")
    pictures.append(figure_uri(visualize.alignment_figure([pair])))
  return pictures


def _e(text) -> str:
  """User text (a caption, a file name) for the page: control characters and bytes
  that are not UTF-8 shown as escapes (logs.shown), then HTML-escaped."""
  return html.escape(logs.shown(str(text)))


def _thumb(path: str, classes: dict, where: str = "hit") -> str:
  return (f'<span class="thumb {classes[path]}" role="img" '
          f'aria-label="{_e(os.path.basename(path))}" data-where="{where}"></span>')


def _hit(rank: int, hit: dict, classes: dict) -> str:
  path = hit["image"]
  return (f'<figure class="hit" data-rank="{rank}" data-image="{_e(path)}">'
          f"{_thumb(path, classes)}"
          f"<figcaption>{rank}. {hit['score']:.4f}<br>{_e(path)}</figcaption>"
          "</figure>")


def render(result: dict, pictures: Sequence[str] = (), rows: int = ROWS) -> str:
  """The page of a retrieve() result; pictures[m]: the alignment picture (a data:
  URI) of caption m's best image, for the first len(pictures) captions."""
  e = _e
  queries = result["captions_to_images"][:rows]
  by_image = result["images_to_captions"][:rows]
  shown = dict.fromkeys([hit["image"] for item in queries for hit in item["top"]] +
                        [item["image"] for item in by_image])
  classes = {path: f"thumb-{i}" for i, path in enumerate(shown)}
  thumbs = "\n".join(f'.{classes[path]} {{ background-image: url("{thumbnail(path)}"); }}'
                      for path in shown)
  n_captions, n_images = len(result["captions_to_images"]), len(result["images"])
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', GENERATOR,
      f"<title>Retrieval: {e(str(result['workdir']))}</title>",
      f"<style>{_STYLE}\n{thumbs}</style></head><body>",
      f"<h1>Retrieval with {e(str(result['workdir']))} (step {result['step']})</h1>",
      f'<p class="meta">{n_images} images, {n_captions} captions, k = {result["k"]}. '
      "Scores: the model's total score (0.4 S_ori + 0.4 S_key + 0.2 S_unc).</p>"]
  for line in result.get("notes", []):
    parts.append(f'<p class="note">{e(line)}</p>')
  if len(pictures) < n_captions:
    parts.append(f'<p class="note">Word-to-patch pictures for the first {len(pictures)} '
                 f"of {n_captions} captions (experiments.retrieve --pictures).</p>")
  for what, total in (("captions", n_captions), ("images", n_images)):
    if total > rows:
      parts.append(f'<p class="note">The page lists the first {rows} of {total} {what}; '
                   "the JSON output holds them all.</p>")
  parts.append("<h2>Images per caption</h2>")
  for m, item in enumerate(queries):
    parts.append(f'<section class="query" data-query="{m}">'
                 f"<h3>&ldquo;{e(item['caption'])}&rdquo;</h3><div class=\"hits\">")
    parts += [_hit(r, hit, classes) for r, hit in enumerate(item["top"], 1)]
    parts.append("</div>")
    if m < len(pictures) and pictures[m]:
      parts.append(f'<img class="alignment" src="{pictures[m]}" alt="word-to-patch '
                   f'alignment with image 1">')
    parts.append("</section>")
  parts.append('<h2>Captions per image</h2><table class="by-image">')
  for item in by_image:
    listed = "".join(f"<li>{hit['score']:.4f} {e(hit['caption'])}</li>"
                     for hit in item["top"])
    parts.append(f'<tr data-image="{e(item["image"])}"><td>'
                 f'{_thumb(item["image"], classes, "by-image")}</td>'
                 f"<td>{e(item['image'])}<ol>{listed}</ol></td></tr>")
  parts.append("</table>")
  if result.get("skipped_images"):
    parts.append("<h2>Skipped files</h2><ul>" + "".join(
        f"<li>{e(s['path'])}: {e(s['reason'])}</li>" for s in result["skipped_images"])
                 + "</ul>")
  parts.append("</body></html>")
  return "\n".join(parts)
