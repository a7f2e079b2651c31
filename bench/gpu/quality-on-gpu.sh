#!/bin/bash
# The quality benchmark at GPU scale (--preset gpu) on one GPU: every method's three seeds in
# parallel (six processes, one per method, seeds in turn), seed 0's DeepLab per method and the
# fully supervised upper bound; then the CRF benchmark on CUDA. Run from the project's root:
#   bash bench/gpu/quality-on-gpu.sh            (results in $OUT, default /tmp/devout)
# Try it on the CPU first at a tiny size:
#   PY=.venv/bin/python DEV=cpu NOINSTALL=1 PRESET=smoke SEEDS="0 1" bash bench/gpu/quality-on-gpu.sh
set -u
PY=${PY:-python3}; DEV=${DEV:-cuda}; PRESET=${PRESET:-gpu}; SEEDS=${SEEDS:-"0 1 2"}
BUDGET=${BUDGET:-500}; CRFB=${CRFB:-60}; METHODS=${METHODS:-"cam ktse fbr cpn ecs eps"}
HERE=$(cd "$(dirname "$0")" && pwd); ROOT=$(cd "$HERE/../.." && pwd)
R=/tmp/devr; RUNS=/tmp/devruns; rm -rf "$R" "$RUNS"; mkdir -p "$R" "$RUNS" "${OUT:=/tmp/devout}"
if [ -n "$(ls "$HERE"/whl/*.whl 2>/dev/null)" ] && [ "${NOINSTALL:-0}" != 1 ]; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target /tmp/site "$HERE"/whl/*.whl
fi
export PYTHONPATH=/tmp/site:$ROOT WSSS_CACHE=${WSSS_CACHE:-/tmp/wc} WSSS_NO_PROGRESS=1 \
  PYTHONUNBUFFERED=1 OMP_NUM_THREADS=2
cd "$ROOT"
{ nvidia-smi --query-gpu=name,memory.total --format=csv 2>/dev/null; nproc
  "$PY" -c "import torch; print(torch.__version__, torch.cuda.is_available())"; } > "$R/env.txt" 2>&1
t0=$(date +%s)
C="--preset $PRESET --device $DEV --quiet --set crf.device=$DEV"
# The dataset and the upper bound first (shared by every run through $WSSS_CACHE).
timeout "$BUDGET" "$PY" train/run.py cam $C --stages upper --out "$RUNS/upper" > "$R/upper.log" 2>&1
echo "upper rc=$? $(( $(date +%s) - t0 ))s" >> "$R/times.txt"
for m in $METHODS; do
  ( for s in $SEEDS; do
      st=$(date +%s); stages=cls,cam,pseudo,eval; [ "$s" = 0 ] && stages=cls,cam,pseudo,seg,upper,eval
      timeout "$BUDGET" "$PY" train/run.py "$m" $C --set cls.seed="$s" --stages "$stages" \
        --out "$RUNS/$m/seed$s" > "$R/$m-seed$s.log" 2>&1
      echo "$m seed $s rc=$? $(( $(date +%s) - st ))s" >> "$R/times.txt"
    done ) &
done
wait
if [ "$DEV" = cuda ]; then
  timeout "$CRFB" "$PY" -m wsss.bench.crf --device cuda --out "$R/crf_gpu.json" --repeats 3 \
    --reference bench/results/2026-11-21/results.json \
    --sizes 256 500 --iterations 10 --presets deeplab > "$R/crf.log" 2>&1
fi
"$PY" - "$RUNS" "$R/summary.json" <<'PY'
import json, sys
from pathlib import Path
from wsss.bench.quality import SEED_KEYS, summarize
runs, out = Path(sys.argv[1]), Path(sys.argv[2])
summary = {}
for method in sorted(p.name for p in runs.iterdir() if p.is_dir() and p.name != "upper"):
    reports = {int(p.name[4:]): json.loads((p / "report.json").read_text())
               for p in sorted((runs / method).glob("seed*")) if (p / "report.json").exists()}
    if reports:
        summary[method] = summarize(reports) | {
            "seg_crf_miou": reports.get(0, {}).get("seg_crf_miou"),
            "upper_bound_crf_miou": reports.get(0, {}).get("upper_bound_crf_miou")}
out.write_text(json.dumps(summary, indent=1))
for method, s in summary.items():
    print(method, {k: s[k]["mean"] for k, _ in SEED_KEYS}, "unhealthy", s["unhealthy_seeds"])
PY
tar czf "$OUT/results.tgz" -C /tmp devr devruns --exclude="*.pt" --exclude="cams" --exclude="pseudo" 2>/dev/null
cp "$R/summary.json" "$R/times.txt" "$OUT/" 2>/dev/null; [ -f "$R/crf_gpu.json" ] && cp "$R/crf_gpu.json" "$OUT/"
echo "total $(( $(date +%s) - t0 ))s" | tee -a "$OUT/times.txt"
