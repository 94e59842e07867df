#!/usr/bin/env bash
# Runs the whole test suite: unit, property, simulation, real-connection and real-process tests, then a
# few seconds of every fuzz target (fuzz/, outside the workspace; docs/FUZZING.md).
set -euo pipefail
cd "$(dirname "$0")/.."
KITH_NEED_NEXTEST=1 scripts/setup.sh
cargo build --locked --workspace --tests
cargo nextest run --locked --workspace --no-fail-fast "$@"
if [ $# -gt 0 ]; then
  echo "test.sh: a filtered run ($*): the fuzz smoke is left out (scripts/fuzz-smoke.sh runs it)"
  exit 0
fi
# The tests are done: the fuzz build may take every core.
CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-$(nproc)}" exec scripts/fuzz-smoke.sh
