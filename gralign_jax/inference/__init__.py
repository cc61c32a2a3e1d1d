"""A trained run, used without the trainer: load it, encode a folder of images once,
ask it captions, and draw what aligned.

  from gralign_jax import inference
  run = inference.load_run("runs/demo")               # config + best-on-dev params
  split = inference.gallery_split("my_photos/")       # the files that can be images
  result = inference.retrieve(run, split, ["a red circle left of a blue square"], k=5)
  inference.write_result(result)                      # <workdir>/retrieval.json

run.py loads a run (no optimiser, params alone), gallery.py turns a folder into checked
files and their cached encodings (and exports them), query.py answers captions
(run_query keeps what it computed; retrieve is its JSON record), page.py draws that as
one HTML page. experiments.retrieve is the command line; experiments.evaluate,
experiments.probe and experiments.visualize load their runs here too.
"""
from gralign_jax.inference.gallery import (IMAGE_SUFFIXES, EncodedGallery, GallerySplit,
                                           RetrievalError, encode_gallery,
                                           export_gallery, fallback_dir, gallery_split)
from gralign_jax.inference.query import (QueryResult, alignment, retrieve, run_query,
                                         write_result)
from gralign_jax.inference.run import Run, load_run

__all__ = [
    "IMAGE_SUFFIXES", "EncodedGallery", "GallerySplit", "QueryResult", "RetrievalError",
    "Run", "alignment", "encode_gallery", "export_gallery", "fallback_dir",
    "gallery_split", "load_run", "retrieve", "run_query", "write_result"]
