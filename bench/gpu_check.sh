#!/usr/bin/env bash
# One command for a lent H100/H200 (lease ≤ 8 min; the image has torch 2.11, triton 3.6.0, numpy 2.5,
# Python 3.12, no network: nothing is downloaded). Phases, each time-boxed:
#   1 (≤ 210 s) compiled tests in 11 processes (TRITON_INTERPRET=0, POTKERNELS_REQUIRE_GPU=1: a test
#     skipped for want of a GPU FAILS, and so does a process that times out or selects no test),
#     with the benchmark kernels' compile cache warmed alongside;
#   2 (≤ 60 s) decode-bound + stand-alone dequant bench;  3 (≤ 180 s) matmul bench on the Llama-3-8B
#     shapes (M = 1, 16, 64, 2048 by default), fp16 / PoT / int / gemlite;
#   4 (≤ 60 s) the speed model's prediction for every measured fused row: $OUT/compare.txt.
# Everything lands under $OUT (default bench/out): versions.txt (GPU, torch, triton, numpy, python, date,
# commit), nvidia-smi.txt, gpu_tests_*.txt, bench_*.txt, bench/results/<gpu>/{dequant,matmul}.{json,png},
# compare.txt, timing.txt. The script exits non-zero if any compiled-test process failed.
# Usage: [OUT=dir] [M=1,16,64,2048] bash bench/gpu_check.sh
#        bash bench/gpu_check.sh --dry-run      (CPU: everything the script can check without a GPU)
#        E2E_BUDGET_S=200 bash bench/gpu_check.sh  (+ bench/e2e.py Llama-8B, outside the 8-minute plan)
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/bench/out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY="${PYTHON:-python3}"
M_LIST="${M:-1,16,64,2048}"
mkdir -p "$OUT"
P=(-q -p no:cacheprovider -rs --durations=5)
K=tests/test_kernels.py
T=tests/test_tensor_core.py
# name | pytest selection: every test file that runs kernels, split so no process nears its time box
TEST_SPLITS=(
  "asm_twin_gemv|$K -k 'asm_equals_twin and gemv'"
  "asm_twin_tc|$K -k 'asm_equals_twin and tensor_core'"
  "dequant|$K -k test_dequant"
  "matmul_pot|$K -k 'matmul_vs_reference and pot'"
  "matmul_int|$K -k 'matmul_vs_reference and int'"
  "kernels_misc|$K -k 'not test_dequant and not matmul_vs_reference and not gpu_'"
  "large_fp16|$K -k 'gpu_large and fp16'"
  "large_bf16|$K -k 'gpu_large and bf16 or gpu_bf16'"
  "tc_pot|$T -k pot"
  "tc_rest|$T -k 'not pot'"
  "ops|tests/test_ops.py tests/test_format_v2.py"
)
TEST_BOX_S=210

check_tests() {  # $1: folder with gpu_tests_<name>.txt + .rc; prints a summary, returns 1 on any failure
  local bad=0 name rc f
  for spec in "${TEST_SPLITS[@]}"; do
    name="${spec%%|*}"; f="$1/gpu_tests_$name.txt"; rc=$(cat "$f.rc" 2>/dev/null || echo missing)
    echo "== $name: rc $rc; $(grep -E '[0-9]+ (passed|failed|error)' "$f" 2>/dev/null | tail -1)"
    case "$rc" in
      0) ;;
      124) echo "FAIL: $name hit its ${TEST_BOX_S} s time box"; bad=1 ;;
      5) echo "FAIL: $name selected no test"; bad=1 ;;
      *) echo "FAIL: $name (pytest rc $rc)"; bad=1 ;;
    esac
    # belt and braces: pytest's skip summary (-rs) must not name the GPU
    if grep -E "^SKIPPED" "$f" 2>/dev/null | grep -qiE "gpu|cuda"; then
      echo "FAIL: $name skipped a GPU test:"; grep -E "^SKIPPED" "$f" | grep -iE "gpu|cuda" | head -3; bad=1
    fi
  done
  return $bad
}

if [ "${1:-}" = "--dry-run" ]; then
  # What a CPU box can check: syntax, imports, argument parsing, every test selection collects
  # tests, the strict GPU mode refuses a CPU session, the skip rule fails a GPU-skip, and the
  # model's compare command reads rows in bench/matmul.py's form.
  fail() { echo "FAIL: $*"; exit 1; }
  bash -n "$0" || fail "bash -n"
  for s in bench/matmul.py bench/dequant.py bench/warmup.py bench/sass_report.py bench/e2e.py bench/speed_model.py; do
    "$PY" "$s" --help > /dev/null || fail "$s --help"
  done
  "$PY" -c "import potkernels.kernels.decode_bench, potkernels.kernels.api" || fail "imports"
  for spec in "${TEST_SPLITS[@]}"; do
    name="${spec%%|*}"
    n=$(eval "$PY -m pytest --collect-only -q -p no:cacheprovider ${spec#*|}" 2>/dev/null | grep -c "::")
    [ "$n" -gt 0 ] || fail "test split $name collects no test"
    echo "split $name: $n tests"
  done
  TRITON_INTERPRET=0 POTKERNELS_REQUIRE_GPU=1 "$PY" -m pytest -q -p no:cacheprovider "$K" -k test_empty_batch \
    > "$OUT/dry_strict.txt" 2>&1
  rc=$?
  if "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "(a GPU is present: strict-mode refusal not checked)"
  else
    [ "$rc" -eq 4 ] && grep -q "POTKERNELS_REQUIRE_GPU=1 needs CUDA" "$OUT/dry_strict.txt" \
      || fail "strict mode did not refuse a CPU session (rc $rc, $OUT/dry_strict.txt)"
  fi
  mkdir -p "$OUT/dry"  # the post-run checker on fake results: a skipped GPU test must fail it
  for spec in "${TEST_SPLITS[@]}"; do name="${spec%%|*}"; echo "3 passed in 1.0s" > "$OUT/dry/gpu_tests_$name.txt"
    echo 0 > "$OUT/dry/gpu_tests_$name.txt.rc"; done
  check_tests "$OUT/dry" > /dev/null || fail "checker rejects passing results"
  echo "SKIPPED [1] tests/test_kernels.py:17: compiled GPU run only" >> "$OUT/dry/gpu_tests_dequant.txt"
  check_tests "$OUT/dry" > /dev/null && fail "checker accepts a skipped GPU test"
  echo 124 > "$OUT/dry/gpu_tests_dequant.txt.rc"; sed -i '$d' "$OUT/dry/gpu_tests_dequant.txt"
  check_tests "$OUT/dry" > /dev/null && fail "checker accepts a timed-out process"
  rm -rf "$OUT/dry"
  "$PY" bench/speed_model.py compare --gpu h100 --dry-run > "$OUT/dry_compare.txt" 2>&1 \
    || fail "speed_model compare (see $OUT/dry_compare.txt)"
  tail -1 "$OUT/dry_compare.txt"
  echo "dry run ok: would run ${#TEST_SPLITS[@]} compiled-test processes (strict), bench/dequant.py," \
       "bench/matmul.py --shapes llama8b --m $M_LIST, speed_model compare"
  exit 0
fi

export TRITON_INTERPRET=0  # conftest keeps an exported 0: compiled kernels on the GPU
{
  "$PY" -c "import torch, triton, numpy, sys; print('gpu', torch.cuda.get_device_name()); print('torch', torch.__version__, \
'triton', triton.__version__, 'numpy', numpy.__version__, 'python', sys.version.split()[0])"
  echo "date $(date -u +%FT%TZ)"
  echo "commit $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet HEAD 2>/dev/null || echo ' (+ local changes)')"
} 2>&1 | tee "$OUT/versions.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
t0=$(date +%s)
stamp() { echo "$1 at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timing.txt"; }

# Phase 1: compiled tests (strict) + compile-cache warm-up of the benchmark kernels.
timeout "$TEST_BOX_S" "$PY" bench/warmup.py --jobs 4 --shapes llama8b --m "$M_LIST" > "$OUT/warmup.txt" 2>&1 &
for spec in "${TEST_SPLITS[@]}"; do
  name="${spec%%|*}"
  ( eval "POTKERNELS_REQUIRE_GPU=1 timeout $TEST_BOX_S $PY -m pytest ${P[*]} ${spec#*|}" > "$OUT/gpu_tests_$name.txt" 2>&1
    echo $? > "$OUT/gpu_tests_$name.txt.rc" ) &
done
wait
check_tests "$OUT" | tee "$OUT/gpu_tests_summary.txt"
tests_ok=${PIPESTATUS[0]}
grep -hE "^FAILED|^ERROR" "$OUT"/gpu_tests_*.txt | head -20
stamp "phase 1 (compiled tests, strict: $([ "$tests_ok" -eq 0 ] && echo ok || echo FAILED))"

# Phase 2: decode-bound rates + stand-alone dequant, PoT vs int at 2/3/4 bits.
timeout 60 "$PY" bench/dequant.py > "$OUT/bench_dequant.txt" 2>&1
sed -n '/^ *K  /,$p' "$OUT/bench_dequant.txt"
stamp "phase 2 (dequant / decode-bound bench)"

# Phase 3: copy bandwidth + matmul on the Llama-3-8B shapes, fp16 / PoT / int / gemlite in one run.
timeout 180 "$PY" bench/matmul.py --shapes llama8b --m "$M_LIST" > "$OUT/bench_matmul.txt" 2>&1
sed -n '/^speed-up vs fp16/,$p' "$OUT/bench_matmul.txt" | head -60
tail -3 "$OUT/bench_matmul.txt"
stamp "phase 3 (matmul bench)"

# Phase 4: the speed model's prediction for each measured fused-kernel row (same form as predict).
measured=$(ls "$OUT"/bench/results/*/matmul.json 2>/dev/null | head -1)
gpu_key=$("$PY" -c "import torch; print('h200' if 'H200' in torch.cuda.get_device_name() else 'h100')")
if [ -n "$measured" ]; then
  timeout 60 "$PY" bench/speed_model.py compare --gpu "$gpu_key" --measured "$measured" > "$OUT/compare.txt" 2>&1
  tail -1 "$OUT/compare.txt"
fi
stamp "phase 4 (model vs measured) — all done"

if [ -n "${E2E_BUDGET_S:-}" ]; then
  # Phase 5 (opt-in): greedy decode tok/s, fp16 vs PoT 4/3/2 vs int4, batch 1 and 16, CUDA graphs.
  timeout $(( E2E_BUDGET_S + 60 )) "$PY" bench/e2e.py --model llama8b --budget-s "$E2E_BUDGET_S" \
    --out "$OUT/e2e_llama8b.json" > "$OUT/bench_e2e.txt" 2>&1
  grep -E "tok/s|skip|total" "$OUT/bench_e2e.txt"
  stamp "e2e"
fi
exit "$tests_ok"
