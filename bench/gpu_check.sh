#!/usr/bin/env bash
# One command for the first GPU run (< 8 min on an H100): the kernel + ops tests compiled for the
# GPU (TRITON_INTERPRET=0), then both benchmarks. Everything lands under $OUT (default bench/out):
#   gpu_tests.txt, bench_dequant.txt, bench_matmul.txt, bench/results/<gpu>/{dequant,matmul}.{json,png}
# Extra arguments go to bench/matmul.py (e.g. --quick, --shapes llama8b, --tune).
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
timeout 170 python -m pytest -q -p no:cacheprovider --durations=10 tests/test_kernels.py tests/test_ops.py \
  2>&1 | tee "$OUT/gpu_tests.txt" | tail -25
echo "tests: $(( $(date +%s) - t0 )) s"
timeout 60 python bench/dequant.py 2>&1 | tee "$OUT/bench_dequant.txt" | tail -20
echo "dequant bench done at $(( $(date +%s) - t0 )) s"
timeout 230 python bench/matmul.py "$@" > "$OUT/bench_matmul.txt" 2>&1
sed -n '/^speed-up vs fp16/,$p' "$OUT/bench_matmul.txt" | head -120
tail -3 "$OUT/bench_matmul.txt"
echo "all done at $(( $(date +%s) - t0 )) s"
