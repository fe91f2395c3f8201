#!/usr/bin/env bash
# Builds ferry and runs its test suite.
#   scripts/test.sh              Release build (-O3, -Werror) in build/; every other
#                                configuration a user may build: scripts/test-matrix.sh
#   scripts/test.sh --sanitize   AddressSanitizer + UBSan build (clang) in build-asan/, the
#                                engine suites again at each lower SIMD level
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
source scripts/build-flags.sh
dir=build
flags=("${FERRY_BUILD_FLAGS[@]}") # the same as scripts/setup.sh: nothing rebuilds between them
if [ "${1:-}" = "--sanitize" ]; then
    dir=build-asan
    export CC=clang
    flags=(-G Ninja -DFERRY_WERROR=ON -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON)
fi
cmake -S . -B "$dir" "${flags[@]}" >/dev/null
ninja -C "$dir"
bash scripts/check-layers.sh "$dir"
bash scripts/check-citations.sh
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$dir" --output-on-failure
if [ "$dir" = build-asan ]; then
    # the engine's suites again with the SIMD level capped, so that every
    # kernel level this CPU has runs under the sanitizers, not only the best
    for cap in avx2 scalar; do
        echo "== engine suites under the sanitizers with FERRY_SIMD=$cap"
        FERRY_SIMD=$cap ctest --test-dir "$dir" --output-on-failure \
            -R '^test_(golden|matmul|ops_elementwise|ops_misc|engine|selfcheck|quants|model)$'
    done
fi
