#!/usr/bin/env bash
# Runs the whole test suite: unit, property, simulation, real-connection and real-process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
KITH_NEED_NEXTEST=1 scripts/setup.sh
cargo build --locked --workspace --tests
exec cargo nextest run --locked --workspace --no-fail-fast "$@"
