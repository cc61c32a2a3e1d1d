"""The synthetic set's world and words: shapes, colours, sizes, and the words captions
use for sizes, relations, counts and backgrounds; the file names of its layout."""

SHAPES = ("circle", "square", "triangle", "diamond", "star", "cross", "hexagon", "ring")
COLOURS = {  # Saturated, far from the muted backgrounds and grey clutter.
    "red": (220, 30, 30), "green": (30, 170, 40), "blue": (30, 60, 225),
    "yellow": (240, 215, 20), "purple": (135, 40, 190), "orange": (250, 130, 10),
    "cyan": (20, 200, 220), "pink": (250, 105, 185)}
# Object radius as a fraction of the image side.
SIZES = {"small": 0.085, "large": 0.13}
# Words a caption may use for each size (tests map them back).
SIZE_WORDS = {"small": ("small", "little"), "large": ("large", "big")}
RELATION_WORDS = {
    "left": ("to the left of", "left of", "on the left of"),
    "right": ("to the right of", "right of", "on the right of"),
    "above": ("above", "over"),
    "below": ("below", "under", "beneath")}
COUNT_WORDS = {1: "one", 2: "two", 3: "three", 4: "four"}
BACKGROUND_WORDS = {"gradient": ("shaded", "smooth"), "stripes": ("striped",),
                    "noise": ("textured", "mottled")}
SPLITS = (("train", "train"), ("dev", "val"), ("test", "test"))  # (ours, Karpathy's)
MARKER = ".complete"
OWNER_STAMP = ".owner.json"  # pid and host of the process writing a partial folder
IMAGE_DIR = "images"
KARPATHY_JSON = "dataset_synthetic.json"
SCENES_JSON = "scenes.json"
