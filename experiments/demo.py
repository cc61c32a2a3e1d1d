"""The Quickstart's main job: GRM on the synthetic scenes set (generated if absent).

  python -m experiments.demo                         # data/synthetic, runs/demo
  python -m experiments.demo --config=experiments/configs/demo.py:global
"""
from experiments import main_lib

if __name__ == "__main__":
  main_lib.run("demo.py", "runs/demo")
