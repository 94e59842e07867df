#!/usr/bin/env bash
# Installs what building and testing kith needs on Debian 12, if it is missing. Safe to run again.
set -euo pipefail

need_apt=()
command -v cc >/dev/null 2>&1 || need_apt+=(build-essential)
command -v pkg-config >/dev/null 2>&1 || need_apt+=(pkg-config)
command -v git >/dev/null 2>&1 || need_apt+=(git)
# libopus is built from its bundled source (one pinned version for every user): that needs cmake.
command -v cmake >/dev/null 2>&1 || need_apt+=(cmake)
# The store is encrypted at rest by SQLCipher (bundled), which takes its AES and HMAC from OpenSSL's
# libcrypto (only the crypto library: kith's TLS is rustls).
pkg-config --exists libcrypto 2>/dev/null || need_apt+=(libssl-dev)
# Sound cards through cpal use ALSA's headers and library.
pkg-config --exists alsa 2>/dev/null || need_apt+=(libasound2-dev)
if [ "${KITH_NEED_NEXTEST:-0}" = 1 ]; then
  # The NAT lab test builds networks in namespaces: iproute2 and nftables.
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
  command -v nft >/dev/null 2>&1 || need_apt+=(nftables)
  # A call through (virtual) sound cards runs against a PulseAudio server with null sinks.
  command -v pulseaudio >/dev/null 2>&1 || need_apt+=(pulseaudio)
  command -v parecord >/dev/null 2>&1 || need_apt+=(pulseaudio-utils)
fi
if [ "${KITH_NEED_NEXTEST:-0}" = 1 ] || [ "${KITH_WITH_SIP:-0}" = 1 ]; then
  # The gateway's tests and `kith demo`'s organization run against real SIP peers: Kamailio (registrar
  # and proxy) and baresip (the organization's phones), in a network namespace of their own, on loopback.
  command -v kamailio >/dev/null 2>&1 || need_apt+=(kamailio)
  command -v baresip >/dev/null 2>&1 || need_apt+=(baresip-core)
  command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
  command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
fi
if [ "${KITH_NEED_NEXTEST:-0}" = 1 ]; then
  # A second SIP implementation for the gateway's tests: linphonec (liblinphone's console client).
  command -v linphonec >/dev/null 2>&1 || need_apt+=(linphone-cli)
  # Independent DNS implementations for one identity test: Knot DNS signs, Unbound validates.
  command -v knotd >/dev/null 2>&1 || need_apt+=(knot)
  command -v kdig >/dev/null 2>&1 || need_apt+=(knot-dnsutils)
  command -v unbound >/dev/null 2>&1 || need_apt+=(unbound)
fi
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "setup: installing ${need_apt[*]} from Debian"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  # Servers among them (Kamailio, Knot, Unbound) must not start as system services listening on every interface:
  # a policy-rc.d refuses their start during the installation (one already there is left alone).
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
    $SUDO chmod +x "$policy"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}"
  if [ -n "$policy" ]; then
    $SUDO rm -f "$policy"
  fi
  if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    for unit in kamailio knot unbound; do
      $SUDO systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
  fi
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: no Rust toolchain found. Install one (1.91 or newer) with rustup, then run this again." >&2
  exit 2
fi

if [ "${KITH_NEED_NEXTEST:-0}" = 1 ] && ! cargo nextest --version >/dev/null 2>&1; then
  echo "setup: installing cargo-nextest from crates.io"
  cargo install --locked cargo-nextest
fi
