#!/usr/bin/env bash
# Run a command in a fresh network namespace that has only the loopback interface (`lo`, up), and a
# fresh PID namespace. Every Ray run of this repository's tests, benchmarks and demos goes through here:
# Ray's GCS listens on all interfaces, its processes reach each other through the machine's non-loopback
# address and it probes a public DNS address to find its own IP, so on the host network it would be
# reachable from outside. Inside this namespace there is nothing but 127.0.0.1. The PID namespace makes
# cleanup certain: when the command ends (or this script is killed: --kill-child), every process started
# inside (Ray's head, raylets, workers) is killed with it, and `ray stop` inside sees only its own.
# Needs root (or CAP_SYS_ADMIN) for `unshare`.
#   scripts/in_netns.sh .venv/bin/python benchmarks/ray_scale.py
set -euo pipefail
if [ $# -eq 0 ]; then echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; fi
if [ "${REASON_IN_NETNS:-}" = 1 ]; then exec "$@"; fi  # already inside one
# bash stays PID 1 of the namespace (it reaps what Ray orphans) and passes the command's exit code on.
exec unshare --net --pid --fork --mount-proc --kill-child -- \
  bash -c 'ip link set lo up || exit 1; REASON_IN_NETNS=1 "$@"; exit $?' in_netns "$@"
