# shellcheck shell=bash
# shellcheck disable=SC2154  # $here is set by the script that sources this file
# Sourced by callgrind.sh, ab.sh and reload_under_load.sh (which set $here to this folder): a
# scratch folder $d removed on exit, with every PID in $pids stopped; the harness's backend
# ($backend, built if missing); a one-worker keygate config; new keys.
backend="$here/backend/target/release/kg-perf-backend"
[ -x "$backend" ] || (cd "$here/backend" && cargo build --release --quiet)
d=$(mktemp -d)
pids=()
# Waits for each process before removing $d: a gateway writes keys.usage there as it stops.
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$d"
}
trap cleanup EXIT

# write_config PORT UPSTREAM_PORT OPS_PORT LOG_LEVEL: $d/keygate.toml, one worker, store keys.toml.
write_config() {
  cat >"$d/keygate.toml" <<TOML
[server]
listen = "127.0.0.1:$1"
workers = 1
[upstream]
url = "http://127.0.0.1:$2"
[keys]
store = "keys.toml"
[metrics]
listen = "127.0.0.1:$3"
[log]
level = "$4"
TOML
}

# create_key BINARY NAME ACCESS [MORE keys create ARGS]: adds a key to $d's store, prints it.
create_key() {
  local bin=$1 name=$2 access=$3
  shift 3
  "$bin" keys create --config "$d/keygate.toml" --name "$name" --access "$access" "$@" --json \
    | python3 -c 'import json, sys; print(json.load(sys.stdin)["key"])'
}
