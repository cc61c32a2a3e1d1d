"""Train and evaluate on Flickr30K (1K test protocol).

  python -m experiments.flickr30k --config=experiments/configs/flickr30k.py \
      --config.data.root=/data/f30k --workdir=runs/f30k
Any folder in the same on-disk layout works, the synthetic scenes set included:
  python -m experiments.flickr30k --config=experiments/configs/demo.py \
      --config.data.root=data/synthetic --workdir=runs/f30k_layout
"""
from experiments import entry_point

if __name__ == "__main__":
  entry_point.run(None, None)
