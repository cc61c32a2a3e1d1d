"""The programs lower for TPU and GPU from this CPU (jax.export), and the check can fail.

The cheap part of experiments/export_check.py: a smoke-size config of each backbone
family (ViT + BERT, Swin + BERT, BUTD + BiGRU) lowered for tpu and cuda, the scoring
kernels at the paper's token shapes, and the cases that must be refused (a kernel for
the wrong hardware, a module without the kernel). With libtpu installed the TPU kernel
is also compiled for a v5e chip, and an over-large tiling must run out of VMEM.
"""
import functools
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from experiments import export_check
from gralign_jax.scores import block_scores
from gralign_jax.scores import pallas_kernels as ps

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("backbone", ["vit224", "swin224", "butd_bigru"])
def test_smoke_configs_lower_for_tpu_and_cuda(backbone):
  rows = export_check.check("coco", [backbone], ["tpu", "cuda"], export_check.PROGRAMS,
                            smoke=True, batch=16, n_devices=8)
  assert len(rows) == 2 * len(export_check.PROGRAMS)
  failed = [(r["program"], r["platform"], r["reason"]) for r in rows if not r["ok"]]
  assert not failed
  for r in rows:
    assert r["stablehlo_kib"] > 0 and r["devices"] == 8  # sharded over the whole mesh


def _paper_kernel_args(params, d=256, lv=197, regions=5, lt=90, n=64, m=512):
  """Prepared blocks at ViT-B/16-224 + BERT shapes (197 tokens + K = 5 regions, 90
  caption tokens, d = 256), padded as block_scores.kernel_layout asks, bf16 tokens."""
  layout = block_scores.kernel_layout(params)
  up = lambda x, k: -(-x // k) * k
  lc = up(lv + regions, layout.col_multiple)
  lt = 1 << (lt - 1).bit_length() if layout.pow2_text else up(lt, layout.text_multiple)
  d = up(d, layout.d_multiple)
  s = jax.ShapeDtypeStruct
  img = {"tokens": s((n, lc, d), jnp.bfloat16), "col": s((n, 2, lc), jnp.float32)}
  txt = {"tokens": s((m, lt, d), jnp.bfloat16), "row": s((m, 3, lt), jnp.float32)}
  return img, txt


def _kernel_fn(params):
  return jax.jit(functools.partial(block_scores.pallas_scores, slope=0.1, params=params,
                                   interpret=False))


@pytest.mark.parametrize("platform,params", [("cuda", ps.KernelParams()),
                                             ("tpu", ps.TpuKernelParams())])
def test_scoring_kernel_lowers_for_its_platform(platform, params):
  row = export_check.lower(_kernel_fn(params), _paper_kernel_args(params), platform,
                           kernel=export_check.KERNEL_CALL[platform])
  assert row["ok"], row["reason"]


def test_triton_kernel_is_refused_by_the_tpu_lowering(monkeypatch):
  params = ps.KernelParams()
  with pytest.raises(ValueError, match="cannot be used for tpu"):
    export_check.lower(_kernel_fn(params), _paper_kernel_args(params), "tpu")
  # The known-bad block shape: without Triton's params Mosaic takes the kernel and
  # refuses its (2, L_c) column block (the reason TPU has a kernel of its own).
  monkeypatch.setattr(ps, "_compiler_params", lambda p: None)
  with pytest.raises(ValueError, match="divisible by 8 and 128"):
    export_check.lower(_kernel_fn(params), _paper_kernel_args(params), "tpu")


def test_tpu_kernel_is_refused_by_the_cuda_lowering():
  params = ps.TpuKernelParams()
  with pytest.raises(ValueError, match="cannot be used for gpu"):
    export_check.lower(_kernel_fn(params), _paper_kernel_args(params), "cuda")


@pytest.mark.skipif(not getattr(jax.config, "jax_pallas_use_mosaic_gpu", False),
                    reason="this jax lowers Pallas to Triton by default")
def test_without_triton_params_pallas_takes_mosaic_gpu(monkeypatch):
  """Why pallas_kernels always passes Triton's CompilerParams: without them this jax
  lowers to Mosaic GPU, which the kernel does not fit at the paper's shapes."""
  params = ps.KernelParams()
  monkeypatch.setattr(ps, "_compiler_params", lambda p: None)
  with pytest.raises(ValueError, match="Mosaic GPU"):
    export_check.lower(_kernel_fn(params), _paper_kernel_args(params), "cuda")


def test_a_module_without_the_kernel_fails_the_row():
  """The grid's score_pallas rows must contain the kernel: an XLA program does not."""
  params = ps.TpuKernelParams()
  xla = jax.jit(functools.partial(block_scores.xla_scores, slope=0.1))
  row = export_check.lower(xla, _paper_kernel_args(params, n=4, m=4), "tpu",
                           kernel=export_check.KERNEL_CALL["tpu"])
  assert not row["ok"] and "tpu_custom_call" in row["reason"]


def test_the_grid_reports_a_wrong_kernel_choice(monkeypatch):
  """A regression that hands the TPU the Triton kernel shows as a FAIL row with the
  lowering's reason, and every other row still runs."""
  monkeypatch.setattr(ps, "default_params", lambda platform: ps.KernelParams())
  rows = export_check.check("coco", ["butd_bigru"], ["tpu"],
                            ["score_xla", "score_pallas"], smoke=True, batch=16)
  by_program = {r["program"]: r for r in rows}
  assert by_program["score_xla"]["ok"]
  assert not by_program["score_pallas"]["ok"]
  assert "cannot be used for tpu" in by_program["score_pallas"]["reason"]


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None,
                    reason="libtpu not installed (pip install 'jax[tpu]')")
def test_tpu_kernel_compiles_for_a_v5e_chip_and_vmem_overflow_is_caught():
  mesh = export_check.tpu_topology_mesh("v5e:2x2", n_devices=1)
  rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  place = lambda tree: jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, jnp.float32, sharding=rep), tree)
  good = ps.TpuKernelParams()
  row = export_check.compile_for(_kernel_fn(good),
                                 place(_paper_kernel_args(good, n=128)))
  assert row["ok"] and row["memory_gib"] > 0
  # 64 images of 256 x 256 float32 columns per program: a 16 MiB block, double-buffered
  # across the two image tiles, over v5e's 16 MiB of scoped VMEM. Only Mosaic's own
  # compiler can say so; lowering passes.
  big = ps.TpuKernelParams(tile_images=64)
  args = place(_paper_kernel_args(big, n=128))
  assert export_check.lower(_kernel_fn(big), args, "tpu")["ok"]
  with pytest.raises(Exception, match="VmemOom|vmem"):
    export_check.compile_for(_kernel_fn(big), args)


def test_a_compiled_program_over_its_memory_budget_fails_the_row():
  """The budget check on any compile target (here the CPU): a 512 x 256 float32
  argument is 0.5 MiB, so a 0.25 MiB budget fails the row and a 1 MiB one passes."""
  fn = jax.jit(lambda x: (x @ x.T).sum())
  arg = jax.ShapeDtypeStruct((512, 256), jnp.float32)
  over = export_check.compile_for(fn, (arg,), budget=(2 ** 18, "a test's"))
  assert not over["ok"] and over["memory_gib"] * 2 ** 30 >= 2 ** 19
  assert over["reason"].startswith("needs ") and over["reason"].endswith(
      " GiB per device, over the budget of 0.00 GiB (a test's)")
  assert export_check.compile_for(fn, (arg,), budget=(2 ** 20, "a test's"))["ok"]


CUDA_PLUGIN = os.environ.get("GRALIGN_CUDA_PLUGIN", os.path.join(REPO, ".cuda-plugin"))


@pytest.mark.skipif(not os.path.isdir(CUDA_PLUGIN) and not os.environ.get("GRALIGN_CI"),
                    reason="no CUDA plugin folder (gpu_targets.py says how; CI has one)")
def test_the_smoke_config_compiles_for_eight_h100s_without_a_gpu(tmp_path):
  """Issue 23: XLA:GPU's whole pipeline for compile-only H100s (the CUDA plugin's
  topology API), the Pallas kernel through Triton included; memory per device read."""
  out = tmp_path / "cuda"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.export_check", "--smoke", "--configs=vit224",
       "--platforms=cuda", "--programs=train_step,score_pallas", "--cuda_compile=h100:8",
       f"--cuda_plugin={CUDA_PLUGIN}", f"--out={out}"],
      cwd=REPO, capture_output=True, text=True, timeout=900)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  rows = {(r["program"], r["stage"]): r for r in json.loads(
      (tmp_path / "cuda.json").read_text())["rows"]}
  for program in ("train_step", "score_pallas"):
    row = rows[(program, "compile h100:8")]
    assert row["ok"] and row["memory_gib"] > 0, row
  assert "NVIDIA GPUs (compile, Triton GEMMs off)" in (tmp_path / "cuda.md").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir(CUDA_PLUGIN) and not os.environ.get("GRALIGN_CI"),
                    reason="no CUDA plugin folder (gpu_targets.py says how; CI has one)")
def test_a_default_runs_programs_fit_the_memory_budget_on_eight_h100s(tmp_path):
  """Issue 23: every program a default run of a paper configuration compiles (ViT-B/16
  + BERT-base at batch 128, bf16: the train step, both encoders, both score programs at
  COCO's 5K test split) within gpu_targets' budget per compile-only H100 (a row over
  it fails, test_a_compiled_program_over_its_memory_budget_fails_the_row)."""
  from gralign_jax import gpu_targets  # pylint: disable=g-import-not-at-top
  out = tmp_path / "cuda"
  proc = subprocess.run(
      [sys.executable, "-m", "experiments.export_check", "--configs=vit224",
       "--platforms=cuda", "--cuda_compile=h100:8", f"--cuda_plugin={CUDA_PLUGIN}",
       f"--out={out}"], cwd=REPO, capture_output=True, text=True, timeout=1800)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  budget = gpu_targets.memory_budget("h100") / 2 ** 30
  compiled = [r for r in json.loads((tmp_path / "cuda.json").read_text())["rows"]
              if r["stage"] == "compile h100:8"]
  assert sorted(r["program"] for r in compiled) == sorted(export_check.PROGRAMS)
  for r in compiled:
    assert r["ok"] and 0 < r["memory_gib"] <= budget, r
  assert f"Memory budget: {budget:.2f} GiB per device" in (tmp_path / "cuda.md").read_text()


def test_cuda_compile_refuses_a_bad_card_or_a_missing_plugin(tmp_path):
  for flag, says in (("--cuda_compile=h900:8", "expected CARD:N with CARD one of h100"),
                     ("--cuda_compile=h100:8", "no CUDA plugin in " + str(tmp_path))):
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.export_check", "--smoke", flag,
         f"--cuda_plugin={tmp_path}", "--out="], cwd=REPO, capture_output=True,
        text=True, timeout=300)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("Error: "), proc.stderr[-500:]
    assert says in proc.stderr
