"""Lowers every paper configuration's programs for TPU and GPU from a CPU-only machine
(`jax.export`), and optionally compiles them for a TPU topology (libtpu, no TPU needed).

  python -m experiments.export_check                     # the whole grid, lowered
  python -m experiments.export_check --configs=vit224 --platforms=tpu
  python -m experiments.export_check --programs=score_pallas --smoke
  python -m experiments.export_check --tpu_compile=v5e:2x2 --platforms=tpu

Per configuration (common.BACKBONES, through experiments/configs/<dataset>.py, random
init: no weights are read, and only shapes exist, never the parameters) and platform:

  train_step     train.make_train_step: the update at train.batch_size (128), bf16
                 compute, the batch split over the mesh
  encode_images  the evaluator's jitted image encoder (eval.batch_size images)
  encode_texts   the evaluator's jitted caption encoder
  score_xla      the evaluator's score program (blockwise.py's sharded blocks) with
                 block_scores.xla_scores, the portable path, at the test split's size
  score_pallas   the same with the fused kernel for the platform: Triton for cuda,
                 Mosaic (pallas_kernels.TpuKernelParams) for tpu

"Lowered" means traced and turned into StableHLO for the platform, Pallas kernels
lowered to Triton IR or Mosaic; nothing is compiled for cuda here (XLA:GPU and the
Triton compiler need CUDA). With --tpu_compile=TOPOLOGY each tpu row is also compiled
by XLA:TPU and Mosaic for that topology's chips through libtpu (`pip install
"jax[tpu]"`; its devices are described, not present) and reports the compiled
program's memory per chip. The table goes to stdout and to --out (.json and .md): by
default benchmarks/export_check (export_check_tpu_<chip> with --tpu_compile) for the whole
grid at the default sizes, and runs/benchmarks/ for any other selection
(experiments/records.py), so a partial check never replaces the committed table. The
exit status is 1 when any row failed.
"""
import json
import os
import sys
import time

if __name__ == "__main__":  # fake CPU devices for the mesh, before jax starts
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
  os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from jax import export  # noqa: E402

from experiments import records  # noqa: E402
from experiments.configs import common  # noqa: E402
from gralign_jax import configs  # noqa: E402
from gralign_jax import gpu_targets  # noqa: E402
from gralign_jax import optim  # noqa: E402
from gralign_jax import sharding  # noqa: E402
from gralign_jax import train  # noqa: E402
from gralign_jax import train_state  # noqa: E402
from gralign_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from gralign_jax.models import grm  # noqa: E402
from gralign_jax.scores import blockwise  # noqa: E402
from gralign_jax.scores import pallas_kernels  # noqa: E402
from gralign_jax.scores import scorer as scorer_lib  # noqa: E402

PROGRAMS = ("train_step", "encode_images", "encode_texts", "score_xla", "score_pallas")
PLATFORMS = ("tpu", "cuda")
# Test split sizes scored by the evaluator (COCO 5K, Flickr30K 1K), 5 captions each.
TEST_IMAGES = {"coco": 5000, "flickr30k": 1000}
# Device memory the XLA score blocks are sized to (scorer.auto_blocks): v5e, H100.
DEVICE_BYTES = {"tpu": 16 * 2 ** 30, "cuda": 80 * 2 ** 30}
# The Triton custom call carries Triton IR, which has no compatibility guarantee across
# jax versions, so jax.export refuses it unless told; here it is only lowered, never
# stored and run by another version.
TRITON_CALL = "__gpu$xla.gpu.triton"
KERNEL_CALL = {"tpu": "tpu_custom_call", "cuda": TRITON_CALL}


def build_config(dataset: str, backbone: str, *, smoke: bool = False,
                 batch: int = 128, dtype: str = "bfloat16", grad_cache_chunks: int = 1):
  """A paper config with random init (weights ""), bf16 compute, batch `batch`, the
  train step's batch encoded in `grad_cache_chunks` chunks (grad_cache.py)."""
  config = common.paper_config(dataset, backbone + (",smoke" if smoke else ""))
  config.model.vision.weights = config.model.text.weights = ""
  config.model.compute_dtype = dtype
  config.train.batch_size = batch
  config.train.grad_cache_chunks = grad_cache_chunks
  config.eval.backend = "xla"  # the evaluator's own scorer is not used here
  return configs.finalize(config, vocab_size=30522)  # BERT's WordPiece vocabulary


def _spec(shape, dtype, sharding_):
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding_)


def programs(config, mesh, platform: str, dataset: str, score_dtype: str) -> dict:
  """{name: (jitted function, abstract args)} for one config on `mesh`, as the trainer
  and the evaluator build them."""
  model = grm.build_model(config.model)
  tx = optim.make_optimizer(config, steps_per_epoch=1000)
  rep, data = sharding.replicated(mesh), sharding.batch_sharded(mesh)
  state = train_state.abstract_state(model, tx, config, mesh)
  image = grm.example_inputs(config.model, config.data.max_len)[0]
  pixels = jnp.uint8 if config.model.vision.name != "butd" else jnp.float32
  lt = config.data.max_len

  def batch(n):
    return {"image": _spec((n,) + image.shape[1:], pixels, data),
            "ids": _spec((n, lt), jnp.int32, data),
            "mask": _spec((n, lt), jnp.bool_, data),
            "image_id": _spec((n,), jnp.int32, data)}

  out = {"train_step": (train.make_train_step(model, tx, config, mesh),
                        (state, batch(config.train.batch_size)))}
  ev = evaluator_lib.Evaluator(model, config, mesh)
  # The evaluator's jitted encoders (what Evaluator.encode_images / encode_texts call).
  enc_i, enc_t = ev._encode_images, ev._encode_texts  # pylint: disable=protected-access
  b = batch(ev.batch)
  out["encode_images"] = (enc_i, (state["params"], b["image"]))
  out["encode_texts"] = (enc_t, (state["params"], b["ids"], b["mask"]))
  # Scoring: the prepared token sets' shapes follow from the encoders' outputs.
  img = jax.eval_shape(enc_i, state["params"], b["image"])
  txt = jax.eval_shape(enc_t, state["params"], b["ids"], b["mask"])
  n, n_dev = TEST_IMAGES[dataset], mesh.devices.size
  m = 5 * n
  kernel = pallas_kernels.default_params("tpu" if platform == "tpu" else "gpu")
  rows = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(mesh.axis_names))
  one = lambda tree: {k: np.zeros((1,) + v.shape[1:], v.dtype) for k, v in tree.items()}
  for name, backend in (("score_xla", "xla"), ("score_pallas", "pallas")):
    sc = scorer_lib.Scorer(config.model, backend=backend, dtype=score_dtype, mesh=mesh,
                           params=kernel, interpret=False)
    # One encoded item each, prepared (unit, padded for the kernel) as the evaluator's
    # would be: the shapes of the gallery the program is lowered for.
    pi, pt = sc.prepare(one(img), one(txt))
    bi, bt = scorer_lib.auto_blocks(backend, -(-n // n_dev), m, pt["tokens"].shape[1],
                                    pi["tokens"].shape[1],
                                    bytes_limit=DEVICE_BYTES[platform])
    n_pad = -(-n // (n_dev * bi)) * n_dev * bi
    images = {k: _spec((n_pad,) + v.shape[1:], v.dtype, rows) for k, v in pi.items()}
    texts = {k: _spec((bt,) + v.shape[1:], v.dtype, rep) for k, v in pt.items()}
    # The program Scorer.matrix runs per text block (blockwise.score_matrix).
    key = blockwise._FnKey(sc.score_fn)  # pylint: disable=protected-access
    out[name] = (blockwise._matrix_program(key, mesh, bi),  # pylint: disable=protected-access
                 (images, texts))
  return out


# ---------------------------------------------------------------------------
# Lowering and compiling one program.
# ---------------------------------------------------------------------------
def one_line(e: BaseException) -> str:
  """An exception as one line: its type and the first line of its message."""
  lines = [x.strip() for x in str(e).splitlines() if x.strip()]
  return f"{type(e).__name__}: {lines[0] if lines else ''}"[:240]


def lower(fn, args, platform: str, kernel: str | None = None) -> dict:
  """jax.export for one platform -> {ok, reason, seconds, stablehlo_kib}. kernel: a
  custom-call target the module must hold (the Pallas kernel), else the row fails."""
  t0 = time.perf_counter()
  exp = export.export(fn, platforms=[platform], disabled_checks=[
      export.DisabledSafetyCheck.custom_call(TRITON_CALL)])(*args)
  row = {"ok": True, "reason": "", "seconds": time.perf_counter() - t0,
         "stablehlo_kib": len(exp.mlir_module_serialized) / 1024,
         "devices": exp.nr_devices}
  if kernel is not None and f"@{kernel}(" not in exp.mlir_module().replace('"', ""):
    row.update(ok=False, reason=f"no {kernel} call in the module: the kernel was not "
               "lowered for this platform")
  return row


def compile_for(fn, args, options: dict | None = None,
                budget: tuple[int, str] | None = None) -> dict:
  """Lowered and compiled (XLA:TPU or XLA:GPU, with compiler `options`) for the
  compile-only devices the args' shardings name -> {ok, reason, seconds, memory_gib}:
  arguments + outputs + temporaries - aliased (donated) bytes, per device. budget:
  (bytes, what they are): the row fails when the program needs more."""
  t0 = time.perf_counter()
  compiled = fn.lower(*args).compile(options)
  mem = compiled.memory_analysis()
  per_chip = (mem.argument_size_in_bytes + mem.output_size_in_bytes +
              mem.temp_size_in_bytes - mem.alias_size_in_bytes) if mem else 0
  row = {"ok": True, "reason": "", "seconds": time.perf_counter() - t0,
         "memory_gib": per_chip / 2 ** 30}
  if budget is not None and per_chip > budget[0]:
    row.update(ok=False, reason=f"needs {per_chip / 2 ** 30:.2f} GiB per device, over "
               f"the budget of {budget[0] / 2 ** 30:.2f} GiB ({budget[1]})")
  return row


def tpu_topology_mesh(name: str, n_devices: int = 0):
  """A ('data',) mesh over the chips of a TPU topology ("v5e:2x2", "v4:2x2x1", ...),
  described by libtpu; no TPU needs to be attached."""
  # libtpu looks for the TPU VM it runs on at start-up; these only quiet its warnings
  # on a host without one (the topology name decides the target).
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-4")
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  # Its lock file keeps a second process off a TPU; only compilation happens here, so
  # two checks (or a test beside a grid run) may share it.
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  devices = topologies.get_topology_desc(name, "tpu").devices
  return sharding.make_mesh(devices[:n_devices] if n_devices > 0 else devices)


def check(dataset: str, backbones, platforms, names, *, smoke=False, batch=128,
          dtype="bfloat16", score_dtype="bfloat16", n_devices=8, tpu_compile="",
          cuda_compile="", grad_cache_chunks=1, report=print) -> list[dict]:
  """Every (backbone, platform, program) -> one row each (plus a compile row per tpu
  program with tpu_compile, per cuda program with cuda_compile). report(row) is called
  as each row is done."""
  rows = []
  if n_devices > len(jax.devices()):
    raise ValueError(f"--devices={n_devices}, but this process has {len(jax.devices())}"
                     " devices (XLA_FLAGS --xla_force_host_platform_device_count).")
  cpu_mesh = sharding.make_mesh(jax.devices()[:n_devices])
  meshes = [("lower", p, cpu_mesh) for p in platforms]
  if tpu_compile and "tpu" in platforms:
    meshes.append((f"compile {tpu_compile}", "tpu", tpu_topology_mesh(tpu_compile)))
  budget = None
  if cuda_compile and "cuda" in platforms:
    meshes.append((f"compile {cuda_compile}", "cuda",
                   sharding.make_mesh(gpu_targets.devices(cuda_compile))))
    card = gpu_targets.parse(cuda_compile)[0]
    budget = (gpu_targets.memory_budget(card), f"{gpu_targets.BUDGET_SHARE:.0%} of an "
              f"{gpu_targets.CARDS[card][0]}: gpu_targets.BUDGET_SHARE")
  for backbone in backbones:
    config = build_config(dataset, backbone, smoke=smoke, batch=batch, dtype=dtype,
                          grad_cache_chunks=grad_cache_chunks)
    for stage, platform, mesh in meshes:
      base = {"config": backbone + (",smoke" if smoke else ""), "platform": platform,
              "stage": stage}
      try:
        progs = programs(config, mesh, platform, dataset, score_dtype)
      except Exception as e:  # pylint: disable=broad-except
        progs = {name: e for name in names}
      for name in names:
        row = dict(base, program=name)
        try:
          if isinstance(progs[name], Exception):
            raise progs[name]
          fn, args = progs[name]
          if stage == "lower":
            kernel = KERNEL_CALL[platform] if name == "score_pallas" else None
            row.update(lower(fn, args, platform, kernel))
          else:
            row.update(compile_for(fn, args, gpu_targets.COMPILER_OPTIONS,
                                   budget) if platform == "cuda" else compile_for(fn, args))
        except Exception as e:  # pylint: disable=broad-except
          row.update(ok=False, reason=one_line(e))
        rows.append(row)
        report(row)
  return rows


# ---------------------------------------------------------------------------
# Output.
# ---------------------------------------------------------------------------
COLUMNS = ("config", "program", "platform", "stage", "result", "seconds", "StableHLO KiB",
           "memory / chip GiB")


def cells(row: dict) -> list[str]:
  result = "OK" if row["ok"] else f"FAIL: {row['reason']}"
  seconds = f"{row['seconds']:.1f}" if "seconds" in row else ""
  kib = f"{row['stablehlo_kib']:,.0f}" if "stablehlo_kib" in row else ""
  mem = f"{row['memory_gib']:.2f}" if "memory_gib" in row else ""
  return [row["config"], row["program"], row["platform"], row["stage"], result, seconds,
          kib, mem]


def print_row(row: dict) -> None:
  c = cells(row)
  print(f"{c[0]:17s} {c[1]:13s} {c[2]:5s} {c[3]:16s} {c[5]:>6s}s {c[6]:>8s} KiB "
        f"{c[7]:>6s} {c[4]}", flush=True)


def markdown(rows: list[dict], header: list[str]) -> str:
  lines = header + ["", "| " + " | ".join(COLUMNS) + " |",
                    "|" + "---|" * len(COLUMNS)]
  lines += ["| " + " | ".join(x.replace("|", "/") for x in cells(r)) + " |" for r in rows]
  return "\n".join(lines) + "\n"


_DATASET = flags.DEFINE_enum("dataset", "coco", ["coco", "flickr30k"],
                             "experiments/configs/<dataset>.py")
_CONFIGS = flags.DEFINE_list("configs", list(common.BACKBONES),
                             f"Backbone arguments, of {list(common.BACKBONES)}.")
_PLATFORMS = flags.DEFINE_list("platforms", list(PLATFORMS), "tpu and/or cuda.")
_PROGRAMS = flags.DEFINE_list("programs", list(PROGRAMS), f"Of {list(PROGRAMS)}.")
_SMOKE = flags.DEFINE_bool("smoke", False, "The configs' smoke size (tiny encoders).")
_BATCH = flags.DEFINE_integer("batch", 128, "train.batch_size (global).")
_DTYPE = flags.DEFINE_enum("dtype", "bfloat16", ["bfloat16", "float32"],
                           "model.compute_dtype.")
_SCORE_DTYPE = flags.DEFINE_enum("score_dtype", "bfloat16", ["bfloat16", "float32"],
                                 "eval.score_dtype of the score programs.")
_GRAD_CACHE = flags.DEFINE_integer("grad_cache_chunks", 1, "train.grad_cache_chunks of "
                                   "the train step (1: none).")
_DEVICES = flags.DEFINE_integer("devices", 8, "Mesh size of the lowered programs "
                                "(fake CPU devices standing for the chips).")
_TPU_COMPILE = flags.DEFINE_string("tpu_compile", "", "A TPU topology, e.g. v5e:2x2: "
                                   "also compile the tpu rows for its chips (libtpu).")
_CUDA_COMPILE = flags.DEFINE_string(
    "cuda_compile", "", "NVIDIA GPUs described, not present, e.g. h100:8 (h100, h200, "
    "a100): also compile the cuda rows for them (gpu_targets.py; the CUDA plugin in "
    "--cuda_plugin).")
_CUDA_PLUGIN = flags.DEFINE_string(
    "cuda_plugin", os.environ.get("GRALIGN_CUDA_PLUGIN", ".cuda-plugin"),
    "The folder the CUDA plugin is installed in (python -m gralign_jax.gpu_targets "
    "--install DIR); $GRALIGN_CUDA_PLUGIN.")
_OUT = flags.DEFINE_string("out", None, "Writes OUT.json and OUT.md; '' writes "
                           "nothing. Default: benchmarks/export_check[_tpu_<chip>] for "
                           "the whole grid at default sizes, else runs/benchmarks/.")
# The flags whose default values make the full grid, the committed record.
_GRID_FLAGS = (_DATASET, _CONFIGS, _PLATFORMS, _PROGRAMS, _SMOKE, _BATCH, _DTYPE,
               _SCORE_DTYPE, _DEVICES, _GRAD_CACHE)


def out_prefix() -> str:
  """Where this run's table goes ('' for nowhere): see the module docstring."""
  if _OUT.value == "":  # pylint: disable=g-explicit-bool-comparison
    return ""
  full = {f.name: flags.FLAGS[f.name].default for f in _GRID_FLAGS}
  name = "export_check"
  if _TPU_COMPILE.value:  # its record holds the tpu rows, compiled for the chip
    full["platforms"] = ["tpu"]
    name += "_tpu_" + _TPU_COMPILE.value.split(":")[0]
  elif _CUDA_COMPILE.value:  # the cuda rows, compiled for the card
    full["platforms"] = ["cuda"]
    name += "_cuda_" + _CUDA_COMPILE.value.split(":")[0]
  departures = [f.serialize() for f in _GRID_FLAGS if f.value != full[f.name]]
  return records.out_prefix(name, _OUT.value, departures)


def main(argv):
  del argv
  bad = ([c for c in _CONFIGS.value if c not in common.BACKBONES] +
         [p for p in _PLATFORMS.value if p not in PLATFORMS] +
         [p for p in _PROGRAMS.value if p not in PROGRAMS])
  if bad:
    sys.exit(f"Unknown --configs/--platforms/--programs value(s) {bad}; expected "
             f"{list(common.BACKBONES)}, {list(PLATFORMS)}, {list(PROGRAMS)}.")
  if _CUDA_COMPILE.value:
    if _TPU_COMPILE.value:
      sys.exit("--tpu_compile and --cuda_compile: one at a time (each has its record).")
    try:
      gpu_targets.parse(_CUDA_COMPILE.value)
      gpu_targets.use_plugin(_CUDA_PLUGIN.value)  # before any backend starts
    except (ValueError, gpu_targets.PluginError) as e:
      sys.exit(f"Error: {e}")
  command = " ".join(["python -m experiments.export_check"] + sys.argv[1:])
  print(command)
  out = out_prefix()
  print(f"jax {jax.__version__}, {os.cpu_count()} CPU cores, {len(jax.devices())} "
        f"{jax.default_backend()} devices", flush=True)
  t0 = time.perf_counter()
  rows = check(_DATASET.value, _CONFIGS.value, _PLATFORMS.value, _PROGRAMS.value,
               smoke=_SMOKE.value, batch=_BATCH.value, dtype=_DTYPE.value,
               score_dtype=_SCORE_DTYPE.value, n_devices=_DEVICES.value,
               tpu_compile=_TPU_COMPILE.value, cuda_compile=_CUDA_COMPILE.value,
               grad_cache_chunks=_GRAD_CACHE.value, report=print_row)
  total = time.perf_counter() - t0
  failed = [r for r in rows if not r["ok"]]
  summary = (f"{len(rows) - len(failed)} of {len(rows)} OK, {len(failed)} failed, "
             f"{total:.0f} s in all")
  print(summary)
  if out:
    header = [f"`{command}`", "",
              f"jax {jax.__version__}, {os.cpu_count()} CPU cores, "
              f"{time.strftime('%Y-%m-%d')}; {summary}. Mesh: {_DEVICES.value} devices "
              f"(lower), {_TPU_COMPILE.value or 'no'} TPU topology, "
              f"{_CUDA_COMPILE.value or 'no'} NVIDIA GPUs (compile"
              f"{', Triton GEMMs off' if _CUDA_COMPILE.value else ''})."]
    if _CUDA_COMPILE.value:
      card = gpu_targets.parse(_CUDA_COMPILE.value)[0]
      header.append(f"Memory budget: {gpu_targets.memory_budget(card) / 2 ** 30:.2f} GiB "
                    f"per device ({gpu_targets.BUDGET_SHARE:.0%} of the card, "
                    "gpu_targets.BUDGET_SHARE); a compiled row over it fails.")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    with open(out + ".json", "w") as f:
      json.dump({"command": command, "jax": jax.__version__, "seconds": total,
                 "rows": rows}, f, indent=1)
    with open(out + ".md", "w") as f:
      f.write(markdown(rows, header))
  sys.exit(1 if failed else 0)


if __name__ == "__main__":
  app.run(main)
