#!/usr/bin/env bash
# One command for the first GPU run (< 8 min on an H100): compile the kernels in parallel, run
# the kernel + ops tests compiled for the GPU (TRITON_INTERPRET=0) alongside, then both
# benchmarks. Everything lands under $OUT (default bench/out):
#   versions.txt, warmup.txt, gpu_tests_*.txt, bench_dequant.txt, bench_matmul.txt,
#   bench/results/<gpu>/{dequant,matmul}.{json,png}
# Extra arguments go to bench/matmul.py and bench/warmup.py (e.g. --quick, --shapes llama8b).
set -u
cd "$(dirname "$0")/.."
export OUT="${OUT:-$PWD/bench/out}"
export TRITON_INTERPRET=0
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
python -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, torch.cuda.get_device_name())" \
  2>&1 | tee "$OUT/versions.txt"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
t0=$(date +%s)
# Phase 1 (parallel): benchmark kernels compiled in a process pool; the tests in eight processes
# (each compiles its own kernel variants; Triton's disk cache is shared).
timeout 200 python bench/warmup.py --jobs 8 "$@" > "$OUT/warmup.txt" 2>&1 &
P=(-q -p no:cacheprovider --durations=5)
K=tests/test_kernels.py
timeout 200 python -m pytest "${P[@]}" $K -k "test_dequant" > "$OUT/gpu_tests_dequant.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "matmul_vs_reference and pot" > "$OUT/gpu_tests_matmul_pot.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "matmul_vs_reference and int" > "$OUT/gpu_tests_matmul_int.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "not test_dequant and not matmul_vs_reference and not gpu_" \
  > "$OUT/gpu_tests_misc.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "gpu_large and fp16" > "$OUT/gpu_tests_large_fp16.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "gpu_large and bf16" > "$OUT/gpu_tests_large_bf16.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" $K -k "gpu_bf16" > "$OUT/gpu_tests_bf16_loaders.txt" 2>&1 &
timeout 200 python -m pytest "${P[@]}" tests/test_ops.py > "$OUT/gpu_tests_ops.txt" 2>&1 &
wait
for f in "$OUT"/gpu_tests_*.txt; do echo "== $(basename "$f")"; grep -E "passed|failed|error" "$f" | tail -3; done
grep -E "FAILED|Error" "$OUT"/gpu_tests_*.txt | head -20
tail -2 "$OUT/warmup.txt"
echo "phase 1 (warm-up + tests): $(( $(date +%s) - t0 )) s"
timeout 50 python bench/dequant.py > "$OUT/bench_dequant.txt" 2>&1
sed -n '/^ *K  /,$p' "$OUT/bench_dequant.txt"
echo "dequant bench done at $(( $(date +%s) - t0 )) s"
timeout 190 python bench/matmul.py "$@" > "$OUT/bench_matmul.txt" 2>&1
sed -n '/^speed-up vs fp16/,$p' "$OUT/bench_matmul.txt" | head -120
tail -3 "$OUT/bench_matmul.txt"
echo "all done at $(( $(date +%s) - t0 )) s"
