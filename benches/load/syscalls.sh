#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# What a request costs a proxy in the kernel, counted the same way for keygate, nginx and HAProxy:
# its system calls by kind and its context switches (perf's syscall tracepoints and software
# counters, one load), then its CPU time split into kernel and user (perf record -e cpu-clock, a
# second load, so that the tracepoints do not slow what is timed). About 70 % of a refusal's time
# is the kernel's (PERFORMANCE.md, session 12): this shows whether a proxy's kernel share differs
# because it makes more calls, or only its user share differs.
#
#   benches/load/syscalls.sh BINARY|nginx|haproxy [get|post|deny|h2c|lat ...]   # default: get deny h2c
#
# One worker, the harness's backend, and for a peer the harness's config and key index (as
# wakeups.sh). Loads of 5 s: wrk -t1 -c64 (lat: -c1), h2load -t1 -c16 -m4 for h2c. LAYOUT=split
# (default: the proxy alone on CPU 1, the load and the backend on CPU 0) or onecore (all on CPU 0).
# Counts are over the whole load, divided by the requests the load generator counted. Needs perf
# (apt-get install linux-perf) with tracepoints readable. Every process it starts is stopped by
# PID; traffic stays on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n 9,9p "$0" >&2; exit 2; }
case "$1" in nginx|haproxy) bin=$1 ;; *) bin="$(realpath "$1")" ;; esac
shift
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(get deny h2c)
for m in "${modes[@]}"; do
  case "$m" in get|post|deny|h2c|lat) ;; *) echo "mode: get, post, deny, h2c or lat" >&2; exit 2 ;; esac
done
case "${LAYOUT:-split}" in split) cpu=1 ;; onecore) cpu=0 ;; *) echo "LAYOUT: split or onecore" >&2; exit 2 ;; esac
for tool in wrk h2load perf; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk nghttp2-client linux-perf)" >&2; exit 1; }
done
perf stat -e raw_syscalls:sys_enter true >/dev/null 2>&1 \
  || { echo "perf cannot read the syscall tracepoints here (run as root, or lower kernel.perf_event_paranoid)" >&2; exit 1; }
port=18790 ops=18791 up=18781
# shellcheck source=common.sh
source "$here/common.sh"
taskset -c 0 "$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & pids+=($!)
start_proxy "$bin" "$cpu" "$port" "$ops" "$up"

events=raw_syscalls:sys_enter
for s in recvfrom read writev sendto write epoll_wait futex; do events+=",syscalls:sys_enter_$s"; done
events+=",context-switches"

# load MODE: runs the mode's load to its end; prints the requests it counted.
load() {
  local url="http://127.0.0.1:$port/v1/things?x=1" gen
  case "$1" in
    get) gen=(wrk -t1 -c64 -d5s -H "x-api-key: $key" "$url") ;;
    post) gen=(wrk -t1 -c64 -d5s -s "$d/post.lua" -H "x-api-key: $key" "$url") ;;
    deny) gen=(wrk -t1 -c64 -d5s -H "x-api-key: kg_unknown_unknown_unknown" "$url") ;;
    lat) gen=(wrk -t1 -c1 -d5s -H "x-api-key: $key" "$url") ;;
    h2c) gen=(h2load -t1 -c16 -m4 -D 5 -H "x-api-key: $key" "http://127.0.0.1:$h2port/v1/things?x=1") ;;
  esac
  taskset -c 0 "${gen[@]}" >"$d/load.out" 2>&1
  awk '/requests in/ {print $1} /^requests:/ {print $8}' "$d/load.out"
}

for mode in "${modes[@]}"; do
  perf stat -x, -e "$events" -p "$proxy_pid" -o "$d/stat.csv" & perf_pid=$!
  sleep 0.3
  n_stat=$(load "$mode")
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  perf record -q -e cpu-clock -F 4999 -p "$proxy_pid" -o "$d/perf.data" 2>/dev/null & perf_pid=$!
  sleep 0.3
  n_time=$(load "$mode")
  kill -INT "$perf_pid"; wait "$perf_pid" 2>/dev/null || true
  perf report -i "$d/perf.data" --no-children -g none --sort dso -F sample,dso -t, 2>/dev/null \
    | grep -v '^#' | grep -v '^$' >"$d/dso.csv" || true
  python3 - "$(basename "$bin") $mode" "$n_stat" "$d/stat.csv" "$n_time" "$d/dso.csv" <<'PY'
import sys
label, n_stat, stat, n_time, dso = sys.argv[1:]
n_stat, n_time = int(n_stat), int(n_time)
counts = {}
for line in open(stat):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        counts[f[2].split(":")[-1].replace("sys_enter_", "")] = float(f[0]) / n_stat
total = counts.pop("sys_enter", 0.0)
switches = counts.pop("context-switches", 0.0)
named = " ".join(f"{k} {v:.3f}" for k, v in counts.items() if v >= 0.0005)
kernel = user = 0.0
for line in open(dso):
    f = [x.strip() for x in line.split(",")]
    if len(f) >= 2 and f[0].isdigit():
        us = int(f[0]) / 4999 * 1e6 / n_time
        if "kernel" in f[1]:
            kernel += us
        else:
            user += us
print(f"{label}: system calls a request {total:.3f} ({named}; other {total - sum(counts.values()):.3f}); "
      f"context switches {switches:.3f}; CPU a request {kernel + user:.2f} us: kernel {kernel:.2f}, user {user:.2f}")
PY
done
