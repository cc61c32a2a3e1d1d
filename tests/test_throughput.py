"""Throughput and MFU (issue 23): the FLOP count, the peak table, the meter."""
import types

import jax
import jax.numpy as jnp
import pytest

from gralign_jax import logs
from gralign_jax import throughput


def test_the_flops_of_a_matmul_only_step_are_its_hand_count():
  """One gradient step of 0.5 ||x W||^2, W - lr * x^T (2 * 0.5 * x W), as jax.grad
  writes it. By hand: the matmuls x W (2BDK) and x^T (.) (2DBK); the backward's two
  scalings of x W (BK each); the lr scaling and the subtraction (DK each)."""
  b, d, k = 32, 64, 16

  def step(w, x):
    return w - 0.1 * jax.grad(lambda w: 0.5 * jnp.sum(jnp.square(x @ w)))(w)

  lowered = jax.jit(step).lower(jnp.ones((d, k)), jnp.ones((b, d)))
  assert throughput.step_flops(lowered) == 4 * b * d * k + 2 * b * k + 2 * d * k

  plain = jax.jit(lambda a, c: (a @ c) @ c.T).lower(jnp.ones((b, d)), jnp.ones((d, k)))
  assert throughput.step_flops(plain) == 2 * b * d * k + 2 * b * k * d


def _device(kind, platform="gpu"):
  return types.SimpleNamespace(device_kind=kind, platform=platform)


@pytest.mark.parametrize("kind, bf16, f32", [
    ("NVIDIA H100 80GB HBM3", 989.4e12, 494.7e12),
    ("NVIDIA H100 PCIe", 756e12, 378e12),
    ("NVIDIA H200", 989.4e12, 494.7e12),
    ("NVIDIA A100-SXM4-80GB", 312e12, 156e12),
    ("TPU v4", 275e12, 275e12),
    ("TPU v5 lite", 197e12, 197e12),
    ("TPU v5p", 459e12, 459e12),
    ("TPU v6 lite", 918e12, 918e12),
])
def test_peaks_per_device_kind(kind, bf16, f32):
  platform = "tpu" if kind.startswith("TPU") else "gpu"
  assert throughput.peak_flops(_device(kind, platform), "bfloat16")[0] == bf16
  assert throughput.peak_flops(_device(kind, platform), "float32")[0] == f32


def test_an_unknown_device_has_no_peak_and_says_so():
  peak, source = throughput.peak_flops(_device("NVIDIA GeForce RTX 4090"), "bfloat16")
  assert peak is None and "'NVIDIA GeForce RTX 4090' has no peak" in source


def test_the_cpu_peak_is_measured_and_shared_by_its_devices():
  total = throughput.measured_cpu_flops("float32")
  per_device, source = throughput.peak_flops(jax.devices("cpu")[0], "float32")
  n = len(jax.local_devices(backend="cpu"))
  assert per_device == pytest.approx(total / n) and total > 1e8
  assert f"shared by {n} device(s)" in source


def test_mfu_is_achieved_flops_over_the_peak_of_every_device(monkeypatch):
  clock = iter([100.0, 101.0, 104.0, 110.0, 110.0])  # start, pause, resume, read, restart
  monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
  meter = throughput.Meter(batch_size=128, flops=6e12, peak_per_device=1e12, devices=4)
  assert meter.read(1) == {}  # not started
  meter.start(10)
  with meter.paused():  # 3 s of evaluation
    pass
  got = meter.read(13)  # 10 s, of which 7 s training, over 3 steps
  assert got["step_time"] == pytest.approx(7 / 3)
  assert got["examples_per_s"] == pytest.approx(128 * 3 / 7)
  assert got["tflops"] == pytest.approx(6 / (7 / 3))
  assert got["mfu"] == pytest.approx(6e12 / (7 / 3) / 4e12)
  line = logs.throughput_text(got)
  assert line == "  2.33 s/step  54.9 ex/s  2.57 TFLOP/s  MFU 64.3%"


def test_without_a_peak_or_flops_the_meter_gives_what_it_can(monkeypatch):
  clock = iter([0.0, 2.0, 2.0])
  monkeypatch.setattr(throughput.time, "perf_counter", lambda: next(clock))
  meter = throughput.Meter(batch_size=8, flops=None, peak_per_device=None, devices=1)
  meter.start(0)
  assert set(meter.read(4)) == {"step_time", "examples_per_s"}
