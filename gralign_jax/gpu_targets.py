"""NVIDIA GPUs described, not present: compile for an H100 (H200, A100) on a CPU host.

jax compiles for CUDA without a GPU through the CUDA PJRT plugin's topology API:
`jax.experimental.topologies.get_topology_desc(platform="cuda", target_config=TEXT,
topology="1x1xN")` gives N compile-only devices of the card TEXT describes (a
stream_executor.GpuTargetConfigProto in text form), and `.lower(...).compile()` for
them runs XLA:GPU's whole pipeline; `memory_analysis()` then says what fits.

The plugin (`jax-cuda12-plugin` and `jax-cuda12-pjrt`, at jax's own version; no nvidia-*
wheels are needed) is installed apart, in a folder of its own:

  python -m gralign_jax.gpu_targets --install [.cuda-plugin]
  (= pip install --no-deps --target .cuda-plugin jax-cuda12-plugin==V jax-cuda12-pjrt==V)

because installed beside jax it would have every JAX process on a CPU-only host try to
load CUDA and print a traceback. use_plugin(folder) puts it on sys.path; it must run
before anything starts a JAX backend (the plugins are found then).

The card descriptions below are the data sheet values XLA:GPU's cost model and
emitters read (OpenXLA keeps the same facts in xla/backends/gpu/target_config/specs).
Without a device XLA cannot autotune, and its default Triton GEMM tiling fails on some
shapes (`Couldn't find output tile sizes ... bf16[272,32]`, the ViT attention output
projection): COMPILER_OPTIONS turns Triton GEMMs off, so matmuls go to cuBLAS as they
would after autotuning found nothing better.
"""
import os
import subprocess
import sys

# The XLA:GPU options every compile-only program is compiled with (see above).
COMPILER_OPTIONS = {"xla_gpu_enable_triton_gemm": False}

# card -> its facts: (description, compute capability, SMs, FP32 lanes per SM, clock GHz,
# memory bytes, memory bandwidth B/s, L2 bytes, shared memory per SM, per block opt-in)
CARDS = {
    "h100": ("NVIDIA H100 80GB HBM3", 9, 132, 128, 1.98, 84942979072, 3352320000000,
             52428800, 233472, 232448),
    "h200": ("NVIDIA H200 141GB HBM3e", 9, 132, 128, 1.98, 151397597184, 4800000000000,
             52428800, 233472, 232448),
    "a100": ("NVIDIA A100-SXM4-80GB", 8, 108, 64, 1.41, 85100068864, 2039040000000,
             41943040, 167936, 166912),
}


# A default run's memory budget on an NVIDIA card: every program it compiles (the train
# step, the evaluator's two encoders, its score program) needs at most this share of one
# card's memory. JAX's allocator takes 75% of the card at start-up
# (XLA_PYTHON_CLIENT_MEM_FRACTION); the quarter between the budget and that is for what
# one program's compiled figure does not count: the training state that stays on the
# device while the evaluator runs, the encoded gallery, cuBLAS and cuDNN workspaces
# chosen by autotuning, and the allocator's fragmentation. experiments.export_check
# fails a compiled row over it.
BUDGET_SHARE = 0.5


def memory_budget(card: str) -> int:
  """The memory budget of one `card` (a key of CARDS) in bytes: see BUDGET_SHARE."""
  return int(CARDS[card][5] * BUDGET_SHARE)


def target_config(card: str) -> str:
  """The GpuTargetConfigProto text of `card` (a key of CARDS)."""
  (name, major, cores, fpus, clock, memory, bandwidth, l2, shared_per_core,
   shared_optin) = CARDS[card]
  return f"""gpu_device_info {{
  threads_per_block_limit: 1024
  threads_per_warp: 32
  shared_memory_per_block: 49152
  shared_memory_per_core: {shared_per_core}
  threads_per_core_limit: 2048
  core_count: {cores}
  fpus_per_core: {fpus}
  block_dim_limit_x: 2147483647
  block_dim_limit_y: 65535
  block_dim_limit_z: 65535
  memory_bandwidth: {bandwidth}
  l2_cache_size: {l2}
  clock_rate_ghz: {clock}
  device_memory_size: {memory}
  shared_memory_per_block_optin: {shared_optin}
  cuda_compute_capability {{
    major: {major}
  }}
  registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}}
platform_name: "CUDA"
dnn_version_info {{
  major: 9
}}
device_description_str: "{name}"
"""


class PluginError(RuntimeError):
  """The CUDA plugin is not where it was asked for, or has no topology API."""


def parse(spec: str) -> tuple[str, int]:
  """"h100:8" -> ("h100", 8). Raises ValueError for anything else."""
  card, _, count = spec.partition(":")
  if card not in CARDS or not count.isdigit() or int(count) < 1:
    raise ValueError(f"--cuda_compile={spec!r}: expected CARD:N with CARD one of "
                     f"{', '.join(CARDS)} and N >= 1 devices, e.g. h100:8.")
  return card, int(count)


def use_plugin(folder: str) -> None:
  """Makes the CUDA plugin installed in `folder` (pip --target) findable. Before any
  JAX backend starts."""
  if not os.path.isdir(os.path.join(folder, "jax_plugins", "xla_cuda12")):
    raise PluginError(
        f"no CUDA plugin in {folder} (expected {folder}/jax_plugins/xla_cuda12): install "
        f"it there with python -m gralign_jax.gpu_targets --install {folder}")
  if folder not in sys.path:
    sys.path.insert(0, folder)


def devices(spec: str) -> list:
  """The compile-only devices of `spec` ("h100:8"): N of the card, one host."""
  card, count = parse(spec)
  from jax.experimental import topologies  # pylint: disable=g-import-not-at-top
  try:
    topology = topologies.get_topology_desc(
        platform="cuda", target_config=target_config(card), topology=f"1x1x{count}")
  except NotImplementedError as e:
    raise PluginError("jax has no CUDA topology here: the CUDA plugin was not found when "
                      "the backends started (gpu_targets.use_plugin, before them)") from e
  return list(topology.devices)


def install(folder: str = ".cuda-plugin") -> int:
  """pip-installs the CUDA plugin at this jax's version into `folder` (see above)."""
  import jax  # pylint: disable=g-import-not-at-top
  if os.path.isdir(os.path.join(folder, "jax_plugins", "xla_cuda12")):
    print(f"the CUDA plugin is in {folder} already")
    return 0
  return subprocess.call(
      [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", folder,
       f"jax-cuda12-plugin=={jax.__version__}", f"jax-cuda12-pjrt=={jax.__version__}"])


if __name__ == "__main__":
  if len(sys.argv) not in (2, 3) or sys.argv[1] != "--install":
    sys.exit("usage: python -m gralign_jax.gpu_targets --install [FOLDER]")
  sys.exit(install(*sys.argv[2:]))
