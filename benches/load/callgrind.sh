#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Instructions per request of a keygate binary, counted by callgrind: repeatable to about 1% on
# this machine whatever else runs, where wall-clock figures move by 10-20% between runs.
#
#   benches/load/callgrind.sh BINARY [get|get64|post|deny|denylog|limited|shared|h2c ...]   # default: get post deny
#   benches/load/callgrind.sh nginx|haproxy [get|get64|post|deny|h2c ...]
#
# deny runs with log level warn (no denial line), denylog with info: the line each denial logs.
# get64: GETs on 64 kept-alive connections, one request in flight on each (all 64 sent, then all 64
# answers read), so that the gateway goes round its connections as under wrk -c64; with
# --cache-sim=yes it shows what a connection's state costs when it is no longer in the caches.
# limited: get with a key under its rate limit (1000000/s), so every request pays the limit check;
# shared: the same with the limit shared through Redis ($KEYGATE_BENCH_REDIS, default
# redis://127.0.0.1:6379; the sync task's work in the background is counted too).
# h2c: allowed GETs over HTTP/2 without TLS (prior knowledge), sent by h2load on one connection
# with 4 streams in flight, the shape of each of the harness's 16 h2c connections (needs h2load,
# apt-get install nghttp2-client).
#
# One worker, one kept-alive connection, the harness's backend (built if missing) on 127.0.0.1.
# `nginx` or `haproxy` instead of a binary counts that peer, with the harness's config for it
# (conf/, one worker or thread, nginx without its master process so that one process does all the
# work) and the harness's key index (gen_keys.py, 10,000 keys); its denials log nothing either.
# Each mode runs the gateway under callgrind twice, with 300 and 1,300 requests, and prints
# (I(1300) - I(300)) / 1000, so that start-up and shutdown cancel out. Needs valgrind and python3.
# KG_CALLGRIND_KEEP=DIR keeps each run's callgrind file there (for callgrind_annotate);
# KG_CALLGRIND_ARGS passes more options to valgrind (--cache-sim=yes: the cache misses, per
# request, are then printed after the instructions, in callgrind's event order).
# Every process it starts is stopped by PID; all traffic stays on 127.0.0.1.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
[ $# -ge 1 ] || { echo "usage: $0 BINARY|nginx|haproxy [MODE...]" >&2; exit 2; }
peer=""
case "$1" in nginx|haproxy) peer=$1; bin=$1 ;; *) bin="$(realpath "$1")" ;; esac
shift
modes=("$@"); [ ${#modes[@]} -gt 0 ] || modes=(get post deny)
if [ -n "$peer" ]; then
  for m in "${modes[@]}"; do
    case "$m" in get|get64|post|deny|h2c) ;; *) echo "$peer: mode $m is keygate's only (get, get64, post, deny, h2c)" >&2; exit 2 ;; esac
  done
fi
command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install valgrind)" >&2; exit 1; }
for m in "${modes[@]}"; do
  [ "$m" != h2c ] || command -v h2load >/dev/null || { echo "h2c needs h2load (apt-get install nghttp2-client)" >&2; exit 1; }
done
port=18190 ops=18191 up=18181
# shellcheck source=common.sh
source "$here/common.sh"
"$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & pids+=($!)
if [ -n "$peer" ]; then
  peer_setup "$peer" "$port" "$ops" "$up"
else
  write_config "$port" "$up" "$ops" warn
  key=$(create_key "$bin" callgrind full-access)
  limkey=$(create_key "$bin" limited full-access --rate-limit 1000000/s)
  cp "$d/keygate.toml" "$d/keygate-limited.toml"
  cp "$d/keygate.toml" "$d/keygate-shared.toml"
  sed 's/^level = "warn"/level = "info"/' "$d/keygate.toml" >"$d/keygate-denylog.toml"
  printf '[limits]\nshared = "%s"\nshared_prefix = "kgcallgrind%s"\n' \
    "${KEYGATE_BENCH_REDIS:-redis://127.0.0.1:6379}" "$$" >>"$d/keygate-shared.toml"
fi
cat >"$d/requests.py" <<'PY'
import http.client, sys
port, n, mode, key = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
if mode == "get64":
    # 64 connections, each with one request in flight: the gateway serves
    # them in turn, as under wrk -c64, each connection's state cold again.
    conns = [http.client.HTTPConnection("127.0.0.1", port) for _ in range(64)]
    left = n
    while left > 0:
        batch = conns[:min(left, 64)]
        for c in batch:
            c.request("GET", "/v1/things?x=1", headers={"X-Api-Key": key})
        for c in batch:
            r = c.getresponse(); r.read()
            assert r.status == 200, r.status
        left -= len(batch)
    sys.exit(0)
c = http.client.HTTPConnection("127.0.0.1", port)
for _ in range(n):
    if mode == "post":
        c.request("POST", "/v1/things?x=1", body=b'{"points": 5, "member": "m-123", "reason": "purchase", "ref": "abc"}',
                  headers={"X-Api-Key": key, "Content-Type": "application/json"})
    else:
        c.request("GET", "/v1/things?x=1", headers={"X-Api-Key": "kg_unknown_unknown_unknown" if mode.startswith("deny") else key})
    r = c.getresponse(); r.read()
    assert r.status == (401 if mode.startswith("deny") else 200), r.status
PY
total() { # mode n -> instructions
  local config="$d/keygate.toml" k="$key"
  case "$1" in
    limited|shared) config="$d/keygate-$1.toml"; k="$limkey" ;;
    denylog) config="$d/keygate-denylog.toml" ;;
  esac
  local cmd=("$bin" serve --config "$config")
  [ -z "$peer" ] || cmd=("${peer_cmd[@]}")
  # shellcheck disable=SC2086  # KG_CALLGRIND_ARGS: more valgrind options, split on spaces
  (cd "$d" && exec valgrind --tool=callgrind ${KG_CALLGRIND_ARGS:-} --callgrind-out-file="$d/cg.$2" "${cmd[@]}" 2>/dev/null) &
  local pid=$!; pids+=("$pid")
  for _ in $(seq 1 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
  if [ "$1" = h2c ]; then
    # keygate tells h2c from HTTP/1.1 on its one port; the peers take it on their h2c port.
    local h2port=$port
    [ -z "$peer" ] || { h2port=$ops; for _ in $(seq 1 300); do (echo >"/dev/tcp/127.0.0.1/$h2port") 2>/dev/null && break; sleep 0.1; done; }
    local out
    out=$(h2load -n "$2" -c1 -m4 -H "x-api-key: $k" "http://127.0.0.1:$h2port/v1/things?x=1" 2>&1)
    grep -q "status codes: $2 2xx" <<<"$out" || { echo "h2load: not $2 answers of 2xx:" >&2; echo "$out" >&2; exit 1; }
  else
    python3 "$d/requests.py" "$port" "$2" "$1" "$k"
  fi
  # nginx's graceful stop is QUIT (TERM is its fast one); both end with callgrind's totals.
  kill "-$([ "$peer" = nginx ] && echo QUIT || echo TERM)" "$pid"; wait "$pid" || true
  # Reaped: not the cleanup's to signal (the number may be another process's by then).
  local kept=() p
  for p in "${pids[@]}"; do [ "$p" = "$pid" ] || kept+=("$p"); done
  pids=("${kept[@]}")
  [ -z "${KG_CALLGRIND_KEEP:-}" ] || cp "$d/cg.$2" "$KG_CALLGRIND_KEEP/$(basename "$bin").$1.$2.callgrind"
  awk '/^events:/ {sub(/^events: /, ""); ev=$0} /^(summary|totals):/ {sub(/^[a-z]+: /, ""); print ev "|" $0; exit}' "$d/cg.$2"
}
for mode in "${modes[@]}"; do
  a=$(total "$mode" 300); b=$(total "$mode" 1300)
  # Every event's per-request difference; the first is the instruction count.
  python3 - "$(basename "$bin") $mode" "$a" "$b" <<'PY'
import sys
label, a, b = sys.argv[1:]
names, a = a.split("|"); _, b = b.split("|")
# callgrind leaves trailing zero counts out of its totals line.
a, b = a.split(), b.split()
width = len(names.split())
a, b = a + ["0"] * (width - len(a)), b + ["0"] * (width - len(b))
per = [(int(y) - int(x)) // 1000 for x, y in zip(a, b)]
rest = "".join(f", {n} {v}" for n, v in zip(names.split()[1:], per[1:]))
print(f"{label} {per[0]} instructions/request{rest}")
PY
done
