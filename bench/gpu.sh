#!/usr/bin/env bash
# The GPU checks of the speed work for one lease of one H100/H200, in two calls on the same warm machine
# (the data, the papermill wheels and the weights together exceed one call's 64 MiB of carried files):
#
#   bash bench/gpu.sh setup          # ~3 min; carries .whl, .devdata/cifar10-jpg.tar.gz, .devdata/weights:
#                                    # papermill from the wheels, the Jupyter kernel, CIFAR-10's image cache,
#                                    # the CUDA-only tests, the CUDA-graph probe (bench/gpu_probe.py), a tiny
#                                    # grid through papermill
#   bash bench/gpu.sh run [SECONDS]  # carries .devdata/eu-moths; until SECONDS (default 540):
#     1. the thesis grid's MobileNetV2 part (iNat-insects weights, fine-tuned end to end at 224 px with
#        params/thesis.yaml's schedule, which is our choice: the thesis states none; 7 losses x 2 training
#        sets x 3 seeds) through the real papermill grid, $THESIS_JOBS (14) at once, resumed across leases:
#        the runs of earlier leases are restored from bench/archive/thesis.tar.gz first (the grid skips
#        them), and every finished run is packed into $OUT/thesis.tar.gz at the end, also when the time
#        limit stopped the grid (python -m longtail.archive); copy that file over bench/archive/thesis.tar.gz
#        and commit it, and the next lease adds its runs;
#     2. params/cifar10_lt.yaml, all 14 runs at the full 200 epochs, 14 at once (CUDA graphs when the
#        probe found them equal to eager), with the time left, against the published table;
#     3. the projected wall time of the full thesis grid (bench/gpu_projection.py).
#   Measured on one H200 (bench/measured/gpu_grids_h200_2026-11-27.md): the CIFAR grid needs ~12
#   minutes alone, more than one call; CIFAR_IMBALANCE=100 runs its IF-100 half.
#   bash bench/gpu.sh control [SECONDS]  # (after setup: CIFAR-10's image cache) the data-cost control,
#                                    # params/cifar10_control.yaml: ResNet-32 on the balanced full CIFAR-10 JPEG
#                                    # copy, He et al.'s protocol, 2 seeds at once with CUDA graphs, against
#                                    # their 92.49 %; table in $OUT/cifar10_control_gpu.md.  2 x 8.2 M images:
#                                    # ~5-6 min at the probe's 27,000 img/s a run (not measured yet; SECONDS
#                                    # default 480: setup + control fit one 15-minute lease, run is another)
#   bash bench/gpu.sh all [SECONDS]  # setup, run, control, one after the other (a machine that holds everything)
#
# Several runs share the one GPU (CUDA MPS when it starts, so their small kernels overlap).  Whatever
# input is missing skips the part that needs it, with a line saying so.  State between the calls lives
# in $LT_GPU_STATE (default /tmp/lt-gpu); tables, logs and the thesis archive go to $OUT (default
# bench/results; at most 8 files a call come back from a lent machine: a run call writes 6).
# A CPU smoke test of the whole script (tiny settings, minutes): GPU_SMOKE=1 bash bench/gpu.sh all 900
# (its thesis runs are archived under $LT_GPU_STATE, never into bench/archive/).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-bench/results}; mkdir -p "$OUT"
STATE=${LT_GPU_STATE:-/tmp/lt-gpu}; mkdir -p "$STATE"
PY=${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
SMOKE=${GPU_SMOKE:-0}
export PYTHONPATH=$PWD/lib${PYTHONPATH:+:$PYTHONPATH}${STATE:+:$STATE/site} PYTHONUNBUFFERED=1
export LT_DATA_ROOT=${LT_DATA_ROOT:-$STATE/data} LT_CACHE_DIR=${LT_CACHE_DIR:-$STATE/cache}
export LT_WEIGHTS_DIR=${LT_WEIGHTS_DIR:-$STATE/weights} JUPYTER_PATH=$STATE/kernels/share/jupyter
LOG="$OUT/gpu_${1:-usage}.log"
say() { echo "[gpu.sh $(( $(date +%s) - START )) s] $*" | tee -a "$LOG"; }
START=$(date +%s)

mps_on() {  # CUDA MPS (a daemon: it stays up between the two calls); "on" or "off" on stdout
  command -v nvidia-cuda-mps-control >/dev/null || { echo off; return; }
  echo get_server_list | nvidia-cuda-mps-control >/dev/null 2>&1 || nvidia-cuda-mps-control -d 2>/dev/null || { echo off; return; }
  if timeout 60 "$PY" -c "import torch; torch.ones(1, device='cuda').sum().item()" 2>/dev/null; then echo on
  else echo quit | nvidia-cuda-mps-control; echo off; fi
}

copy_inputs() {  # what this call carried, out of the repository (the next call may carry other paths)
  mkdir -p "$LT_DATA_ROOT" "$STATE/weights"
  for f in .devdata/eu-moths .devdata/cifar10-jpg.tar.gz; do
    [ -e "$f" ] && [ ! -e "$LT_DATA_ROOT/$(basename "$f")" ] && cp -r "$f" "$LT_DATA_ROOT/"
  done
  [ -d .devdata/weights ] && cp -n .devdata/weights/* "$STATE/weights/" 2>/dev/null
  say "data: $(ls "$LT_DATA_ROOT" | tr '\n' ' ')weights: $(ls "$LT_WEIGHTS_DIR" 2>/dev/null | tr '\n' ' ')"
}

decode() {  # decode a data set's images once, before the runs that share the cache start
  "$PY" - "$@" <<'PY' 2>&1 | tail -2 | tee -a "$LOG"
import sys, time
from longtail import data
t0 = time.perf_counter()
ds = data.load_dataset(sys.argv[1])
for split in (ds.train, ds.test):
    data.split_images(split, int(sys.argv[2]), progress=False)
print(f"{sys.argv[1]} decoded at {sys.argv[2]} px: {len(ds.train.paths)} + {len(ds.test.paths)} images, "
      f"{time.perf_counter() - t0:.0f} s")
PY
}

setup() {
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 | tee -a "$LOG"
  "$PY" -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.cuda.is_available())" | tee -a "$LOG"
  if ! "$PY" -c "import papermill, ipykernel, jupytext" 2>/dev/null && ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$STATE/site" .whl/*.whl 2>&1 | tail -3 | tee -a "$LOG"
  fi
  "$PY" -c "import papermill, ipykernel, jupytext; print('papermill', papermill.__version__)" 2>&1 | tail -1 | tee -a "$LOG"
  [ -e "$JUPYTER_PATH/kernels/longtail/kernel.json" ] ||
    "$PY" -m ipykernel install --prefix "$STATE/kernels" --name longtail --display-name longtail >/dev/null 2>&1 ||
    say "no Jupyter kernel could be registered: the papermill parts will fail"
  copy_inputs
  say "CUDA MPS: $(mps_on)"
  [ -e "$LT_DATA_ROOT/cifar10-jpg.tar.gz" ] && decode cifar10 32
  if [ "$SMOKE" != 1 ]; then
    say "the CUDA-only tests (skipped on CPUs)"
    timeout 120 "$PY" -m pytest -q -p no:cacheprovider tests/test_transforms_engine.py::test_cuda_graph_trains_like_eager \
      tests/test_losses.py::test_cuda_matches_cpu 2>&1 | tail -3 | tee -a "$LOG"
  fi
  say "probe: eager vs CUDA graphs, 1 and 14 runs at once"
  if [ "$SMOKE" = 1 ]; then probe_args="--images 512 --epochs 1 --parallel 2 --device cpu"; else probe_args=""; fi
  timeout 240 "$PY" bench/gpu_probe.py $probe_args --json "$STATE/probe.json" 2>&1 | tee -a "$LOG" | grep -v "^$"
  cp "$STATE/probe.json" "$OUT/gpu_probe.json" 2>/dev/null
  say "papermill smoke test: params/tiny.yaml, 2 runs"
  timeout 120 "$PY" -m longtail.grid params/tiny.yaml --only loss=ce --jobs 2 --output-root "$STATE/runs/tiny" 2>&1 | tail -3 | tee -a "$LOG"
  say "setup done"
}

cuda_graph_flag() {  # --cuda-graph when the probe found CUDA graphs equal to eager in every row it ran
  "$PY" - "$STATE/probe.json" <<'PY' 2>/dev/null && echo --cuda-graph
import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
ok = [r for r in rows if r["graph"] and r["cuda_graph_used"] and r.get("agrees_with_eager")]
sys.exit(0 if ok and len(ok) == sum(r["graph"] for r in rows) else 1)
PY
}

start_cifar() {  # the CIFAR-10-LT grid (14 runs at once; $CIFAR_IMBALANCE: e.g. 100 for its IF-100 half)
  local deadline=$1 graph_flag
  [ -e "$LT_DATA_ROOT/cifar10-jpg.tar.gz" ] || { say "CIFAR part skipped: no cifar10-jpg.tar.gz"; return; }
  graph_flag=$(cuda_graph_flag)
  # no per-epoch test evaluation (a fifth of the GPU time): the last epoch is our number anyway
  local args="--runs grid --parallel 14 --no-monitor ${CIFAR_IMBALANCE:+--imbalance $CIFAR_IMBALANCE}"
  [ "$SMOKE" = 1 ] && args="--runs grid --parallel 2 --epochs 1 --n-max 200 --losses ce,ldam --imbalance 100 --no-monitor"
  say "CIFAR-10-LT grid ($args), ${graph_flag:-eager (the probe did not clear CUDA graphs)}, deadline $deadline s"
  OMP_NUM_THREADS=1 timeout $(( deadline + 20 )) "$PY" bench/cifar10_lt.py $args $graph_flag --deadline "$deadline" \
    --output-root "$STATE/runs/cifar10_lt" --results "$OUT/cifar10_lt_gpu.md" 2>&1 | grep -v "^\s*$" | tee -a "$LOG" | tail -30
  "$PY" bench/gpu_summary.py jsonl "$STATE/runs/cifar10_lt" > "$OUT/cifar10_lt_runs.jsonl" 2>>"$LOG"
}

run() {
  local deadline=${1:-540} mps
  mps=$(mps_on)
  say "CUDA MPS: $mps"
  copy_inputs
  export OMP_NUM_THREADS=1  # many processes on 16 cores: one thread each (their work is on the GPU)

  # 1. the thesis grid's MobileNetV2 part (3 seeds) through the real papermill grid, the GPU to itself
  #    (measured 2026-11-27: beside the CIFAR grid, each slowed the other 2-3x)
  # --set values change the runs' ids: the grid and its archive take the same ones
  local thesis_sets=(--set pretrained=inat_insects --set save_checkpoints=false)
  local thesis_only=(--only backbone=mobilenetv2)
  local archive=${THESIS_ARCHIVE:-bench/archive/thesis.tar.gz} packed="$OUT/thesis.tar.gz"
  if [ "$SMOKE" = 1 ]; then
    thesis_sets+=(--set epochs=1 --set image_size=64 --set device=cpu)
    thesis_only+=(--only seed=0 --only loss=ce,ldam)
    archive=$STATE/archive/thesis_smoke.tar.gz packed=$STATE/archive/thesis_smoke.tar.gz
  fi
  if [ -d "$LT_DATA_ROOT/eu-moths" ] && [ -e "$LT_WEIGHTS_DIR/mobilenetv2_100.coral_inat_insects.pt" ] &&
     "$PY" -c "import papermill" 2>/dev/null; then
    local t0 restored=ok; t0=$(date +%s)
    if [ -e "$archive" ]; then  # the runs of earlier leases: the grid skips them
      mkdir -p "$(dirname "$packed")"; [ "$archive" -ef "$packed" ] || cp "$archive" "$packed"
      "$PY" -m longtail.archive restore params/thesis.yaml "$packed" "${thesis_sets[@]}" \
        --output-root "$STATE/runs/thesis" 2>&1 | tee -a "$LOG" || restored=refused
    else
      say "no $archive yet: the thesis grid starts from nothing"
    fi
    if [ "$restored" = refused ]; then  # running now would give runs that could not be packed with the archive's
      say "thesis part skipped: $archive was refused (above); fix or remove it"
    else
      decode eu_moths "$([ "$SMOKE" = 1 ] && echo 73 || echo 256)"
      say "thesis grid, MobileNetV2 part (42 runs: 7 losses x 2 training sets x 3 seeds; fewer when smoke-testing) through papermill, ${THESIS_JOBS:-14} at once"
      # the time limit stops the grid with SIGTERM (it stops its workers and kernels at once); the pack below runs anyway
      timeout -k 20 "${THESIS_TIMEOUT:-$(( deadline / 2 ))}" "$PY" -m longtail.grid params/thesis.yaml "${thesis_only[@]}" \
        "${thesis_sets[@]}" --jobs "${THESIS_JOBS:-14}" --output-root "$STATE/runs/thesis" 2>&1 | tee -a "$LOG" | tail -4
      echo $(( $(date +%s) - t0 )) > "$STATE/thesis_wall_s"
      say "thesis grid: $(cat "$STATE/thesis_wall_s") s wall, image decoding included"
      "$PY" -m longtail.archive pack params/thesis.yaml "$packed" "${thesis_sets[@]}" \
        --output-root "$STATE/runs/thesis" 2>&1 | tee -a "$LOG"
      "$PY" bench/gpu_summary.py thesis "$STATE/runs/thesis" --wall-s "$(cat "$STATE/thesis_wall_s")" \
        --jobs "${THESIS_JOBS:-14}" > "$OUT/thesis_mobilenetv2_gpu.md" 2>>"$LOG"
    fi
  else
    say "thesis part skipped: needs eu-moths (carried by this call), the iNat-insects weights in $LT_WEIGHTS_DIR, papermill"
  fi

  # 2. CIFAR-10-LT, the 14-run grid at the full 200 epochs, with the time left
  start_cifar $(( START + deadline - 30 - $(date +%s) ))
  [ "$mps" = on ] && echo quit | nvidia-cuda-mps-control

  # 3. the full thesis grid, projected from what ran
  "$PY" bench/gpu_projection.py --thesis-runs "$STATE/runs/thesis" --jobs "${THESIS_JOBS:-14}" \
    --thesis-wall-s "$(cat "$STATE/thesis_wall_s" 2>/dev/null || echo nan)" --cifar-log "$LOG" > "$OUT/gpu_projection.md" 2>>"$LOG"
  cat "$OUT/gpu_projection.md"
  say "run done"
}

control() {  # the data-cost control: balanced full CIFAR-10 (JPEG copy), He et al.'s protocol, 2 seeds
  local deadline=${1:-480} mps graph_flag args
  [ -e "$LT_DATA_ROOT/cifar10-jpg.tar.gz" ] || copy_inputs
  [ -e "$LT_DATA_ROOT/cifar10-jpg.tar.gz" ] || { say "control skipped: no cifar10-jpg.tar.gz (carried by setup)"; return; }
  mps=$(mps_on)
  graph_flag=$(cuda_graph_flag)
  args="--runs control --parallel 2 --no-monitor"
  [ "$SMOKE" = 1 ] && args="--runs control --parallel 2 --epochs 1 --n-max 200 --no-monitor"
  say "control: params/cifar10_control.yaml ($args), ${graph_flag:-eager (the probe did not clear CUDA graphs)}, deadline $deadline s"
  OMP_NUM_THREADS=1 timeout $(( deadline + 20 )) "$PY" bench/cifar10_lt.py $args $graph_flag --deadline "$deadline" \
    --output-root "$STATE/runs/cifar10_lt" --results "$OUT/cifar10_control_gpu.md" 2>&1 | grep -v "^\s*$" | tee -a "$LOG" | tail -12
  # beside the CIFAR-10-LT runs (other ids), in the one JSON-lines file (a lent machine returns 8 files)
  "$PY" bench/gpu_summary.py jsonl "$STATE/runs/cifar10_lt" > "$OUT/cifar10_lt_runs.jsonl" 2>>"$LOG"
  [ "$mps" = on ] && echo quit | nvidia-cuda-mps-control
  say "control done"
}

case "${1:-}" in
  setup) setup ;;
  run) run "${2:-540}" ;;
  control) control "${2:-480}" ;;
  all) setup; run "${2:-540}"; control "${3:-480}" ;;
  *) echo "usage: bash bench/gpu.sh setup | run [deadline seconds] | control [deadline seconds] | all [run's deadline] [control's deadline]" >&2; exit 2 ;;
esac
