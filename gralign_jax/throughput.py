"""How fast training runs: step time, examples/s, achieved FLOP/s and MFU.

The model FLOPs of one train step are counted once, by XLA's cost analysis of the
lowered (unoptimised) program: in the optimised one, Pallas kernels and cuBLAS calls
count as unknown. That is the whole step over the global batch: forward, backward and
the optimiser update (the second forward pass of gradient caching included, as it is
work the step does).

MFU = achieved FLOP/s / (peak FLOP/s per device x devices), with the peak for the run's
compute dtype from PEAK_FLOPS (dense, no sparsity; data sheets), matched on the
device's `device_kind`. A CPU has no data sheet: its peak is measured once per process
with a float32 / bfloat16 matmul on all its cores and shared among its local devices.
"""
import contextlib
import functools
import time

import jax
import jax.numpy as jnp

# device_kind (lower case) contains KEY -> (bf16, f32) peak FLOP/s per device. First
# match wins. GPU f32 is TF32 on tensor cores (jax's default precision for f32 matmuls
# there); TPU f32 at jax's default precision runs one bf16 pass on the MXU, so it has
# the bf16 peak.
PEAK_FLOPS = (
    ("h100 pcie", (756e12, 378e12)),   # NVIDIA H100 PCIe
    ("h100", (989.4e12, 494.7e12)),    # NVIDIA H100 SXM5 (80GB HBM3)
    ("h200", (989.4e12, 494.7e12)),    # NVIDIA H200 (H100's compute, more memory)
    ("a100", (312e12, 156e12)),        # NVIDIA A100 (SXM and PCIe)
    ("v6 lite", (918e12, 918e12)),     # TPU v6e (Trillium)
    ("v6e", (918e12, 918e12)),
    ("v5 lite", (197e12, 197e12)),     # TPU v5e
    ("v5e", (197e12, 197e12)),
    ("v5p", (459e12, 459e12)),         # TPU v5p
    ("tpu v5", (459e12, 459e12)),
    ("tpu v4", (275e12, 275e12)),      # TPU v4
)


def step_flops(lowered) -> float | None:
  """The FLOPs of a lowered program (jax.stages.Lowered), None where XLA gives none."""
  try:
    cost = lowered.cost_analysis()
  except Exception:  # pylint: disable=broad-except  (a backend without cost analysis)
    return None
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0] if cost else None
  flops = (cost or {}).get("flops")
  return float(flops) if flops and flops > 0 else None


@functools.lru_cache(maxsize=None)
def measured_cpu_flops(dtype: str = "float32", n: int = 1024, repeats: int = 5) -> float:
  """FLOP/s of an n x n matmul in `dtype` on the first CPU device (all cores), the best
  of `repeats`."""
  device = jax.local_devices(backend="cpu")[0]
  a = jax.device_put(jnp.ones((n, n), dtype), device)
  matmul = jax.jit(jnp.matmul)
  matmul(a, a).block_until_ready()
  best = float("inf")
  for _ in range(repeats):
    t = time.perf_counter()
    matmul(a, a).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return 2 * n ** 3 / best


def peak_flops(device, dtype: str) -> tuple[float | None, str]:
  """-> (peak FLOP/s of one `device` in `dtype` ("bfloat16" or "float32"), where it
  comes from). None for a device kind not in PEAK_FLOPS."""
  kind = device.device_kind.lower()
  if device.platform == "cpu":
    shared_by = len(jax.local_devices(backend="cpu"))  # the host's cores, every device
    return (measured_cpu_flops(dtype) / shared_by,
            f"measured on this CPU ({dtype} matmul, shared by {shared_by} device(s))")
  for key, (bf16, f32) in PEAK_FLOPS:
    if key in kind:
      return (bf16 if dtype == "bfloat16" else f32), f"{device.device_kind} data sheet"
  return None, f"{device.device_kind!r} has no peak in throughput.PEAK_FLOPS"


class Meter:
  """Training throughput between two reads, with evaluation and checkpoint time left
  out (`paused`). The clock starts once the first step has finished (compilation is
  not training)."""

  def __init__(self, batch_size: int, flops: float | None, peak_per_device: float | None,
               devices: int):
    self.batch_size, self.flops = batch_size, flops
    self.peak = peak_per_device * devices if peak_per_device else None  # the whole job's
    self._since = self._step = None
    self._paused = 0.0

  def start(self, step: int) -> None:
    self._since, self._step, self._paused = time.perf_counter(), step, 0.0

  @contextlib.contextmanager
  def paused(self):
    t = time.perf_counter()
    try:
      yield
    finally:
      self._paused += time.perf_counter() - t

  def read(self, step: int) -> dict:
    """{step_time (s), examples_per_s, tflops (whole job), mfu} over the steps since
    the last read (or start); {} when there were none. Starts the next interval."""
    if self._since is None or step <= self._step:
      return {}
    seconds = time.perf_counter() - self._since - self._paused
    step_time = max(seconds, 1e-9) / (step - self._step)
    self.start(step)
    out = {"step_time": step_time, "examples_per_s": self.batch_size / step_time}
    if self.flops:
      out["tflops"] = self.flops / step_time / 1e12
      if self.peak:
        out["mfu"] = self.flops / step_time / self.peak
    return out
