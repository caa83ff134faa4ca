#!/usr/bin/env bash
# One command for a lent H100/H200 (budget ≤ 8 min): compiled tests, copy bandwidth, the M = 1
# sweep on Llama-3-8B shapes and 8192² (PoT 2/3/4, the int twin, gemlite int4 and fp16 matmul in
# the same run), the decode-bound rates, and the inline-PTX vs pure-Triton twin bit comparison.
# Everything lands under $OUT (default bench/out):
#   versions.txt, nvidia-smi.txt, gpu_tests_*.txt, bench_dequant.txt, bench_matmul.txt,
#   bench/results/<gpu>/{dequant,matmul}.{json,png}, timing.txt
# Usage: [OUT=dir] bash bench/gpu_check.sh            (source bench/gpu_setup.sh first for gemlite)
#        bash bench/gpu_check.sh --dry-run            (CPU: syntax + imports + the plan, no GPU)
#        E2E_BUDGET_S=200 bash bench/gpu_check.sh     (+ phase 4: bench/e2e.py Llama-8B, 32 layers, within
#                                                      that many seconds; outside the 8-minute plan)
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/bench/out}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
if [ "${1:-}" = "--dry-run" ]; then
  # What a CPU box can check: the scripts import and parse their arguments.
  for s in bench/matmul.py bench/dequant.py bench/warmup.py bench/sass_report.py bench/e2e.py; do
    python "$s" --help > /dev/null || { echo "FAIL: $s --help"; exit 1; }
  done
  python -c "import potkernels.kernels.decode_bench, potkernels.kernels.api" || exit 1
  echo "dry run ok: would run compiled tests (${OUT}/gpu_tests_*.txt), bench/dequant.py, bench/matmul.py --shapes llama8b,square8k --m 1"
  exit 0
fi
unset TRITON_INTERPRET
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT/versions.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
t0=$(date +%s)
stamp() { echo "$1 at $(( $(date +%s) - t0 )) s" | tee -a "$OUT/timing.txt"; }
# Phase 1 (≤ 200 s, parallel): warm the benchmark kernels' compile cache while the compiled tests
# run in a few processes (each compiles its own variants; Triton's disk cache is shared).
timeout 200 python bench/warmup.py --jobs 6 --shapes llama8b,square8k --m 1 > "$OUT/warmup.txt" 2>&1 &
P=(-q -p no:cacheprovider --durations=5)
K=tests/test_kernels.py
timeout 200 python -m pytest "${P[@]}" $K -k "asm_equals_twin" > "$OUT/gpu_tests_asm_twin.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "test_dequant" > "$OUT/gpu_tests_dequant.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "matmul_vs_reference or gemv" > "$OUT/gpu_tests_matmul.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "gpu_large and fp16" > "$OUT/gpu_tests_large_fp16.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "gpu_large and bf16 or gpu_bf16 or decode_bench" \
  > "$OUT/gpu_tests_bf16.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" tests/test_ops.py tests/test_format_v2.py > "$OUT/gpu_tests_ops.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" tests/test_tensor_core.py > "$OUT/gpu_tests_tensor_core.txt" 2>&1 &
wait
for f in "$OUT"/gpu_tests_*.txt; do echo "== $(basename "$f")"; grep -E "passed|failed|error" "$f" | tail -2; done
grep -hE "^FAILED|Error" "$OUT"/gpu_tests_*.txt | head -20
stamp "phase 1 (warm-up + compiled tests)"
# Phase 2 (≤ 60 s): decode-bound rates + stand-alone dequant, PoT vs int at 2/3/4 bits.
timeout 60 python bench/dequant.py > "$OUT/bench_dequant.txt" 2>&1
sed -n '/^ *K  /,$p' "$OUT/bench_dequant.txt"
stamp "dequant / decode-bound bench"
# Phase 3 (≤ 180 s): copy bandwidth + M = 1 on Llama-3-8B shapes and 8192², fp16 / PoT / int / gemlite.
timeout 180 python bench/matmul.py --shapes llama8b,square8k --m 1 "$@" > "$OUT/bench_matmul.txt" 2>&1
sed -n '/^speed-up vs fp16/,$p' "$OUT/bench_matmul.txt" | head -60
tail -3 "$OUT/bench_matmul.txt"
stamp "all done"
if [ -n "${E2E_BUDGET_S:-}" ]; then
  # Phase 4 (opt-in): greedy decode tok/s, fp16 vs PoT 4/3/2 vs int4, batch 1 and 16, CUDA graphs.
  timeout $(( E2E_BUDGET_S + 60 )) python bench/e2e.py --model llama8b --budget-s "$E2E_BUDGET_S" \
    --out "$OUT/e2e_llama8b.json" > "$OUT/bench_e2e.txt" 2>&1
  grep -E "tok/s|skip|total" "$OUT/bench_e2e.txt"
  stamp "e2e"
fi
