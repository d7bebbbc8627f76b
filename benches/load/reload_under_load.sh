#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Latency of allowed requests while the gateway reloads a big key store, against the same load
# without reloads: does a reload slow requests down?
#
#   benches/load/reload_under_load.sh BINARY [NKEYS] [SECONDS]   # 1000000 keys, 30 s
#
# A store of NKEYS keys (benches/gen_store.py) plus one real key; keygate with one worker, pinned to
# CPU 1 as in the harness (so the reload's thread shares that core with the worker: the worst
# case; PIN=0 lets the gateway's threads use both cores); wrk -t1 -c64 and the harness's backend
# on CPU 0.
# Two wrk runs of SECONDS each, `quiet` then `reloading` (SIGHUP every 5 s, each reload running
# to its end before the next), each after a 3 s warm-up; prints wrk's latency distribution and
# the reloads' durations (a reload still running when the load ends is waited for, up to 2
# minutes). KG_KEEP_LOG=FILE keeps the gateway's log. Needs wrk, taskset and python3. Every
# process it starts is stopped by PID; all traffic stays on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
nkeys="${2:-1000000}"
secs="${3:-30}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
port=18290 ops=18291 up=18281
# shellcheck source=common.sh
source "$here/common.sh"
write_config "$port" "$up" "$ops" info
key=$(create_key "$bin" probe read-only)
python3 "$here/../gen_store.py" "$nkeys" | tail -n +2 >>"$d/keys.toml"
taskset -c 0 "$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & pids+=($!)
if [ "${PIN:-1}" = 1 ]; then cpus=1; else cpus=0,1; fi
(cd "$d" && exec taskset -c "$cpus" "$bin" serve --config keygate.toml 2>"$d/gateway.log") & pids+=($!)
gw=${pids[-1]}
for _ in $(seq 1 600); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
(echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { cat "$d/gateway.log" >&2; exit 1; }
load() {
  taskset -c 0 wrk -t1 -c64 -d3s -H "x-api-key: $key" "http://127.0.0.1:$port/v1/things" >/dev/null
  taskset -c 0 wrk -t1 -c64 -d"${secs}s" --latency -H "x-api-key: $key" "http://127.0.0.1:$port/v1/things"
}
echo "== quiet ($nkeys keys)"
load | grep -E "Latency|50%|75%|90%|99%|Requests/sec|Non-2xx"
echo "== reloading (SIGHUP every 5 s)"
: >"$d/hups"
(
  for _ in $(seq 1 $(( (secs + 3) / 5 ))); do
    sleep 5
    n=$(grep -c "key store loaded" "$d/gateway.log")
    kill -HUP "$gw"
    echo hup >>"$d/hups"
    for _ in $(seq 1 300); do [ "$(grep -c "key store loaded" "$d/gateway.log")" -gt "$n" ] && break; sleep 0.1; done
  done
) & pids+=($!)
load | grep -E "Latency|50%|75%|90%|99%|Requests/sec|Non-2xx"
kill "${pids[-1]}" 2>/dev/null || true
# A reload still running when the load stopped is waited for (up to 2 minutes), so that its
# duration is reported too.
sighups() { grep -c 'cause="sighup"' "$d/gateway.log" || true; }
for _ in $(seq 1 1200); do [ "$(sighups)" -ge "$(wc -l <"$d/hups")" ] && break; sleep 0.1; done
[ -n "${KG_KEEP_LOG:-}" ] && cp "$d/gateway.log" "$KG_KEEP_LOG"
echo "reloads (duration_ms): $(grep -o 'cause="sighup".*duration_ms=[0-9]*' "$d/gateway.log" | grep -o 'duration_ms=[0-9]*' | cut -d= -f2 | tr '\n' ' ')"
