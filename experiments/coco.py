"""Train and evaluate on MS-COCO (1K five-fold and 5K test protocols).

  python -m experiments.coco --config=experiments/configs/coco.py \
      --config.data.root=/data/coco --workdir=runs/coco
"""
from experiments import entry_point

if __name__ == "__main__":
  entry_point.run(None, None)
