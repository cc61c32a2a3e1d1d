"""Train and evaluate on Flickr8k (real photographs) with pretrained DINOv2-S/14 and
MiniLM-L6.

  python -m experiments.flickr8k --config=experiments/configs/flickr8k.py \
      --config.data.root=../shared/data/flickr8k-1k --workdir=runs/f8k
"""
from experiments import entry_point

if __name__ == "__main__":
  entry_point.run("flickr8k.py", None)
