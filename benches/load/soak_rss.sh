#!/usr/bin/env bash
# shellcheck source-path=SCRIPTDIR
# Does the gateway's memory stay flat over many requests? RSS of one keygate process, sampled
# after every 10 s of load, until REQUESTS requests have been answered.
#
#   benches/load/soak_rss.sh BINARY [REQUESTS]   # 10000000
#
# keygate with one worker, the access log on (to /dev/null) and denials logged; wrk -t1 -c64 and
# the harness's backend on CPU 0, the gateway on CPU 1. The load mixes, in turn, an allowed GET,
# an allowed POST with a small JSON body and a GET with an unknown key (401); each 10 s round is
# a new wrk run, so 64 new client connections every round. Prints, per round, the requests
# answered so far, the round's non-2xx count and the RSS (VmRSS) after it. Needs wrk, taskset
# and python3. Every process it starts is stopped by PID; all traffic stays on 127.0.0.1.
set -euo pipefail
[ $# -ge 1 ] || { echo "usage: $0 BINARY [REQUESTS]" >&2; exit 2; }
here="$(cd "$(dirname "$0")" && pwd)"
bin="$(realpath "$1")"
want="${2:-10000000}"
command -v wrk >/dev/null || { echo "needs wrk (apt-get install wrk)" >&2; exit 1; }
port=18390 ops=18391 up=18381
# shellcheck source=common.sh
source "$here/common.sh"
write_config "$port" "$up" "$ops" info
sed -i 's/^level = "info"/level = "info"\naccess_log = true/' "$d/keygate.toml"
key=$(create_key "$bin" soak full-access)
taskset -c 0 "$backend" "127.0.0.1:$up" 1 >/dev/null 2>&1 & pids+=($!)
(cd "$d" && exec taskset -c 1 "$bin" serve --config keygate.toml 2>/dev/null) & pids+=($!)
gw=${pids[-1]}
for _ in $(seq 1 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
(echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "the gateway did not start" >&2; exit 1; }
cat >"$d/mix.lua" <<'LUA'
local key = os.getenv("KG_SOAK_KEY")
local body = '{"points": 5, "member": "m-123", "reason": "purchase", "ref": "abc"}'
local n = 0
request = function()
  n = n + 1
  local k = n % 3
  if k == 0 then
    return wrk.format("GET", "/v1/things?page=2", { ["x-api-key"] = key })
  elseif k == 1 then
    return wrk.format("POST", "/v1/things", { ["x-api-key"] = key, ["content-type"] = "application/json" }, body)
  end
  return wrk.format("GET", "/v1/things", { ["x-api-key"] = "kg_unknown_unknown_unknown" })
end
LUA
rss() { awk '/^VmRSS:/ {print $2}' "/proc/$gw/status"; }
echo "start: RSS $(rss) KiB"
total=0 round=0
printf '%6s %12s %10s %10s\n' round requests non-2xx "RSS KiB"
while [ "$total" -lt "$want" ]; do
  round=$((round + 1))
  out=$(KG_SOAK_KEY=$key taskset -c 0 wrk -t1 -c64 -d10s -s "$d/mix.lua" "http://127.0.0.1:$port/")
  n=$(awk '/requests in/ {print $1}' <<<"$out")
  bad=$(awk '/Non-2xx/ {print $NF}' <<<"$out")
  # A gateway that died (or a round with nothing answered) ends the run.
  kill -0 "$gw" 2>/dev/null || { echo "the gateway exited after $total requests" >&2; exit 1; }
  [ "${n:-0}" -gt 0 ] || { echo "round $round: no request answered" >&2; echo "$out" >&2; exit 1; }
  total=$((total + n))
  now_rss=$(rss)
  printf '%6d %12d %10s %10s\n' "$round" "$total" "${bad:-0}" "$now_rss"
done
