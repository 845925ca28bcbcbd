#!/usr/bin/env bash
# The GPU checks of issue 7 as one script sized for a 10-minute lease on one H100/H200:
#   1. training throughput of the four thesis backbones at 224 px in bf16, ours vs a bare loop;
#   2. CIFAR-10-LT, LDAM-DRW protocol, IF 100: CE and LDAM-DRW for the full 200 epochs, one process.
# Needs the project's .venv (or the same packages), CIFAR-10 under LT_DATA_ROOT, and writes $OUT (or bench/results).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
PY=${PY:-.venv/bin/python}
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
timeout 180 "$PY" bench/throughput.py --gpu --repeats 2 2>&1 | tee "$OUT/throughput_gpu.md"
timeout 360 "$PY" bench/cifar10_lt.py --losses ce,ldam --imbalance 100 --output-root "$OUT/cifar10_lt" 2>&1 | tee "$OUT/cifar10_lt_gpu.md"
