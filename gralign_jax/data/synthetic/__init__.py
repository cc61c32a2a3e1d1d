"""The embedded default data set: synthetic scenes that need fine-grained alignment.

Each image holds 2-4 objects (shape x colour x size) at non-overlapping positions away
from the border, over a muted textured background, plus 1-3 dull clutter items that no
caption mentions. Five captions per image vary in wording and order: at least two name
every object with size and colour, about a quarter name a single object, some state a
spatial relation computed from the object centres. About a third of the images come in
pairs that share shapes, colours and layout but swap colours (or shapes) between two
objects ("red circle + blue square" vs "blue circle + red square"): hard negatives that
only a model which binds attributes to objects can tell apart.

`generate(root)` writes, deterministically given the seed (same bytes twice), the layouts
that the public releases use, so the readers of real data read this set unchanged:

  root/images/{imgid:06d}.jpg          JPEG, quality 90 (4:4:4, colours of small shapes
                                       stay clean)
  root/dataset_synthetic.json          Karpathy style; split "val" is the dev split; no
                                       "filepath" key (Flickr30K style: images lie
                                       directly in the image folder)
  root/id_mapping.json                 LAPS / VSE-infinity: {"<imgid>": "<file name>"}
  root/precomp/{train,dev,test}_ids.txt   one image id per line
  root/precomp/{train,dev,test}_caps.txt  five captions per image, c -> image c // 5
  root/tokenizer/                      WordPiece trained on the train captions (HF format)
  root/scenes.json                     machine-readable scene record: objects, boxes,
                                       clutter, which captions mention which objects
                                       (`load_scene_record` draws it again for a set
                                       written without one)
  root/.complete                       written last: the parameters and "files", every
                                       path above (relative); `is_complete(root)`
                                       checks for it

The set is written into a hidden sibling folder and renamed into place only once
complete; `generate` never deletes a file it did not write (publish.py says how).

  vocabulary.py  shapes, colours, sizes and the words for them; the layout's file names
  scenes.py      drawing the scenes (make_scenes) and their record (scenes.json)
  captions.py    the caption grammar
  render.py      drawing a scene's pixels
  layout.py      writing a set's files into an empty folder
  publish.py     generate: where to write, nothing lost, nothing half-written

By hand: python -m experiments.generate_synthetic --root=DIR [--image_size=64] ...
"""
from gralign_jax.data.synthetic.captions import relation
from gralign_jax.data.synthetic.publish import generate, is_complete
from gralign_jax.data.synthetic.render import render
from gralign_jax.data.synthetic.scenes import load_scene_record, make_scenes, scene_record
from gralign_jax.data.synthetic.vocabulary import (BACKGROUND_WORDS, COLOURS, COUNT_WORDS,
                                                   IMAGE_DIR, KARPATHY_JSON, MARKER,
                                                   OWNER_STAMP, RELATION_WORDS,
                                                   SCENES_JSON, SHAPES, SIZE_WORDS, SIZES,
                                                   SPLITS)

__all__ = [
    "BACKGROUND_WORDS", "COLOURS", "COUNT_WORDS", "IMAGE_DIR", "KARPATHY_JSON", "MARKER",
    "OWNER_STAMP", "RELATION_WORDS", "SCENES_JSON", "SHAPES", "SIZES", "SIZE_WORDS",
    "SPLITS", "generate", "is_complete", "load_scene_record", "make_scenes", "relation",
    "render", "scene_record"]
