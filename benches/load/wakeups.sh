#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# The wake-ups a proxy causes: context switches a request of the backend and of the load
# generator while the proxy (alone on CPU 1) serves them (on CPU 0). A proxy's write that finds
# its reader asleep wakes it, and on a VM that wake-up (an inter-processor interrupt) is charged
# to the writer's CPU time; how often that happens depends on how the proxy groups its writes,
# which neither callgrind nor the proxy's own CPU time shows apart (PERFORMANCE.md, session 10).
#
#   benches/load/wakeups.sh BINARY|nginx|haproxy [get|post|deny|h2c ...]   # default: get post deny h2c
#
# Loads of 6 s (wrk -t1 -c64, or h2load -t1 -c16 -m4 for h2c) against one worker, the harness's
# backend and, for a peer, the harness's config and key index; the context switches (voluntary
# and not, of every thread) are read from /proc over 4 s of it. Prints, per mode, the requests/s,
# the switches a request of the backend, the load generator and the proxy, and the proxy's user
# and system time a request (from /proc/PID/stat, in clock ticks: read them over several runs). Every process it
# starts is stopped by PID; traffic stays on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { sed -n 9,9p "$0" >&2; exit 2; }
case "$1" in nginx|haproxy) bin=$1 ;; *) bin="$(realpath "$1")" ;; esac
shift
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(get post deny h2c)
for m in "${modes[@]}"; do
  case "$m" in get|post|deny|h2c) ;; *) echo "mode: get, post, deny or h2c" >&2; exit 2 ;; esac
done
for tool in wrk h2load; do
  command -v "$tool" >/dev/null || { echo "needs $tool (apt-get install wrk nghttp2-client)" >&2; exit 1; }
done
port=18290 ops=18291 up=18281
# shellcheck source=common.sh
source "$here/common.sh"
taskset -c 0 "$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & backend_pid=$!
pids+=("$backend_pid")
start_proxy "$bin" 1 "$port" "$ops" "$up"

switches() { # PID: context switches of all its threads so far
  cat /proc/"$1"/task/*/status 2>/dev/null \
    | awk '/^(voluntary|nonvoluntary)_ctxt_switches/ {n += $2} END {print n + 0}'
}
cpu_ticks() { # PID: its user and system time so far, in clock ticks
  awk '{print $14, $15}' /proc/"$1"/stat
}
tick=$(getconf CLK_TCK)
for mode in "${modes[@]}"; do
  url="http://127.0.0.1:$port/v1/things?x=1"
  case "$mode" in
    get) load=(wrk -t1 -c64 -d6s -H "x-api-key: $key" "$url") ;;
    post) load=(wrk -t1 -c64 -d6s -s "$d/post.lua" -H "x-api-key: $key" "$url") ;;
    deny) load=(wrk -t1 -c64 -d6s -H "x-api-key: kg_unknown_unknown_unknown" "$url") ;;
    h2c) load=(h2load -t1 -c16 -m4 -D 6 -H "x-api-key: $key" "http://127.0.0.1:$h2port/v1/things?x=1") ;;
  esac
  taskset -c 0 "${load[@]}" >"$d/load.out" 2>&1 & load_pid=$!
  sleep 1
  b0=$(switches "$backend_pid") l0=$(switches "$load_pid") p0=$(switches "$proxy_pid") t0=$(date +%s.%N)
  c0=$(cpu_ticks "$proxy_pid")
  sleep 4
  b1=$(switches "$backend_pid") l1=$(switches "$load_pid") p1=$(switches "$proxy_pid") t1=$(date +%s.%N)
  c1=$(cpu_ticks "$proxy_pid")
  wait "$load_pid"
  rps=$(sed -n -e 's/^Requests\/sec: *\([0-9.]*\).*/\1/p' -e 's/^finished in [0-9.]*s, \([0-9.]*\) req\/s.*/\1/p' "$d/load.out")
  [ -n "$rps" ] || { cat "$d/load.out" >&2; echo "$mode: no result" >&2; exit 1; }
  python3 -c '
import sys
label, rps, t0, t1, b0, b1, l0, l1, p0, p1, c0, c1, tick = sys.argv[1:]
n = float(rps) * (float(t1) - float(t0))
per = lambda a, b: (int(b) - int(a)) / n
(u0, s0), (u1, s1) = c0.split(), c1.split()
us = lambda a, b: per(a, b) * 1e6 / int(tick)
print(f"{label}: {float(rps):.0f} requests/s; context switches a request: "
      f"backend {per(b0, b1):.3f}, load {per(l0, l1):.3f}, proxy {per(p0, p1):.3f}; "
      f"proxy CPU a request: user {us(u0, u1):.2f} us, system {us(s0, s1):.2f} us")
' "$(basename "$bin") $mode" "$rps" "$t0" "$t1" "$b0" "$b1" "$l0" "$l1" "$p0" "$p1" "$c0" "$c1" "$tick"
done
