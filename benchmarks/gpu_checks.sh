#!/usr/bin/env bash
# Every GPU check of issue 5 in one device call (about 8 minutes on an H100):
#   1. the Pallas scoring kernel compiled for the card against XLA and the definition;
#   2. COCO 5K scoring (5,000 x 25,000, 197 x 32 tokens + 5 regions, d = 512): the
#      engine (pallas, bf16) and the xla path against the FLOP floor, and the PyTorch
#      f32 reference on the same card;
#   3. a sweep of kernel tilings at the same shape (one rep each);
#   4. the training step of ViT-B/16-224 + BERT-base, batch 128, bf16, with and without
#      remat: parameters, step time, peak memory, MFU (issue 3 and issue 5).
# The lent device's image lacks ml_collections and grain (and has Python 3.12, jax 0.11):
# download their wheels here into .whl/ (ignored via .git/info/exclude) with
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --implementation cp --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#     -d .whl ml-collections grain array-record <and what `unzip -p` of their METADATA
#     lists as missing there>
# and name .whl in the run's carry: they are installed below into /tmp/site.
# Usage: bash benchmarks/gpu_checks.sh   (JSON figures land in $OUT when it is set).
# Each step has its own timeout, so a hung compile costs one step, not the call.
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-/tmp/gralign_gpu_checks}"
mkdir -p "$OUT"
PY="${PYTHON:-python}"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH="/tmp/site:$PWD:${PYTHONPATH:-}"
fi
if ! "$PY" -c "import gralign_jax" 2>/dev/null; then
  "$PY" -m pip install -q -e . >/dev/null 2>&1 || export PYTHONPATH="$PWD:${PYTHONPATH:-}"
fi
date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
"$PY" -c "import sys, jax, jaxlib; print(sys.version.split()[0], 'jax', jax.__version__, \
'jaxlib', jaxlib.__version__, jax.devices())"

echo "== 1. kernel check (compiled) =="
timeout 200 "$PY" benchmarks/scoring_kernel_check.py 2>&1 | tee "$OUT/1_kernel_check.log"

echo "== 2. COCO 5K: pallas bf16, xla bf16, PyTorch f32 =="
timeout 330 "$PY" benchmarks/scoring.py --shape coco5k --dtype bfloat16 --backend pallas \
  --also-xla --torch --check 0 --reps 2 2>&1 | tee "$OUT/2_coco5k.log"
mv -f "$OUT/scoring_coco5k.json" "$OUT/2_coco5k.json" 2>/dev/null

echo "== 3. COCO 5K: kernel tilings =="
timeout 240 "$PY" benchmarks/scoring.py --shape coco5k --dtype bfloat16 --backend pallas \
  --check 0 --reps 1 \
  --kernel tile_texts=4,num_warps=4,num_stages=2 \
  --kernel tile_texts=4,num_warps=8,num_stages=3 \
  --kernel tile_texts=4,reshape_reduce=1 \
  --kernel tile_texts=8,num_warps=8,num_stages=2 \
  --kernel tile_texts=2,tile_images=4,num_warps=4 \
  --kernel tile_texts=4,max_chunk=64,num_warps=4 2>&1 | tee "$OUT/3_tilings.log"
mv -f "$OUT/scoring_coco5k.json" "$OUT/3_tilings.json" 2>/dev/null
echo "== 4. training step, ViT-B/16-224 + BERT-base, batch 128, bf16 =="
timeout 200 "$PY" benchmarks/train_step.py --batch 128 --dtype bfloat16 --repeats 10 \
  2>&1 | tee "$OUT/4_train_step.log"
echo "== done =="; date -u
