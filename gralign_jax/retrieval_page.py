"""A retrieval result as one self-contained HTML page: every picture is embedded (a
data: URI), so the page opens anywhere, offline, and can be mailed as one file.

  page = retrieval_page.render(result, alignment_pictures(run, result))
  paths.write_text("retrieval.html", page)

Per caption: its top-k images (thumbnails, rank, score, file) and the word-to-patch
alignment picture of the best one (visualize.alignment_figure). Per image: its top-k
captions. Then what was skipped, cut or clamped (result["notes"]). Each hit carries
data-rank and data-image, so that a test (or a script) can read the ranking back.
"""
import base64
import html
import io
import os
from typing import Sequence

from PIL import Image

from gralign_jax import paths
from gralign_jax.data import images as images_lib

THUMBNAIL = 160  # px, the longer side

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 24px; color: #222; max-width: 1400px; }
h1 { font-size: 20px; } h2 { font-size: 16px; margin-top: 32px; }
.meta, .note { color: #555; font-size: 13px; }
section.query { border-top: 1px solid #ccc; padding: 12px 0; }
.hits { display: flex; flex-wrap: wrap; gap: 12px; }
figure.hit { margin: 0; width: 170px; font-size: 12px; }
figure.hit img { width: 160px; height: auto; border: 3px solid transparent; }
figure.hit[data-rank="1"] img { border-color: #1f77b4; }
figcaption { word-break: break-all; }
img.alignment { max-width: 100%; margin-top: 8px; }
table.by-image td { vertical-align: top; padding: 6px 12px 6px 0; font-size: 13px; }
table.by-image img { width: 96px; height: auto; }
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


def alignment_pictures(run, result: dict) -> list[str]:
  """Per caption of `result`: the alignment picture (PNG data: URI) of its best image."""
  from gralign_jax import visualize  # pylint: disable=g-import-not-at-top
  items = result["captions_to_images"]
  views = visualize.encode_captions(run, [item["caption"] for item in items])
  pictures = []
  for item, caption in zip(items, views):
    best = item["top"][0]["image"]
    image = visualize.encode_image(run, visualize.load_image(best),
                                   name=os.path.basename(best))
    pair = visualize.make_pair(run, image, caption, "best image")
    pictures.append(figure_uri(visualize.alignment_figure([pair])))
  return pictures


def _hit(rank: int, hit: dict, thumbs: dict) -> str:
  path = hit["image"]
  return (f'<figure class="hit" data-rank="{rank}" data-image="{html.escape(path)}">'
          f'<img src="{thumbs[path]}" alt="{html.escape(os.path.basename(path))}">'
          f"<figcaption>{rank}. {hit['score']:.4f}<br>{html.escape(path)}</figcaption>"
          "</figure>")


def render(result: dict, pictures: Sequence[str] | None = None) -> str:
  """The page of a retrieve() result; pictures[m]: the alignment picture (a data:
  URI) of caption m's best image, or None for none."""
  e = html.escape
  thumbs = {path: thumbnail(path) for path in result["images"]}
  parts = [
      "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
      f"<title>Retrieval: {e(str(result['workdir']))}</title>",
      f"<style>{_STYLE}</style></head><body>",
      f"<h1>Retrieval with {e(str(result['workdir']))} (step {result['step']})</h1>",
      f'<p class="meta">{len(result["images"])} images, '
      f"{len(result['captions_to_images'])} captions, k = {result['k']}. Scores: the "
      "model's total score (0.4 S_ori + 0.4 S_key + 0.2 S_unc).</p>"]
  for line in result.get("notes", []):
    parts.append(f'<p class="note">{e(line)}</p>')
  parts.append("<h2>Images per caption</h2>")
  for m, item in enumerate(result["captions_to_images"]):
    parts.append(f'<section class="query" data-query="{m}">'
                 f"<h3>&ldquo;{e(item['caption'])}&rdquo;</h3><div class=\"hits\">")
    parts += [_hit(r, hit, thumbs) for r, hit in enumerate(item["top"], 1)]
    parts.append("</div>")
    if pictures is not None and pictures[m]:
      parts.append(f'<img class="alignment" src="{pictures[m]}" alt="word-to-patch '
                   f'alignment with image 1">')
    parts.append("</section>")
  parts.append('<h2>Captions per image</h2><table class="by-image">')
  for item in result["images_to_captions"]:
    rows = "".join(f"<li>{hit['score']:.4f} {e(hit['caption'])}</li>" for hit in item["top"])
    parts.append(f'<tr data-image="{e(item["image"])}"><td><img src="{thumbs[item["image"]]}"'
                 f' alt="{e(os.path.basename(item["image"]))}"></td>'
                 f"<td>{e(item['image'])}<ol>{rows}</ol></td></tr>")
  parts.append("</table>")
  if result.get("skipped_images"):
    parts.append("<h2>Skipped files</h2><ul>" + "".join(
        f"<li>{e(s['path'])}: {e(s['reason'])}</li>" for s in result["skipped_images"])
                 + "</ul>")
  parts.append("</body></html>")
  return "\n".join(parts)
