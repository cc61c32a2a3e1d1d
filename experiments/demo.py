"""The Quickstart's main job: GRM on the synthetic scenes set (generated if absent).

  python -m experiments.demo                         # data/synthetic, runs/demo
  python -m experiments.demo --config=experiments/configs/demo.py:global
"""
from experiments import entry_point

if __name__ == "__main__":
  entry_point.run("demo.py", "runs/demo")
