#!/usr/bin/env bash
# The GPU checks as one prepared script for one lease on one H100/H200 (about 9.5 minutes):
#   1. CIFAR-10-LT at the full protocol (200 epochs): the first 8 rows of the issue-16 ablation
#      (LDAM-DRW and CE at IF 100), 8 runs at once on the one GPU (CUDA MPS when it starts, so their
#      small kernels overlap), stopped at a deadline.  Sized from bench/measured/gpu_h200_*.md:
#      8 runs at once take ~450 s on an H200; all 12 rows or the 14-run grid do not fit one lease.
#   2. with THROUGHPUT=1: training throughput of the four thesis backbones at 224 px in bf16, ours
#      vs a bare loop (~60 s; measured already, see bench/measured/).
# Needs PyTorch (the project's .venv, or the machine's python3 with PYTHONPATH=lib), CIFAR-10 under
# LT_DATA_ROOT (default: .devdata, where a copy of cifar10-jpg.tar.gz travels to a lent machine);
# writes its tables to $OUT (default bench/results).  Usage: bash bench/gpu.sh [deadline seconds]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
DEADLINE=${1:-500}
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
export LT_DATA_ROOT=${LT_DATA_ROOT:-$PWD/.devdata} LT_CACHE_DIR=${LT_CACHE_DIR:-/tmp/longtail-cache}
start=$(date +%s)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee "$OUT/gpu.txt"
"$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$OUT/gpu.txt"
mps=off
if command -v nvidia-cuda-mps-control >/dev/null && nvidia-cuda-mps-control -d 2>/dev/null; then
  if timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then mps=on
  else echo quit | nvidia-cuda-mps-control; fi
fi
echo "CUDA MPS: $mps" | tee -a "$OUT/gpu.txt"
timeout $((DEADLINE + 40)) "$PY" bench/cifar10_lt.py --runs ablation --max-runs 8 --parallel 8 --deadline "$DEADLINE" \
  --output-root /tmp/longtail-runs/cifar10_lt --results "$OUT/cifar10_lt_gpu.md" 2>&1 | tee "$OUT/cifar10_lt_gpu.log" | grep -v "^\s*$" | tail -60
[ "$mps" = on ] && echo quit | nvidia-cuda-mps-control
# every finished run's parameters and metrics, whatever happened to the tables above
"$PY" - "$OUT/cifar10_lt_runs.jsonl" <<'PY'
import json, sys
from pathlib import Path
from longtail import rundir
with open(sys.argv[1], "w") as out:
    for m in sorted(Path("/tmp/longtail-runs/cifar10_lt").glob(f"*/{rundir.RESULT_FILE}")):
        out.write(json.dumps({"params": json.loads((m.parent / rundir.PARAMS_FILE).read_text()),
                              "metrics": json.loads(m.read_text())}) + "\n")
PY
left=$((start + DEADLINE + 70 - $(date +%s)))
if [ "${THROUGHPUT:-0}" = 1 ] && [ "$left" -gt 40 ]; then
  timeout "$left" "$PY" bench/throughput.py --gpu --repeats 2 2>&1 | tee "$OUT/throughput_gpu.md"
else
  echo "throughput check skipped (THROUGHPUT=${THROUGHPUT:-0}, $left s left)"
fi
echo "gpu.sh: $(( $(date +%s) - start )) s"
