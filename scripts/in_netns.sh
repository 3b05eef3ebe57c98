#!/usr/bin/env bash
# Run a command in a fresh network namespace that has only the loopback interface (`lo`, up).
# Every Ray run of this repository's tests, benchmarks and demos goes through here: Ray's GCS listens on
# all interfaces, its processes talk through the machine's non-loopback address and it probes a public
# DNS address to find its own IP, so on the host network it would be reachable from outside. Inside this
# namespace there is nothing but 127.0.0.1. Needs root (or CAP_SYS_ADMIN) for `unshare -n`.
#   scripts/in_netns.sh .venv/bin/python benchmarks/ray_scale.py
set -euo pipefail
if [ $# -eq 0 ]; then echo "usage: $0 COMMAND [ARGS...]" >&2; exit 2; fi
if [ "${REASON_IN_NETNS:-}" = 1 ]; then exec "$@"; fi  # already inside one
exec unshare -n -- bash -c 'ip link set lo up && REASON_IN_NETNS=1 exec "$@"' in_netns "$@"
