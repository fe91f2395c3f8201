#!/usr/bin/env bash
# Builds ferry and runs its test suite.
#   scripts/test.sh              release build (-Werror) in build/
#   scripts/test.sh --sanitize   AddressSanitizer + UBSan build (clang) in build-asan/
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
dir=build
flags=(-DCMAKE_BUILD_TYPE=RelWithDebInfo)
if [ "${1:-}" = "--sanitize" ]; then
    dir=build-asan
    export CC=clang
    flags=(-DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON)
fi
cmake -S . -B "$dir" -G Ninja -DFERRY_WERROR=ON "${flags[@]}" >/dev/null
ninja -C "$dir"
export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
ctest --test-dir "$dir" --output-on-failure
