#!/usr/bin/env bash
# Re-resolve requirements/lock-cuda.txt (the CUDA working set setup.sh installs on GPU machines)
# without installing anything or needing a GPU: pip resolves vllm + the working set for this
# Python on linux x86_64 and reports what it would install. sae-dashboard (installed --no-deps)
# keeps its pin from requirements/lock.txt.   bash scripts/resolve_cuda_lock.sh [VLLM_VERSION]
set -euo pipefail
cd "$(dirname "$0")/.."
VLLM="${1:-0.33.0}"
PY="${PYTHON:-.venv/bin/python}"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
echo "pyarrow<26" > "$tmp/c.txt"   # the same datasets-safe cap as requirements/constraints.txt
"$PY" -m pip install -q --dry-run --ignore-installed --report "$tmp/report.json" -c "$tmp/c.txt" \
  "vllm==$VLLM" -r requirements/working-set.txt dataclasses-json eindex-callum
"$PY" - "$tmp/report.json" "$VLLM" > "$tmp/lock.txt" <<'PYEOF'
import json, re, sys
report, vllm = json.load(open(sys.argv[1])), sys.argv[2]
pins = {i["metadata"]["name"].lower(): i["metadata"]["version"] for i in report["install"]}
for line in open("requirements/lock.txt"):
    if line.lower().startswith("sae-dashboard=="):
        pins["sae-dashboard"] = line.split("==", 1)[1].strip()
print(f"# Exact versions of the CUDA working set: vllm {vllm} and the torch it requires (resolved by")
print("# scripts/resolve_cuda_lock.sh for CPython 3.11 on linux x86_64; setup.sh uses it where nvidia-smi sees a GPU).")
for name in sorted(pins):
    print(f"{name}=={pins[name]}")
PYEOF
mv "$tmp/lock.txt" requirements/lock-cuda.txt
echo "requirements/lock-cuda.txt: $(grep -c '==' requirements/lock-cuda.txt) pins, $(grep -E '^(torch|vllm)==' requirements/lock-cuda.txt | tr '\n' ' ')"
