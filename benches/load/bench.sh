#!/usr/bin/env bash
# keygate's load benchmark, one command on a fresh machine:
#
#   benches/load/bench.sh            # keygate vs nginx vs HAProxy vs direct, one run
#   REPEAT=3 benches/load/bench.sh   # three interleaved rounds, medians in the table
#
# It installs what is missing (nginx, haproxy, wrk, h2load from Debian's packages), builds
# keygate in release mode, and runs run.sh (the side-by-side harness beside this script) with
# keygate in its gateway slot: the same 10,000-key policy in every proxy, one worker each, the
# proxy alone on CPU 1, wrk and the backend on CPU 0, HTTP/2 (h2c) with h2load as well.
# Every process it starts is stopped by PID on exit; all traffic stays on 127.0.0.1.
# Any run.sh variable can be set (DURATION, WORKLOADS, TARGETS, ...): see run.sh's header.
# KG_BENCH_LIMIT=1000000/s gives every key a rate limit it stays under (each request pays the
# limit check); KG_BENCH_SHARED=redis://127.0.0.1:6379 shares it (see keygate-slot.sh).
# KG_BENCH_LOG=warn leaves out the line each refusal logs (the peers' configs log none).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

missing=()
for tool in nginx haproxy wrk h2load; do command -v "$tool" >/dev/null || missing+=("$tool"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "# installing: nginx haproxy wrk nghttp2-client (for ${missing[*]})" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx haproxy wrk nghttp2-client >/dev/null
  # Debian starts the packaged services; the benchmark runs its own instances.
  systemctl stop nginx haproxy 2>/dev/null || service nginx stop 2>/dev/null || true
  pkill -x nginx 2>/dev/null || true
fi

# KEYGATE_BIN=path runs that binary (an older build, to compare) instead of building this tree.
if [ -z "${KEYGATE_BIN:-}" ]; then
  (cd "$repo" && cargo build --release --quiet)
  KEYGATE_BIN="$repo/target/release/keygate"
fi
export KEYGATE_BIN
export GATEWAY_NAME="${GATEWAY_NAME:-keygate}"
export GATEWAY_PORT="${GATEWAY_PORT:-18090}"
# keygate serves h2c (prior knowledge) on its one port.
export GATEWAY_H2_PORT="${GATEWAY_H2_PORT:-$GATEWAY_PORT}"
export GATEWAY_CMD="${GATEWAY_CMD:-$here/keygate-slot.sh}"
export H2="${H2:-1}"
exec "$here/run.sh" "$@"
