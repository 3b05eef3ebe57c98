#!/usr/bin/env bash
# The test suite, in three selections of one suite (all run on pytest-xdist workers, one per core up to 4, each
# module's tests on one worker so a module's engine starts once, and print pytest's 15 slowest tests):
#   (no arguments: `make test`)   the layering contracts and ruff (seconds), then every test but the `e2e` ones:
#                                 the fast tests and the slow ones (engines, servers, the browser, CLI runs);
#   `--e2e` (`make test-e2e`)     the `e2e` tests alone: whole workflows through Ray clusters, lm_eval CLI runs and the
#                                 README's long sessions (CI runs `make test`, then this);
#   `--fast` (`make test-fast`)   no slow tests at all, for edit loops.
# Any other arguments go to pytest as they are, in this process (`bash scripts/run_tests.sh tests/test_hub.py -k spec`).
# pytest's exit 5 ("no tests ran") is a failure.
set -uo pipefail
cd "$(dirname "$0")/.."
export VLLM_CPU_KVCACHE_SPACE="${VLLM_CPU_KVCACHE_SPACE:-1}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
# bytecode caches on, whatever the shell says: every test process, engine, CLI run and Ray worker imports the
# project's modules, and pytest rewrites the asserts of every test module and plugin; with PYTHONDONTWRITEBYTECODE
# each of them compiles them again (the caches land in __pycache__ folders, which git ignores)
unset PYTHONDONTWRITEBYTECODE
args=("$@")
if [ "$#" -eq 0 ] || [ "$*" = "--fast" ] || [ "$*" = "--e2e" ]; then
  .venv/bin/lint-imports || exit 1
  .venv/bin/ruff check . || exit 1
  cores=$(nproc)
  workers="${REASON_TEST_WORKERS:-$(( cores < 4 ? cores : 4 ))}"
  args=(--durations=15)
  if [ "$workers" -gt 1 ]; then
    # modules stay whole on one worker (their engines and servers start once); tests/conftest.py
    # puts the long modules first and pins each worker to its own core
    args+=(-n "$workers" --dist loadscope --no-loadscope-reorder)
  fi
  case "$*" in
    --fast) args+=(-m "not slow") ;;
    --e2e) args+=(-m "e2e") ;;
    *) args+=(-m "not e2e") ;;
  esac
fi
started=$(date +%s)
.venv/bin/python -m pytest "${args[@]}"
rc=$?
echo "pytest: $(( $(date +%s) - started )) s wall (exit $rc)"
if [ "$rc" -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi
exit "$rc"
