#!/usr/bin/env bash
# Builds the libFuzzer targets with clang and runs each for a while.
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
secs=${1:-60}
shift || true
CC=clang cmake -S . -B build-fuzz -G Ninja -DFERRY_FUZZ=ON -DFERRY_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
ninja -C build-fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    for f in fuzz/fuzz_*.c; do targets+=("$(basename "$f" .c)"); done
fi
for t in "${targets[@]}"; do
    name=${t#fuzz_}
    work=$(mktemp -d)
    echo "== $t for ${secs}s"
    # new inputs go to a scratch corpus; the seed corpus in the repo stays as it is
    ./build-fuzz/fuzz/"$t" -max_total_time="$secs" -max_len=65536 -print_final_stats=1 \
        -artifact_prefix=build-fuzz/"$t"- "$work" fuzz/corpus/"$name" 2>&1 | tail -n 25
    rm -rf "$work"
done
