#!/usr/bin/env bash
# Sets ferry up on a fresh Debian 12 machine and runs the main job: build,
# check the CPU engine against ggml's golden results, start two `ferry serve`
# on loopback, generate a small llama-architecture model, and run it with its
# layers split across the two servers, printing tokens/s and the transports.
#   ports: 127.0.0.1:50152 and 50153, or FERRY_DEMO_PORT and FERRY_DEMO_PORT+1;
#   checked free before anything starts.  model: FERRY_DEMO_MODEL.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ports.sh
source scripts/build-flags.sh
port1=${FERRY_DEMO_PORT:-50152}
port2=$((port1 + 1))
require_free_ports setup.sh FERRY_DEMO_PORT "$port1" "$port2"
bash scripts/deps.sh
cmake -S . -B build "${FERRY_BUILD_FLAGS[@]}" >/dev/null
ninja -C build
echo "== engine vs ggml CPU backend (194 golden cases)"
./build/tests/test_golden tests/golden | tail -n 2

model=${FERRY_DEMO_MODEL:-build/demo-60M-q8_0.gguf}
echo "== two ferry serve on 127.0.0.1:$port1 and 127.0.0.1:$port2"
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
require_free_ports setup.sh FERRY_DEMO_PORT "$port1" "$port2" # again: the build took a while
for port in "$port1" "$port2"; do
    ./build/ferry serve -H 127.0.0.1 -p "$port" -t 1 --log-level warn &
    pids+=($!)
done
wait_listening setup.sh "${pids[0]}" "$port1"
wait_listening setup.sh "${pids[1]}" "$port2"
echo "== a generated model (random weights: the text is nonsense, the speed is real)"
[ -f "$model" ] || ./build/ferry gen-model -o "$model" --size 60M --type q8_0
echo "== ferry run, layers split across both servers"
./build/ferry run -m "$model" --rpc 127.0.0.1:"$port1",127.0.0.1:"$port2" \
    -p "The ferry crosses the river" -n 48 --temp 0.7 --seed 1 --no-progress
