#!/usr/bin/env bash
# One-shot GPU check of mmtok: device tests and the benchmarks on one CUDA GPU, in under 8 minutes.
#
#   bash benchmarks/gpu_check.sh [--dry-run] OUTDIR
#
# Steps (each under its own `timeout`, all within a GPU_CHECK_BUDGET_S budget, default 450 s, so the
# whole script ends within 8 minutes; a failing step is recorded and the next one runs):
#   setup               benchmarks/gpu_env.py: PYTHONPATH, plugin entry-point metadata, offline
#                       wheels from .gpu_wheels/ if imports fail (see benchmarks/README.md)
#   env                 nvidia-smi, Python / torch versions, torch.cuda.get_device_name()
#   device_tests        MMTOK_TEST_DEVICE=cuda pytest -m device tests/test_device.py
#   bench_train         the shared model, d_model 1024, 12 + 12 layers, batch 64, eager and compiled
#   bench_encode        encode_manifest against the bare codec
#   bench_ct_attention  the CT slice-aware attention, bf16
#   bench_nir           the NIR Mamba block and SpectralFM pretraining
# OUTDIR gets <step>.log, the benchmarks' JSON, steps.jsonl, results.json and results.md. Exit
# status: 0 if every step passed, 1 otherwise.
#
# --dry-run: the same steps on the CPU at tiny sizes (about a minute on 2 cores): checks the
# plumbing, measures nothing. PYTHON picks the interpreter (default python3).
set -u -o pipefail

usage() { echo "usage: bash benchmarks/gpu_check.sh [--dry-run] OUTDIR" >&2; exit 2; }
DRY=0
case "${1:-}" in
  --dry-run) DRY=1; shift ;;
  -h|--help) usage ;;
esac
[ $# -eq 1 ] || usage
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$1" || exit 2
OUT=$(cd "$1" && pwd)
REPORT="$ROOT/benchmarks/gpu_check_report.py"
STEPS="$OUT/steps.jsonl"
: > "$STEPS"
rm -f "$OUT/results.json" "$OUT/results.md"
T0=$(date +%s.%N)
cd "$ROOT" || exit 2
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
# per-step timeouts (s): on the GPU they add up to the 450 s budget (7.5 min); the dry run runs on
# CPUs and gets more room per step (its budget fits the 300 s of tests/test_gpu_check.py)
if [ "$DRY" = 1 ]; then
  DEV=cpu; BUDGET=${GPU_CHECK_BUDGET_S:-280}
  L_SETUP=60 L_ENV=30 L_TESTS=120 L_TRAIN=90 L_ENCODE=150 L_CT=40 L_NIR=40
else
  DEV=cuda; BUDGET=${GPU_CHECK_BUDGET_S:-450}
  L_SETUP=35 L_ENV=20 L_TESTS=75 L_TRAIN=180 L_ENCODE=60 L_CT=25 L_NIR=55
fi

# step NAME LIMIT_S JSON|- [junit] -- CMD...: run CMD under timeout, log to OUTDIR/NAME.log, record it
step() {
  local name=$1 limit=$2 json=$3 junit="" rc s0 s1
  shift 3
  if [ "$1" != "--" ]; then junit=$1; shift; fi
  shift
  local left
  left=$("$PY" -I -c "import sys, time; print(int(float(sys.argv[1]) - (time.time() - float(sys.argv[2]))))" "$BUDGET" "$T0")
  [ "$limit" -gt "$left" ] && limit=$left
  [ "$json" = "-" ] && json=""
  if [ "$limit" -lt 5 ]; then
    echo "== $name: skipped, ${left} s left of the ${BUDGET} s budget"
    "$PY" -I "$REPORT" record --steps "$STEPS" --name "$name" --rc -1 --status skipped --timeout 0 \
      --note "no time left in the ${BUDGET} s budget" -- "$@"
    return
  fi
  echo "== $name (timeout ${limit} s): $*"
  s0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  s1=$(date +%s.%N)
  tail -n 4 "$OUT/$name.log" | sed 's/^/   | /'
  "$PY" -I "$REPORT" record --steps "$STEPS" --name "$name" --rc "$rc" --start "$s0" --end "$s1" \
    --timeout "$limit" --log "$OUT/$name.log" --json "$json" --junit "$junit" -- "$@"
}

# setup: make mmtok + plugins + dependencies importable (a no-op where they already are)
step setup "$L_SETUP" - -- "$PY" -I benchmarks/gpu_env.py --python "$PY" --root "$ROOT" \
  --site "${GPU_SITE:-$ROOT/.gpu_site}" --wheels "${GPU_WHEELS:-$ROOT/.gpu_wheels}" --env-file "$OUT/env.sh"
# shellcheck disable=SC1091
[ -f "$OUT/env.sh" ] && . "$OUT/env.sh"

step env "$L_ENV" "$OUT/env.json" -- "$PY" "$REPORT" env --device "$DEV" --out "$OUT/env.json"

step device_tests "$L_TESTS" - "$OUT/device_tests.xml" -- env MMTOK_TEST_DEVICE="$DEV" PYTEST_DISABLE_PLUGIN_AUTOLOAD=1 \
  "$PY" -m pytest -q -m device tests/test_device.py -p no:cacheprovider -rs --junitxml "$OUT/device_tests.xml"

if [ "$DRY" = 1 ]; then
  TRAIN=(--device cpu --quick --no-aion --d-model 64 --heads 4 --encoder-depth 1 --decoder-depth 1 --batch 4
         --tokens 16 --k-in 16 --k-tgt 8 --vocab 64)
  ENCODE=(--quick --no-memory --workers 0 --samples 128 --copies 2 --codecs default --device cpu)
  CT=(--device cpu --quick --dtype bf16 --grid 2 4 4 --dim 32 --heads 2 --batch 1 --max-slice-distance 2)
  NIR=(--device cpu --quick --no-mambapy --tokens 128 --no-pretrain --dim 32 --heads 2 --batch 1)
else
  TRAIN=(--device cuda --compile --quick --d-model 1024 --heads 16 --encoder-depth 12 --decoder-depth 12 --batch 64)
  ENCODE=(--quick --no-memory --workers 0 --device cuda)
  CT=(--device cuda --quick --dtype bf16)
  NIR=(--device cuda --quick --no-mambapy)
fi

step bench_train "$L_TRAIN" "$OUT/bench_train.json" -- "$PY" benchmarks/bench_train.py "${TRAIN[@]}" --json "$OUT/bench_train.json"
step bench_encode "$L_ENCODE" "$OUT/bench_encode.json" -- "$PY" benchmarks/bench_encode.py "${ENCODE[@]}" --json "$OUT/bench_encode.json"
step bench_ct_attention "$L_CT" "$OUT/bench_ct_attention.json" -- \
  "$PY" benchmarks/bench_ct_attention.py "${CT[@]}" --json "$OUT/bench_ct_attention.json"
step bench_nir "$L_NIR" "$OUT/bench_nir.json" -- "$PY" benchmarks/bench_nir.py "${NIR[@]}" --json "$OUT/bench_nir.json"

WALL=$("$PY" -I -c "import sys, time; print(round(time.time() - float(sys.argv[1]), 1))" "$T0")
ARGS=(--out "$OUT" --wall "$WALL")
[ "$DRY" = 1 ] && ARGS+=(--dry-run)
"$PY" -I "$REPORT" report "${ARGS[@]}"
