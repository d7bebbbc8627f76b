# shellcheck shell=bash
# shellcheck disable=SC2154  # $here is set by the script that sources this file
# Sourced by callgrind.sh, ab.sh, wakeups.sh, syscalls.sh and reload_under_load.sh (which set
# $here to this folder): a scratch folder $d removed on exit, with every PID in $pids stopped; the
# harness's backend ($backend, built if missing); a one-worker keygate config; new keys; a peer's
# config; a proxy (keygate or a peer) started and ready.
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

# peer_setup nginx|haproxy PORT H2_PORT UPSTREAM_PORT: the harness's config for that peer (conf/,
# one worker or thread; nginx without its master process, so that one process does all the work)
# and the harness's key index (gen_keys.py, 10,000 keys) in $d. Sets $key (a full-access key) and
# $peer_cmd (the command that runs the peer in the foreground).
# shellcheck disable=SC2034  # key and peer_cmd are the caller's
peer_setup() {
  local peer=$1 port=$2 h2port=$3 up=$4 ext=cfg
  command -v "$peer" >/dev/null || { echo "needs $peer (apt-get install $peer)" >&2; exit 1; }
  python3 "$here/gen_keys.py" "$d" 10000
  # shellcheck disable=SC1091
  . "$d/sample.env"
  key=$KEY_FA
  mkdir -p "$d/nginx-tmp"
  [ "$peer" != nginx ] || ext=conf
  sed -e "s|@RUN@|$d|g" -e "s|@PORT@|$port|g" -e "s|@H2PORT@|$h2port|g" -e "s|@BACKEND@|127.0.0.1:$up|g" \
    -e 's/^master_process on;/master_process off;/' "$here/conf/$peer.$ext.in" >"$d/$peer.conf"
  case "$peer" in
    nginx) peer_cmd=(nginx -p "$d" -e "$d/nginx-error.log" -c "$d/nginx.conf") ;;
    haproxy) peer_cmd=(haproxy -db -f "$d/haproxy.conf") ;;
  esac
}

# start_proxy BINARY|nginx|haproxy CPU PORT OPS_PORT UPSTREAM_PORT: the proxy on CPU, in the
# foreground of a subshell in $d, ready to serve (for a peer, its harness config and key index;
# for keygate, a one-worker config at log level info, so that each refusal writes its line as
# SPEC asks, and a new full-access key). Sets $proxy_pid, $key and $h2port (where h2c is
# served); writes $d/post.lua, wrk's POST of the harness's JSON body.
# shellcheck disable=SC2034  # key and h2port are the caller's
start_proxy() {
  local what=$1 cpu=$2 port=$3 ops=$4 up=$5 cmd
  case "$what" in
    nginx|haproxy)
      peer_setup "$what" "$port" "$ops" "$up"
      cmd=("${peer_cmd[@]}")
      h2port=$ops
      ;;
    *)
      write_config "$port" "$up" "$ops" info
      key=$(create_key "$what" bench full-access)
      cmd=("$what" serve --config "$d/keygate.toml")
      h2port=$port
      ;;
  esac
  (cd "$d" && exec taskset -c "$cpu" "${cmd[@]}" >/dev/null 2>&1) & proxy_pid=$!
  pids+=("$proxy_pid")
  for _ in $(seq 1 100); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null || { echo "$what did not start" >&2; exit 1; }
  printf 'wrk.method = "POST"\nwrk.body = %s\nwrk.headers["Content-Type"] = "application/json"\n' \
    "'{\"points\": 5, \"member\": \"m-123\", \"reason\": \"purchase\", \"ref\": \"abcdefghij\"}'" >"$d/post.lua"
}
