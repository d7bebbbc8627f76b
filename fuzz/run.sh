#!/usr/bin/env bash
# Runs every fuzz target for a bounded time (SECONDS_PER_TARGET, default 60) with libFuzzer
# through cargo-fuzz, starting from the seeds in fuzz/corpus/. Not part of CI.
#   fuzz/run.sh                 # all four targets, 60 s each
#   SECONDS_PER_TARGET=600 fuzz/run.sh policy
# cargo-fuzz needs nightly flags (-Z sanitizer); RUSTC_BOOTSTRAP=1 lets the one stable
# toolchain on these machines accept them. A crash is saved under fuzz/artifacts/<target>/:
# turn it into a regression test next to the code it broke.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
cd "$here/.."
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(token store config policy)
for t in "${targets[@]}"; do
  echo "== fuzz $t for ${SECONDS_PER_TARGET:-60} s"
  # Fuzz into a scratch copy so the committed seeds stay small.
  work="$(mktemp -d)"
  cp -r "$here/corpus/$t/." "$work/"
  RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" "$work" -- \
    -max_total_time="${SECONDS_PER_TARGET:-60}" -print_final_stats=1 2>&1 | grep -E "^(#|Done|stat::number_of_executed_units|==)" | tail -4
  rm -rf "$work"
done
