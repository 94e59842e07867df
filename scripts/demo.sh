#!/usr/bin/env bash
# Builds kith (release) and runs `kith demo`: three nodes on loopback, real cards, messages and a crash.
set -euo pipefail
cd "$(dirname "$0")/.."
KITH_WITH_SIP=1 scripts/setup.sh
cargo build --release --locked -p kith
exec target/release/kith demo "$@"
