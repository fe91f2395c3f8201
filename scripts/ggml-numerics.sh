#!/usr/bin/env bash
# How close ferry's engine is to ggml's CPU backend, element by element:
# the same MUL_MAT (F32, F16, Q8_0, Q4_0, Q4_K; K up to 8192; N 1 and 32) on
# ggml's own rpc-server and on `ferry serve`, compared by bench/bench_numerics.
# It needs ggml's source and build script beside the project (../shared/ggml,
# or $FERRY_GGML_SHARED); without them it says so and skips.
#   scripts/ggml-numerics.sh [bench_numerics options, e.g. --m 512]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FERRY_GGML_SHARED:-../shared/ggml}
if [ ! -x "$shared/build.sh" ]; then
    echo "ggml-numerics: skipped: no ggml source and build script at $shared (set FERRY_GGML_SHARED)"
    exit 0
fi
dest=$PWD/build-ggml
if [ ! -x "$dest/rpc-server" ] && ! bash "$shared/build.sh" "$dest"; then
    echo "ggml-numerics: skipped: ggml's build script failed here (see above)"
    exit 0
fi
[ -x build/bench/bench_numerics ] || { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && ninja -C build; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
    for _ in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "ggml-numerics: nothing listens on port $1" >&2
    return 1
}
ggml_port=$(free_port)
ferry_port=$(free_port)
"$dest/rpc-server" -H 127.0.0.1 -p "$ggml_port" -t 2 >build/ggml-numerics-ggml.log 2>&1 &
ggml_pid=$!
build/ferry serve -H 127.0.0.1 -p "$ferry_port" -t 2 >build/ggml-numerics-ferry.log 2>&1 &
ferry_pid=$!
trap 'kill $ggml_pid $ferry_pid 2>/dev/null || true; wait $ggml_pid $ferry_pid 2>/dev/null || true' EXIT
wait_port "$ggml_port"
wait_port "$ferry_port"
build/bench/bench_numerics --ref "127.0.0.1:$ggml_port" --test "127.0.0.1:$ferry_port" "$@"
