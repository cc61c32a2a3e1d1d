"""The pictures: each function returns a matplotlib Figure (no pyplot, no display; save
it with fig.savefig(path)). The numbers drawn come from figure_data.py.

  saliency_figure(image)        the visual keep gates a_v over the patch grid
  regions_figure(image)         each region prompt's assignment A_hat, and its sigma
  alignment_figure(pairs)       per word piece: its text gate and its best patch
  curves_figure(series)         loss, score spread, dev rSum and lr against step

Figures are built without pyplot (matplotlib.figure.Figure), so nothing needs a
display and nothing global changes: savefig renders with Agg.
Images are drawn as given (any size); the model saw them resized to a square, so each
grid cell covers the same fraction of the picture as of the model's input.
"""
import textwrap
from typing import Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib import patches as mpatches
from matplotlib import ticker
from matplotlib.figure import Figure

from gralign_jax.models import token_grid
from gralign_jax.visualize import encode
from gralign_jax.visualize import figure_data

_HEAT = "inferno"
_BOX_COLOURS = ("#00e5ff", "#ffea00", "#76ff03", "#ff4081", "#ff9100", "#e040fb",
                "#b388ff", "#1de9b6", "#f50057", "#c6ff00")


def message_figure(text: str, size=(6.4, 1.6)) -> Figure:
  """A picture that only says `text` (e.g. what a run does not have to draw)."""
  fig = Figure(figsize=size, dpi=100)
  fig.text(0.5, 0.5, textwrap.fill(text, 70), ha="center", va="center", fontsize=11)
  return fig


def _image_axes(ax, image: encode.ImageView) -> None:
  """Draws the image so that grid cell (r, c) is the square [c, c+1] x [r, r+1]."""
  rows, cols = image.layout.grid
  ax.imshow(image.pixels, extent=(0, cols, rows, 0), interpolation="bilinear")
  h, w = image.pixels.shape[:2]
  ax.set_aspect((h / rows) / (w / cols))
  ax.set_xlim(0, cols)
  ax.set_ylim(rows, 0)
  ax.set_xticks([])
  ax.set_yticks([])


def _overlay(ax, image: encode.ImageView, values: np.ndarray, vmin: float, vmax: float,
             alpha: float = 0.6):
  rows, cols = image.layout.grid
  # aspect: imshow would reset it to "equal", squaring a non-square picture's grid.
  return ax.imshow(values, extent=(0, cols, rows, 0), cmap=_HEAT, vmin=vmin, vmax=vmax,
                   alpha=alpha, interpolation="nearest", aspect=ax.get_aspect())


def _range(values: np.ndarray) -> tuple[float, float]:
  lo, hi = float(np.min(values)), float(np.max(values))
  return (lo, hi) if hi - lo > 1e-6 else (lo - 0.5e-3, hi + 0.5e-3)


def literal(text: str) -> str:
  """`text` (a caption, word piece or file name) drawn as written: matplotlib reads
  text between two unescaped `$` as math (`a red $\\foo{$ circle` stops the drawing,
  `$5 to $10` loses its dollars), so each `$` is escaped; matplotlib draws `\\$` as
  `$`, and a backslash already before a `$` is kept."""
  return text.replace("$", r"\$")


def _title(image: encode.ImageView) -> str:
  return f" ({literal(image.name)})" if image.name else ""


# ------------------------------------------------------------------ saliency


def saliency_figure(image: encode.ImageView) -> Figure:
  """The visual keep gates a_v (evaluation form: softmax(h)[keep], no noise). A grid
  backbone: the image, and the gates as a heat map over the patch grid (cell values
  written where they fit); region features: a bar per region."""
  gates = np.asarray(image.encoded["gates"], np.float32)
  note = " (visual adapter off: every gate is 1)" if np.all(gates == 1.0) else ""
  if image.layout.kind != "grid":
    fig = Figure(figsize=(max(6.0, 0.22 * gates.size + 1.5), 3.6), dpi=110,
                 layout="constrained")
    ax = fig.add_subplot()
    ax.bar(np.arange(gates.size), gates, color="#d9480f")
    ax.set_xlabel("region index")
    ax.set_ylabel("keep gate $a_v$")
    ax.set_ylim(0, 1)
    ax.set_xlim(-0.7, gates.size - 0.3)
    ax.set_title(f"Visual saliency per region{_title(image)}{note}\nmean "
                 f"{gates.mean():.3f}, min {gates.min():.3f}, max {gates.max():.3f}",
                 fontsize=10)
    return fig
  grid = figure_data.saliency_grid(gates, image.layout)
  fig = Figure(figsize=(9.0, 4.4), dpi=110, layout="constrained")
  left, right = fig.subplots(1, 2)
  _image_axes(left, image)
  left.set_title("image", fontsize=10)
  _image_axes(right, image)
  vmin, vmax = _range(grid)
  mappable = _overlay(right, image, grid, vmin, vmax)
  rows, cols = image.layout.grid
  if rows * cols <= 144:
    size = 8 if max(rows, cols) <= 8 else 6
    for (r, c), value in np.ndenumerate(grid):
      bright = (value - vmin) / (vmax - vmin) > 0.6
      right.text(c + 0.5, r + 0.5, f"{value:.2f}", ha="center", va="center",
                 fontsize=size, color="black" if bright else "white")
  extra = (f"; CLS gate {gates[0]:.3f}" if image.layout.first else "")
  right.set_title(f"keep gate per patch ({rows}x{cols}){extra}", fontsize=10)
  fig.colorbar(mappable, ax=right, shrink=0.85, label="keep gate $a_v$")
  fig.suptitle(f"Visual saliency{_title(image)}{note}", fontsize=11)
  return fig


# ------------------------------------------------------------------ regions


def regions_figure(image: encode.ImageView) -> Figure:
  """Each region prompt k's assignment A_hat[:, k] over the patches (one panel per
  prompt, on the image, one colour scale for all) and its uncertainty, the mean sigma
  over dimensions (figure_data.region_sigma), in the panel title and as bars."""
  if "assign" not in image.encoded:
    return message_figure("This run has no region prompts (model.regions=false or "
                          "model.score=global): no region assignment to draw.")
  assign = np.asarray(image.encoded["assign"], np.float32)     # (L_v, K)
  sigma = figure_data.region_sigma(image.encoded["region_logvar"])
  maps = figure_data.region_maps(assign, image.layout)
  k = assign.shape[1]
  colours = [matplotlib.colormaps["tab10"](i % 10) for i in range(k)]
  uniform = 1.0 / assign.shape[0]
  if image.layout.kind != "grid":  # prompts x regions heat map, sigma bars beside
    fig = Figure(figsize=(max(7.0, 0.22 * maps.shape[1] + 4.0), 1.2 + 0.45 * k),
                 dpi=110, layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=(4, 1), sharey=True)
    mappable = left.imshow(maps, aspect="auto", cmap=_HEAT, interpolation="nearest")
    left.set_yticks(range(k), [f"prompt {i}" for i in range(k)])
    left.set_xlabel("region index")
    fig.colorbar(mappable, ax=left, label=r"$\hat A$ (uniform = 1/R = "
                 f"{uniform:.3f})", shrink=0.9)
    right.barh(range(k), sigma, color=colours)
    right.set_xlabel(r"mean $\sigma$")
    right.tick_params(labelleft=False)
    fig.suptitle(f"Region prompts over the regions{_title(image)}", fontsize=11)
    return fig
  cols = min(k, 5 if k <= 10 else 8)
  rows = -(-k // cols)
  fig = Figure(figsize=(2.3 * cols + 1.2, 2.5 * rows + 2.2), dpi=110,
               layout="constrained")
  grid_spec = fig.add_gridspec(rows + 1, cols, height_ratios=(*[2.5] * rows, 1.6))
  vmin, vmax = _range(maps)
  mappable = None
  panels = []
  for i in range(k):
    ax = fig.add_subplot(grid_spec[i // cols, i % cols])
    panels.append(ax)
    _image_axes(ax, image)
    mappable = _overlay(ax, image, maps[i], vmin, vmax, alpha=0.65)
    cls = (f", CLS {assign[0, i]:.2f}" if image.layout.first else "")
    ax.set_title(f"prompt {i}: $\\bar\\sigma$ {sigma[i]:.3f}{cls}", fontsize=8,
                 color="black")
    for spine in ax.spines.values():
      spine.set_edgecolor(colours[i])
      spine.set_linewidth(2.5)
  fig.colorbar(mappable, ax=panels, shrink=0.9, label=r"$\hat A$ per patch "
               f"(uniform = 1/$L_v$ = {uniform:.3f})")
  bars = fig.add_subplot(grid_spec[rows, :])
  bars.bar(range(k), sigma, color=colours)
  bars.set_xticks(range(k), [str(i) for i in range(k)],
                  fontsize=8 if k <= 20 else 6)
  bars.set_xlabel("region prompt")
  bars.set_ylabel(r"mean $\sigma$")
  bars.set_title(r"uncertainty per region: mean over dims of "
                 r"$\exp(\frac{1}{2}\log\sigma^2)$", fontsize=9)
  fig.suptitle(f"Region prompts: assignment $\\hat A$ over the patches{_title(image)}",
               fontsize=11)
  return fig


# ------------------------------------------------------------------ alignment


def _score_line(pair: encode.Pair) -> str:
  names = {"ori": "S_ori", "key": "S_key", "unc": "S_unc", "global": "global"}
  parts = ", ".join(f"{names[k]} {v:.3f}" for k, v in pair.scores.items() if k in names)
  return f"score {pair.scores['total']:.3f} ({parts})"


def _word_rows(pair: encode.Pair):
  """-> (token positions, word pieces, best patch per position, its cosine)."""
  cap, img = pair.caption, pair.image
  mask = np.asarray(cap.encoded["mask"], bool)
  best = figure_data.best_patches(cap.encoded["tokens"], mask, img.encoded["tokens"],
                              img.layout)
  cos = figure_data.token_cosines(cap.encoded["tokens"], img.encoded["tokens"])
  where = np.flatnonzero(mask)
  return (where, [cap.words[l] for l in where], best[where],
          np.asarray([cos[l, img.layout.first + best[l]] for l in where]), cos)


def alignment_figure(pairs: Sequence[encode.Pair]) -> Figure:
  """One row per pair (e.g. the matched pair and a hard negative): the image with a
  box on each word piece's best patch (numbered by word), and each word piece's text
  gate a_t as a bar, with its best patch (row, col) and cosine. For region features,
  the word x region cosines as a heat map with each word's best region boxed."""
  if not pairs:
    raise ValueError("alignment_figure needs at least one pair")
  heights = [max(3.4, 0.3 * int(np.sum(p.caption.encoded["mask"])) + 1.6) for p in pairs]
  fig = Figure(figsize=(11.0, sum(heights)), dpi=110, layout="constrained")
  subfigs = fig.subfigures(len(pairs), 1, height_ratios=heights, squeeze=False)[:, 0]
  for sub, pair in zip(subfigs, pairs):
    _alignment_row(sub, pair)
  return fig


def _alignment_row(fig, pair: encode.Pair) -> None:
  img, cap = pair.image, pair.caption
  where, words, best, best_cos, cos = _word_rows(pair)
  gates = np.asarray(cap.encoded["gates"], np.float32)[where]
  left, right = fig.subplots(1, 2, width_ratios=(1.0, 1.25))
  distinct = list(dict.fromkeys(int(b) for b in best))
  colour = {b: _BOX_COLOURS[i % len(_BOX_COLOURS)] for i, b in enumerate(distinct)}
  if img.layout.kind == "grid":
    _image_axes(left, img)
    for b in distinct:
      r, c = token_grid.patch_cell(b, img.layout)
      left.add_patch(mpatches.Rectangle((c + 0.04, r + 0.04), 0.92, 0.92, fill=False,
                                        edgecolor=colour[b], linewidth=2.2))
      ids = [str(i) for i, w in enumerate(best) if w == b]
      label = ",".join(ids) if len(ids) <= 6 else ",".join(ids[:5]) + ",..."
      left.text(c + 0.08, r + 0.1, label, color="black", fontsize=6.5, va="top",
                bbox=dict(facecolor=colour[b], edgecolor="none", pad=1.0, alpha=0.9))
    left.set_title("best patch of each word piece (numbers: words)", fontsize=9)
    place = lambda b: "({}, {})".format(*token_grid.patch_cell(b, img.layout))
  else:
    shown = cos[where]
    mappable = left.imshow(shown, aspect="auto", cmap="viridis", interpolation="nearest")
    for i, b in enumerate(best):
      left.add_patch(mpatches.Rectangle((b - 0.46, i - 0.46), 0.92, 0.92, fill=False,
                                        edgecolor=colour[int(b)], linewidth=2.0))
    left.set_yticks(range(len(words)),
                    [f"{i} {literal(w)}" for i, w in enumerate(words)], fontsize=8)
    left.set_xlabel("region index")
    left.set_title("cosine word piece x region (box: best region)", fontsize=9)
    fig.colorbar(mappable, ax=left, shrink=0.8, label="cosine")
    place = lambda b: f"region {b}"
  y = np.arange(len(words))
  right.barh(y, gates, color=[colour[int(b)] for b in best], edgecolor="#333333",
             linewidth=0.5)
  right.set_yticks(y, [f"{i} {literal(w)}" for i, w in enumerate(words)], fontsize=8)
  right.set_ylim(len(words) - 0.5, -0.5)
  right.set_xlim(0, 1.6)
  right.set_xticks([0, 0.25, 0.5, 0.75, 1.0])
  right.axvline(1.0, color="#999999", linewidth=0.6)
  for i, (b, c, g) in enumerate(zip(best, best_cos, gates)):
    right.text(1.03, i, f"{g:.2f} \u2192 {place(int(b))}, cos {c:.2f}", va="center",
               fontsize=7.5, bbox=dict(facecolor=colour[int(b)], alpha=0.35,
                                       edgecolor="none", pad=1.0))
  right.set_xlabel("text keep gate $a_t$")
  what = "patch" if img.layout.kind == "grid" else "region"
  right.set_title(f"word pieces: gate (bar) \u2192 best {what}, cosine", fontsize=9)
  caption = textwrap.shorten(" ".join(cap.caption.split()), 150, placeholder=" ...")
  cut = " [cut at data.max_len]" if cap.truncated else ""
  name = f" | image: {literal(img.name)}" if img.name else ""
  fig.suptitle(f"{literal(pair.label)}: {_score_line(pair)}{name}\n"
               f"\"{literal(caption)}\"{cut}",
               fontsize=9.5, ha="center")


# ------------------------------------------------------------------ curves


def curves_figure(series: Mapping[str, tuple[np.ndarray, np.ndarray]],
                  title: str = "", lr_note: str = "") -> Figure:
  """figure_data.training_series(...) -> a 2x2 figure: train loss, score spread (and the
  dev score std), dev rSum (and the final test rSum, at the best step), lr."""
  fig = Figure(figsize=(10.0, 6.4), dpi=110, layout="constrained")
  axes = fig.subplots(2, 2, sharex=True).ravel()

  def plot(ax, name, label, **kw):
    if name not in series:
      return False
    steps, values = series[name]
    ax.plot(steps, values, marker="o" if len(steps) <= 30 else None, markersize=3,
            label=label, **kw)
    return True

  panels = [("loss", "train loss"), ("score_spread", "score spread (std of the batch "
            "scores)"), ("dev_rsum", "dev rSum"), ("lr", "learning rate")]
  for ax, (name, label) in zip(axes, panels):
    drew = plot(ax, name, label, color="#1c7ed6")
    if name == "score_spread":
      drew |= plot(ax, "dev_score_std", "dev score std", color="#e8590c")
      if drew:
        ax.legend(fontsize=8)
    if name == "dev_rsum" and "test_rsum" in series:
      steps, values = series["test_rsum"]
      ax.plot(steps, values, "*", color="#c92a2a", markersize=11,
              label=f"test rSum {values[-1]:.1f} (best-on-dev state)")
      ax.legend(fontsize=8, loc="best")
    if name == "lr":
      ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax.set_title(label + (lr_note if name == "lr" else ""), fontsize=10)
    ax.grid(alpha=0.3)
    if not drew:
      ax.text(0.5, 0.5, f"no {label} in metrics.jsonl", ha="center", va="center",
              transform=ax.transAxes, color="#868e96")
  for ax in axes[2:]:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
  fig.suptitle(title or "Training curves", fontsize=11)
  return fig

