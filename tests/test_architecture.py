"""docs/architecture.md's "Which may import which", checked on the source: every
`gralign_jax` import (at module level or inside a function) of every module is one its
layer may make. A new import that runs back up fails here, naming the file and line."""
import ast
import os
import sys

import pytest

PACKAGE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "gralign_jax")

# unit -> the units it may import (a unit: a subpackage or a top-level module). The
# table in docs/architecture.md, one row per layer, top to bottom.
_FOUNDATION = {"paths", "logs", "watchdog", "processes"}
_RUN_PARTS = {"checkpoint", "run_dir", "metrics", "configs", "sharding", "distributed",
              "preemption", "profiling", "throughput", "coordinator"}
_BELOW_RUN = {"evaluation", "models", "data", "scores", "weights", "onnx_import",
              "train_state"} | _RUN_PARTS | _FOUNDATION
ALLOWED = {
    "inference": _BELOW_RUN | {"visualize"},
    "visualize": _BELOW_RUN | {"optim"},   # lr_schedule rebuilds a run's schedule
    "train": _BELOW_RUN | {"losses", "optim", "grad_cache"},
    "train_state": {"models", "sharding", "logs"},
    "losses": {"scores", "models"},
    "optim": {"models"},
    "evaluation": {"scores", "data", "sharding", "paths", "logs"},
    "scores": {"models", "logs"},
    "models": {"weights", "logs"},
    "data": {"configs", "logs", "weights", "paths", "processes"},
    "configs": {"logs", "models", "weights", "data", "profiling"},  # inside functions
    "checkpoint": {"paths", "logs", "watchdog"},
    "run_dir": {"paths", "data", "configs", "processes"},
    "metrics": {"paths"},
    "profiling": {"configs", "paths"},
    "sharding": {"configs"},
    "grad_cache": {"configs"},
    "distributed": {"coordinator", "watchdog"},
    "weights": {"onnx_import"},
}


def _unit(module: str) -> str:
  """gralign_jax.a.b -> "a"; the package itself -> ""."""
  parts = module.split(".")
  return parts[1] if len(parts) > 1 else ""


def _imports():
  """-> [(file, line, importing unit, imported unit)] for every gralign_jax import."""
  out = []
  for folder, _, files in os.walk(PACKAGE):
    for name in sorted(files):
      if not name.endswith(".py"):
        continue
      path = os.path.join(folder, name)
      rel = os.path.relpath(path, os.path.dirname(PACKAGE))
      module = rel[:-3].replace(os.sep, ".").removesuffix(".__init__")
      for node in ast.walk(ast.parse(open(path, encoding="utf-8").read())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
            "gralign_jax"):
          targets = [f"{node.module}.{a.name}" if node.module == "gralign_jax"
                     else node.module for a in node.names]
        elif isinstance(node, ast.Import):
          targets = [a.name for a in node.names if a.name.startswith("gralign_jax")]
        else:
          continue
        out += [(rel, node.lineno, _unit(module), _unit(t)) for t in targets]
  return out


def test_no_import_runs_back_up():
  imports = _imports()
  assert len(imports) > 100  # the walk found the package
  wrong = [f"{f}:{line} ({unit} -> {target})" for f, line, unit, target in imports
           if unit != target and target not in ALLOWED.get(unit, set())]
  assert not wrong, "imports that docs/architecture.md does not allow: " + "; ".join(wrong)


@pytest.mark.parametrize("unit", ["train", "optim", "losses", "grad_cache"])
def test_inference_stands_without_the_trainer(unit):
  assert unit not in ALLOWED["inference"]
  assert not [f for f, _, u, t in _imports() if u == "inference" and t == unit]


def test_a_forbidden_import_is_found(tmp_path, monkeypatch):
  """The check can fail: a module of models/ importing the trainer is reported."""
  fake = tmp_path / "gralign_jax"
  (fake / "models").mkdir(parents=True)
  (fake / "models" / "bad.py").write_text("def f():\n  from gralign_jax import train\n")
  monkeypatch.setattr(sys.modules[__name__], "PACKAGE", str(fake))
  assert _imports() == [(os.path.join("gralign_jax", "models", "bad.py"), 2, "models",
                         "train")]
