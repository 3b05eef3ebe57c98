#!/usr/bin/env bash
# Runs the whole suite (slow end-to-end tests included), after the layering contracts and ruff when run
# without arguments. pytest's exit 5 ("no tests ran") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
# Static checks first (seconds): the layering contracts (import-linter, pyproject.toml) and ruff's lint.
if [ "$#" -eq 0 ]; then
  .venv/bin/lint-imports || exit 1
  .venv/bin/ruff check . || exit 1
fi
.venv/bin/python -m pytest "$@"
rc=$?
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
