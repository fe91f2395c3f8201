#!/usr/bin/env bash
# Sets ferry up on a fresh Debian 12 machine and runs the main job: build,
# check the CPU engine against ggml's golden results, and measure the hot
# LLM-decode ops against this machine's memory bandwidth.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build
echo "== engine vs ggml CPU backend (194 golden cases)"
./build/tests/test_golden tests/golden | tail -n 2
echo "== decode-shape op benchmark ($(nproc) threads)"
./build/bench/bench_ops --threads "$(nproc)" --quick
