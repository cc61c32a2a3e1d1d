"""Train and evaluate on MS-COCO (1K five-fold and 5K test protocols).

  python -m experiments.coco --config=experiments/configs/coco.py \
      --config.data.root=/data/coco --workdir=runs/coco
"""
from experiments import main_lib

if __name__ == "__main__":
  main_lib.run(None, None)
