#!/usr/bin/env bash
# ggml's own conformance suite (test-backend-ops) through ggml's own RPC
# client against `ferry serve`, for the ops of llama-family models in full
# (scripts/ggml-conformance.py --help for the whole suite and for ggml's own
# rpc-server as the yardstick). It needs ggml's source and build script,
# which live outside the project (../shared/ggml, or $FERRY_GGML_SHARED);
# without them it says so and skips.
#   scripts/ggml-interop.sh [extra conformance options, e.g. --ops MUL_MAT]
set -euo pipefail
cd "$(dirname "$0")/.."
shared=${FERRY_GGML_SHARED:-../shared/ggml}
if [ ! -x "$shared/build.sh" ]; then
    echo "ggml-interop: skipped: no ggml source and build script at $shared (set FERRY_GGML_SHARED)"
    exit 0
fi
bash scripts/deps.sh
dest=$PWD/build-ggml
if [ ! -x "$dest/build/bin/test-backend-ops" ] && ! bash "$shared/build.sh" "$dest"; then
    echo "ggml-interop: skipped: ggml's build script failed here (see above); ferry itself is not at fault"
    exit 0
fi
[ -x build/ferry ] || { cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null && ninja -C build; }
args=("$@")
# the codebook IQ types need ggml's grid tables, which ferry does not carry
# (docs/types.md section 9): their cases are counted as skipped
codebook='type(_a|_src)?=iq(1_s|1_m|2_xxs|2_xs|2_s|3_xxs|3_s),'
[ ${#args[@]} -eq 0 ] && args=(--llama --skip "$codebook")
python3 scripts/ggml-conformance.py --ggml "$dest" --ferry build/ferry --server-log build/ggml-interop-server.log --timeout 3600 \
    "${args[@]}"
