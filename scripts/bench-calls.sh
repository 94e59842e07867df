#!/usr/bin/env bash
# The call benchmark: kith and baresip side by side on the same speech clips, one run (see
# scripts/bench_calls.py for the method). Installs what it needs from Debian and PyPI, builds kith
# (release), runs both, scores, and prints the table; results in target/bench/calls/.
# Run as root for the baresip half (network namespace + nftables); without root it is skipped and said.
set -euo pipefail
cd "$(dirname "$0")/.."
KITH_NEED_NEXTEST=1 scripts/setup.sh
need=()
for p in baresip-core sox ffmpeg espeak-ng asterisk-core-sounds-en-g722 python3-venv python3-dev nftables iproute2 util-linux pulseaudio pulseaudio-utils libasound2-plugins; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench-calls: installing ${need[*]} from Debian"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
# Python for scoring: numpy, scipy and pesq (ITU-T P.862 reference code, built from source), pinned, in a
# venv outside the repository.
VENV="${KITH_BENCH_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/kith/bench-venv}"
if ! "$VENV/bin/python" -c 'import numpy, scipy, pesq' 2>/dev/null; then
  echo "bench-calls: making the scoring venv in $VENV"
  /usr/bin/python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q numpy==2.4.6 scipy==1.17.1 pesq==0.0.4
fi
cargo build --release -p kith
cargo build --release -p kith-media --examples
exec "$VENV/bin/python" scripts/bench_calls.py all --kith target/release/kith "$@"
