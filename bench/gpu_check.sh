#!/usr/bin/env bash
# The GPU verification of issue 9 in one command, for a machine with one NVIDIA GPU, its own
# python3 with a CUDA torch, and no network. From the repository root:
#
#   bash bench/gpu_check.sh
#
# 1. setup: installs the wheels that bench/gpu_check_prepare.sh made on a machine with network
#    (.whl/: fairseq-fixed built for this Python, its missing runtime needs, numpy 1.26.4) into
#    a folder put on PYTHONPATH, after checking their SHA256SUMS; numpy 1.26.4 is used only if
#    torch, scipy, scikit-learn and fairseq import with it (else this machine's numpy, noted);
# 2. environment: nvidia-smi, Python, torch, CUDA, cuDNN, numpy, fairseq versions;
# 3. tests: python -m pytest tests/test_cuda.py;
# 4. benchmarks on the GPU: bench_criterion.py at 10K and 33K vocabularies (cross_entropy and the
#    predicted, topk and full modes side by side), bench_lm_model.py, bench_nmt_model.py,
#    bench_kd.py (kd_cross_entropy online, top-8 and cached, beside cross_entropy);
# 5. one report, $OUT/gpu_report.md when OUT is set, else outputs/gpu_report.md: the
#    environment, the tests' summary, a table measure | value | goal | met?, every step's exit
#    status, time and exact command; each step's log in gpu_check_logs/ beside it.
#
# Every step has a timeout and the whole run a budget (SKD_GPU_CHECK_BUDGET, 460 s, so it ends
# within 8 minutes with the report); a step that fails, times out or finds no time left is
# recorded and the next one runs. Exit status: 0 when every step succeeded (goals not met are
# in the report, not in the status), 1 otherwise.
#
# Settings (environment): PYTHON (python3), SKD_WHEEL_DIR (.whl), SKD_SITE (/tmp/site, emptied
# first), SKD_GPU_CHECK_BUDGET (seconds). Without a GPU the script records that and skips what
# needs one; SKD_GPU_CHECK_ALLOW_CPU=1 instead runs every step on the CPU at tiny sizes (the
# tests with SKD_TEST_DEVICE=cpu): a dry run of the script itself, not a measurement.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
python=${PYTHON:-python3}
wheels=${SKD_WHEEL_DIR:-$repo/.whl}
site=${SKD_SITE:-/tmp/site}
budget=${SKD_GPU_CHECK_BUDGET:-460}
allow_cpu=${SKD_GPU_CHECK_ALLOW_CPU:-0}
if [ -n "${OUT:-}" ]; then report_dir=$OUT; else report_dir=$repo/outputs; fi
report=$report_dir/gpu_report.md
logs=$report_dir/gpu_check_logs
steps=$logs/steps.tsv
report_reserve=15  # seconds kept for the report at the end

mkdir -p "$logs"
: > "$steps"
export python wheels site repo logs  # for the steps that run functions of this script
start=$SECONDS
failures=0

log() { echo "[gpu_check $(date +%H:%M:%S) +$((SECONDS - start))s] $*" >&2; }

# step NAME TIMEOUT COMMAND...: runs COMMAND with its output in $logs/NAME.log, for at most
# TIMEOUT seconds and never past the budget; appends NAME, status, seconds, command to $steps.
step() {
  local name=$1 limit=$2 rc status began left shown
  shift 2
  shown=$*
  if declare -F "$1" > /dev/null; then shown="$1 (a function of bench/gpu_check.sh; its commands are in its log)"; fi
  left=$((start + budget - report_reserve - SECONDS))
  if [ "$left" -lt 10 ]; then
    status="skipped: no time left in the ${budget} s budget"
    rc=-1
    failures=$((failures + 1))
    printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" 0 "$status" "$*" >> "$steps"
    log "$name: $status"
    return 0
  fi
  [ "$limit" -le "$left" ] || limit=$left
  log "$name (timeout ${limit} s): $*"
  began=$SECONDS
  if declare -F "$1" > /dev/null; then  # a function of this script: in a bash of its own
    set -- bash -c "set -euo pipefail; set -x; $(declare -f "$1"); $1"
  fi
  if timeout --kill-after=5 "$limit" "$@" > "$logs/$name.log" 2>&1; then rc=0; else rc=$?; fi
  case $rc in
    0) status=ok ;;
    124 | 137) status="timed out after ${limit} s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  [ "$rc" = 0 ] || failures=$((failures + 1))
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - began))" "$status" "$shown" >> "$steps"
  log "$name: $status in $((SECONDS - began)) s"
}

# skip NAME REASON COMMAND...: records a step that is not run.
skip() {
  local name=$1 reason=$2
  shift 2
  printf '%s\t%s\t%s\t%s\t%s\n' "$name" -1 0 "skipped: $reason" "$*" >> "$steps"
  log "$name: skipped: $reason"
}

# --- 1. setup --------------------------------------------------------------------------------
setup() {
  [ -f "$wheels/SHA256SUMS" ] || {
    echo "no $wheels/SHA256SUMS: run bench/gpu_check_prepare.sh on a machine with network first"
    return 1
  }
  (cd "$wheels" && sha256sum -c SHA256SUMS)
  rm -rf "$site" "$site-numpy"
  local numpy_whl others=()
  numpy_whl=$(find "$wheels" -maxdepth 1 -name 'numpy-*.whl')
  for w in "$wheels"/*.whl; do [ "$w" = "$numpy_whl" ] || others+=("$w"); done
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "${others[@]}"
  "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site-numpy" "$numpy_whl"
  local check='import numpy, torch, scipy.stats, sklearn.metrics, fairseq, fairseq_skd
from fairseq.data import data_utils_fast, token_block_utils_fast
torch.from_numpy(numpy.zeros(2))
print("numpy", numpy.__version__, "from", numpy.__file__)'
  if PYTHONPATH=$site-numpy:$site:$repo "$python" -c "$check; numpy.compat.long"; then
    echo "$site-numpy:$site:$repo" > "$logs/pythonpath"
    echo "using the carried numpy (np.compat, needed by --sample-break-mode eos, is there)"
  else
    echo "the carried numpy does not import with this machine's packages: using its own numpy"
    PYTHONPATH=$site:$repo "$python" -c "$check"
    echo "$site:$repo" > "$logs/pythonpath"
  fi
}

# --- 2. environment --------------------------------------------------------------------------
environment() {
  if command -v nvidia-smi >/dev/null 2>&1; then
    nvidia-smi || true
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader \
      > "$logs/nvidia-smi.csv" || true
  else
    echo "no nvidia-smi on this machine"
  fi
  "$python" - "$logs/environment.json" <<'PY'
import json, platform, subprocess, sys
import numpy, torch
info = {"python": platform.python_version(), "executable": sys.executable,
        "platform": platform.platform(), "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(), "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "numpy": numpy.__version__, "numpy_from": numpy.__file__,
        "numpy_compat": hasattr(numpy, "compat")}
try:
    import fairseq
    info["fairseq"] = fairseq.__version__
except Exception as e:  # recorded; the tests will say more
    info["fairseq"] = f"import failed: {e!r}"
if torch.cuda.is_available():
    info["gpu"] = torch.cuda.get_device_name()
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    info["gpu_memory_gib"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
try:
    info["commit"] = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip()
except OSError:
    info["commit"] = ""
info["commit"] = info["commit"] or "unknown (no git metadata here)"
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(json.dumps(info, indent=2))
PY
}

log "report: $report; logs: $logs; budget ${budget} s"
step setup 150 setup
if [ -f "$logs/pythonpath" ]; then
  export PYTHONPATH
  PYTHONPATH=$(cat "$logs/pythonpath")
else
  export PYTHONPATH=$site:$repo${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
step environment 60 environment

if "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  device=cuda
elif [ "$allow_cpu" = 1 ]; then
  device=cpu
  log "no GPU: SKD_GPU_CHECK_ALLOW_CPU=1, so every step runs on the CPU at tiny sizes (a dry run)"
else
  device=none
  log "torch sees no GPU: the GPU steps are skipped (SKD_GPU_CHECK_ALLOW_CPU=1 for a CPU dry run)"
fi
echo "$device" > "$logs/device"

# --- 3. tests --------------------------------------------------------------------------------
test_cmd=("$python" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider
          --junitxml="$logs/test_cuda.xml")
if [ "$device" = cpu ]; then
  step tests 240 env SKD_TEST_DEVICE=cpu "${test_cmd[@]}"
else
  # SKD_TEST_DEVICE=cuda: without a GPU every test is skipped (which the report says) rather
  # than run on the CPU as in the normal suite
  step tests 240 env SKD_TEST_DEVICE=cuda "${test_cmd[@]}"
fi

# --- 4. benchmarks ---------------------------------------------------------------------------
# The criterion on the paper's LM (fairseq lstm_lm 500/400/500, 32 x 35 tokens) at a 10K and a
# 33K vocabulary (33278: WikiText-2's); the models at the benchmarks' default (paper) sizes.
if [ "$device" = cuda ]; then
  crit=(--device cuda --threads 4 --modes predicted topk full --steps 120 --warmup 10)
  lm=(--device cuda --steps 20 --repeats 5)
  nmt=(--device cuda --train-batches 10 --repeats 3)
  kd=(--device cuda --steps 24 --warmup 4)
  vocabs=(10000 33278)
else  # a dry run: tiny sizes, seconds each
  crit=(--device cpu --modes predicted topk full --steps 4 --warmup 1 --embed 32 --hidden 32
        --out-embed 32 --bsz 4 --tokens 8)
  lm=(--device cpu --vocab 500 --embed 32 --hidden 32 --out-embed 32 --steps 2 --repeats 1
      --bsz 4)
  nmt=(--device cpu --vocab 500 --embed 32 --hidden 32 --readout 32 --train-batches 2
       --train-bsz 4 --gen-bsz 2 --gen-batches 1 --beam 3 --gen-len 5 --lengths 4 8 --repeats 1)
  kd=(--device cpu --vocab 500 --embed 32 --hidden 32 --out-embed 32 --bsz 4 --tokens 8
      --batches 2 --steps 2 --warmup 1)
  vocabs=(2000 3000)
fi
for vocab in "${vocabs[@]}"; do
  cmd=("$python" bench/bench_criterion.py "${crit[@]}" --vocab "$vocab"
       --json "$logs/bench_criterion_$vocab.json")
  if [ "$device" = none ]; then skip "criterion_$vocab" "no GPU" "${cmd[@]}"
  else step "criterion_$vocab" 60 "${cmd[@]}"; fi
done
cmd=("$python" bench/bench_lm_model.py "${lm[@]}" --json "$logs/bench_lm_model.json")
if [ "$device" = none ]; then skip lm_model "no GPU" "${cmd[@]}"; else step lm_model 60 "${cmd[@]}"; fi
cmd=("$python" bench/bench_nmt_model.py "${nmt[@]}" --json "$logs/bench_nmt_model.json")
if [ "$device" = none ]; then skip nmt_model "no GPU" "${cmd[@]}"; else step nmt_model 75 "${cmd[@]}"; fi
cmd=("$python" bench/bench_kd.py "${kd[@]}" --json "$logs/bench_kd.json")
if [ "$device" = none ]; then skip kd "no GPU" "${cmd[@]}"; else step kd 75 "${cmd[@]}"; fi

# --- 5. the report ---------------------------------------------------------------------------
total=$((SECONDS - start))
if ! env -u PYTHONPATH "$python" bench/gpu_report.py "$logs" "$report" --seconds "$total" \
     > "$logs/report.log" 2>&1; then
  # the report's own fallback: what bash knows
  {
    echo "# GPU check: report generation failed (bench/gpu_report.py: see gpu_check_logs/report.log)"
    echo
    echo "device: $device; total ${total} s; failed steps: $failures"
    echo
    echo '```'
    cat "$steps"
    echo '```'
  } > "$report"
  failures=$((failures + 1))
fi
log "done in ${total} s, $failures step(s) not ok; report: $report"
[ "$failures" = 0 ]
