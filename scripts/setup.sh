#!/usr/bin/env bash
# Sets ferry up on a fresh Debian 12 machine and runs the main job: build,
# check the CPU engine against ggml's golden results, benchmark the hot
# LLM-decode ops against this machine's memory bandwidth, then start
# `ferry serve` on loopback and measure RPC latency and bandwidth against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build
echo "== engine vs ggml CPU backend (194 golden cases)"
./build/tests/test_golden tests/golden | tail -n 2
echo "== decode-shape op benchmark ($(nproc) threads)"
./build/bench/bench_ops --threads "$(nproc)" --quick
echo "== ferry serve on 127.0.0.1:${FERRY_DEMO_PORT:=50152}, measured by ferry bench rpc"
./build/ferry serve -H 127.0.0.1 -p "$FERRY_DEMO_PORT" --log-level warn &
server=$!
trap 'kill "$server" 2>/dev/null || true' EXIT
for _ in $(seq 50); do
    (exec 3<>/dev/tcp/127.0.0.1/"$FERRY_DEMO_PORT") 2>/dev/null && break
    sleep 0.1
done
./build/ferry bench rpc --rpc 127.0.0.1:"$FERRY_DEMO_PORT" --quick
