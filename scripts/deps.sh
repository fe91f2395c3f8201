#!/usr/bin/env bash
# Installs the Debian 12 packages ferry builds and tests with.
set -euo pipefail
PKGS=(build-essential cmake ninja-build clang libclang-rt-14-dev pkg-config groff-base python3
      libibverbs-dev librdmacm-dev ibverbs-providers rdma-core)
missing=()
for p in "${PKGS[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
$SUDO apt-get update
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
