#!/usr/bin/env bash
# Regenerates the speech clips the call tests send (crates/kith/tests/data/speech-{a,b}.wav): two Harvard
# sentences from the espeak-ng formant synthesiser, resampled to 48 kHz mono 16-bit with sox, 3 s each plus
# 0.2 s of silence at both ends. The files are committed; this script only documents where they come from.
# Needs: apt-get install espeak-ng sox
set -euo pipefail
out="$(cd "$(dirname "$0")/.." && pwd)/crates/kith/tests/data"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
espeak-ng -v en-us -s 150 -w "$tmp/a.wav" "The birch canoe slid on the smooth planks. Glue the sheet to the dark blue background."
espeak-ng -v en-us+f3 -s 150 -w "$tmp/b.wav" "Rice is often served in round bowls. The juice of lemons makes fine punch."
for x in a b; do
  sox -D -R "$tmp/$x.wav" -r 48000 -c 1 -b 16 "$out/speech-$x.wav" rate -v 48000 trim 0 3.0 pad 0.2 0.2
done
echo "wrote $out/speech-a.wav $out/speech-b.wav"
