#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# A/B of keygate binaries: proxy CPU time per request, the binaries alternating round by round so
# that a machine that drifts (a VM's neighbours) drifts for both. Where the side-by-side harness
# compares keygate with nginx and HAProxy, this compares two builds of keygate.
#
#   benches/load/ab.sh ROUNDS LAYOUT MODE BINARY...     # e.g. ab.sh 3 split get old/keygate new/keygate
#
# LAYOUT: split (keygate on CPU 1, wrk and the harness's backend on CPU 0) or onecore (all on CPU 0).
# MODE: get, post (an 81-byte JSON body), deny (an unknown key: 401 with the denial's log line,
# as SPEC asks and the harness's keygate writes it; the lines go to /dev/null), lat (get over one
# connection, the harness's lat_get_ro when the layout is onecore), or h2c (GETs over
# HTTP/2 by prior knowledge: h2load -t1 -c16 -m4, the harness's h2c shape; its mean latency in
# place of the p99). One worker, one full-access key, wrk -t1 -c64 (lat: -c1), 2 s of warm-up then 8 s
# measured; CPU time (user + system) of the gateway from /proc over the requests counted, and
# wrk's p99. Every process it starts is stopped by PID; traffic stays on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 4 ] || { sed -n 2,15p "$0" >&2; exit 2; }
rounds=$1 layout=$2 mode=$3; shift 3
case "$mode" in get|post|deny|lat|h2c) ;; *) echo "MODE: get, post, deny, lat or h2c" >&2; exit 2 ;; esac
conns=64
[ "$mode" != lat ] || conns=1
[ "$mode" != h2c ] || command -v h2load >/dev/null || { echo "h2c needs h2load (apt-get install nghttp2-client)" >&2; exit 1; }
bins=()
for b in "$@"; do bins+=("$(realpath "$b")"); done
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
up=18381 port=18390
# shellcheck source=common.sh
source "$here/common.sh"
taskset -c 0 "$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & pids+=($!)
write_config "$port" "$up" "$((port + 1))" "$([ "$mode" = deny ] && echo info || echo warn)"
key=$(create_key "${bins[0]}" ab full-access)
[ "$mode" != deny ] || key=kg_unknown_unknown_unknown
case "$layout" in split) cpu=1 ;; onecore) cpu=0 ;; *) echo "layout: split or onecore" >&2; exit 2 ;; esac
lua=()
if [ "$mode" = post ]; then
  cat >"$d/post.lua" <<'LUA'
wrk.method = "POST"
wrk.body = '{"points": 5, "member": "m-123", "reason": "purchase", "ref": "abcdefghij"}'
wrk.headers["Content-Type"] = "application/json"
LUA
  lua=(-s "$d/post.lua")
fi
url="http://127.0.0.1:$port/v1/things?x=1"
for r in $(seq 1 "$rounds"); do
  for bin in "${bins[@]}"; do
    (cd "$d" && exec taskset -c "$cpu" "$bin" serve --config keygate.toml >/dev/null 2>&1) & gp=$!
    pids+=("$gp")
    for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
    (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$bin did not start" >&2; exit 1; }
    if [ "$mode" = h2c ]; then
      taskset -c 0 h2load -t1 -c16 -m4 -D 2 -H "x-api-key: $key" "$url" >/dev/null 2>&1
      t0=$(awk '{print $14 + $15}' "/proc/$gp/stat")
      out=$(taskset -c 0 h2load -t1 -c16 -m4 -D 8 -H "x-api-key: $key" "$url" 2>&1)
      t1=$(awk '{print $14 + $15}' "/proc/$gp/stat")
      n=$(echo "$out" | awk '/^requests:/ {print $8}')
      p99="mean $(echo "$out" | awk '/^time for request:/ {print $6}')"
    else
      taskset -c 0 wrk -t1 -c"$conns" -d2s "${lua[@]}" -H "x-api-key: $key" "$url" >/dev/null
      t0=$(awk '{print $14 + $15}' "/proc/$gp/stat")
      out=$(taskset -c 0 wrk -t1 -c"$conns" -d8s --latency "${lua[@]}" -H "x-api-key: $key" "$url")
      t1=$(awk '{print $14 + $15}' "/proc/$gp/stat")
      n=$(echo "$out" | awk '/requests in/ {print $1}')
      p99=$(echo "$out" | awk '$1 == "99%" {print $2}')
    fi
    ticks=$(getconf CLK_TCK)
    echo "round $r $bin $layout $mode: $n requests, $(python3 -c "print(round(($t1 - $t0) * 1e6 / $ticks / $n, 2))") us CPU/request, p99 $p99"
    kill "$gp"; wait "$gp" 2>/dev/null || true
  done
done
