#!/usr/bin/env bash
# An unmodified ggml client's first load of a model into `ferry serve`, with
# and without the server holding the file (--model), timed by ggml_load.c
# (ggml's own RPC client). Needs ggml's source and build script beside the
# project (../shared/ggml, or $FERRY_GGML_SHARED); without them it skips.
#   tools/ggml-load/run.sh MODEL.gguf [PORT]
set -euo pipefail
cd "$(dirname "$0")/../.."
model=${1:?usage: tools/ggml-load/run.sh MODEL.gguf [PORT]}
port=${2:-50182}
shared=${FERRY_GGML_SHARED:-../shared/ggml}
if [ ! -x "$shared/build.sh" ]; then
    echo "ggml-load: skipped: no ggml source and build script at $shared (set FERRY_GGML_SHARED)"
    exit 0
fi
g=$PWD/build-ggml
[ -x "$g/rpc-server" ] || bash "$shared/build.sh" "$g"
cc -O2 -o build/ggml_load tools/ggml-load/ggml_load.c -I"$g/ggml/include" -L"$g/build/src" \
    -L"$g/build/src/ggml-rpc" -lggml -lggml-base -lggml-rpc -Wl,-rpath,"$g/build/src:$g/build/src/ggml-rpc"
source scripts/ports.sh
require_free_ports ggml-load PORT "$port"
log=$(mktemp)
pid=
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -f "$log"' EXIT
for how in "without the file" "holding the file"; do
    extra=()
    [ "$how" = "holding the file" ] && extra=(--model "$model")
    build/ferry serve -H 127.0.0.1 -p "$port" -t 1 "${extra[@]}" 2>"$log" &
    pid=$!
    wait_listening ggml-load "$pid" "$port"
    for round in 1 2 3; do echo "$how, round $round: $(build/ggml_load "$model" "127.0.0.1:$port")"; done
    kill -INT "$pid"
    wait "$pid" || true
    pid=
    grep -o "[0-9]* tensors from local models" "$log" | sed "s/^/  server: /"
done
