#!/usr/bin/env bash
# Builds every fuzz target of fuzz/ and runs each for a few seconds (KITH_FUZZ_SECS, default 5) from its
# committed seeds (fuzz/seeds/<target>); fails if any target crashes, panics, leaks, times out or runs out
# of memory. A smoke test for CI, not a fuzzing campaign: docs/FUZZING.md has the long runs.
#
# Needs cargo-fuzz (installed here from crates.io if missing, pinned) and a nightly toolchain
# (`cargo +nightly`) if there is one: the targets are then built with AddressSanitizer (cargo-fuzz's
# default), which needs nightly rustc (-Zsanitizer). Without nightly they are built on stable with
# `--sanitizer none`: cargo-fuzz then passes rustc only stable flags (-Cpasses=sancov-module,
# -Cllvm-args=..., --cfg fuzzing; checked with cargo-fuzz 0.13.2 and rustc 1.95), so no RUSTC_BOOTSTRAP
# is needed. Panics, failed invariants, timeouts and running out of memory are found either way; only
# memory errors in unsafe code (C libraries, vendored crates) need the sanitizer. Builds use one job
# (CARGO_BUILD_JOBS, default 1), so that a second core stays free for whatever else runs.
#
# Environment: KITH_FUZZ_SECS (seconds per target), KITH_FUZZ_TARGETS (space-separated subset).
set -euo pipefail

cd "$(dirname "$0")/../fuzz"

CARGO_FUZZ_VERSION=0.13.2
SECS=${KITH_FUZZ_SECS:-5}
export CARGO_BUILD_JOBS=${CARGO_BUILD_JOBS:-1}

if ! cargo fuzz --version 2>/dev/null | grep -q "$CARGO_FUZZ_VERSION"; then
  echo "fuzz-smoke: installing cargo-fuzz $CARGO_FUZZ_VERSION from crates.io"
  cargo install --locked cargo-fuzz --version "$CARGO_FUZZ_VERSION"
fi

if cargo +nightly --version >/dev/null 2>&1; then
  fuzz=(cargo +nightly fuzz)
  build_flags=()
else
  echo "fuzz-smoke: no nightly toolchain; building on stable without a sanitizer"
  fuzz=(cargo fuzz)
  build_flags=(--sanitizer none)
fi

targets=${KITH_FUZZ_TARGETS:-$("${fuzz[@]}" list)}

start=$(date +%s)
"${fuzz[@]}" build "${build_flags[@]}"
echo "fuzz-smoke: built in $(($(date +%s) - start)) s"

failed=()
for t in $targets; do
  mkdir -p "corpus/$t" "seeds/$t"
  echo "fuzz-smoke: $t for ${SECS} s"
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: libFuzzer's default (2 GB).
  if ! "${fuzz[@]}" run "${build_flags[@]}" "$t" "corpus/$t" "seeds/$t" -- \
    -max_total_time="$SECS" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 \
    >"target/smoke-$t.log" 2>&1; then
    failed+=("$t")
    tail -n 40 "target/smoke-$t.log"
  else
    grep -E '^stat::(number_of_executed_units|peak_rss_mb)|^#[0-9]+.*DONE' "target/smoke-$t.log" || true
  fi
done

echo "fuzz-smoke: done in $(($(date +%s) - start)) s"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz-smoke: FAILED: ${failed[*]} (crash inputs in fuzz/artifacts/<target>/, logs in fuzz/target/smoke-<target>.log)" >&2
  exit 1
fi
echo "fuzz-smoke: all targets ran without a crash"
