#!/usr/bin/env bash
# Prompt and generation speed of a generated Q8_0 model, locally and split
# over two `ferry serve` on loopback, and the RPC overhead as a ratio.
#   bench/model-split.sh SIZE [THREADS]      e.g. bench/model-split.sh 1G 2
# Needs a built tree in build/ (scripts/setup.sh), or FERRY_BUILD=DIR.
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-100M}
threads=${2:-$(nproc)}
build=${FERRY_BUILD:-build}
ferry=./$build/ferry
model=$build/bench-$size-q8_0.gguf
p1=${FERRY_BENCH_PORT:-50162}
p2=$((p1 + 1))
[ -f "$model" ] || "$ferry" gen-model -o "$model" --size "$size" --type q8_0
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
for port in "$p1" "$p2"; do
    "$ferry" serve -H 127.0.0.1 -p "$port" -t "$threads" --log-level warn &
    pids+=($!)
done
for port in "$p1" "$p2"; do
    for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
done
common=(-m "$model" -p 512 -n 128 -r 3 -t "$threads" --no-progress)
echo "== local, $threads threads"
"$ferry" bench model "${common[@]}" | tee $build/bench-local.txt
echo "== split over 127.0.0.1:$p1 and 127.0.0.1:$p2 (each $threads threads)"
"$ferry" bench model "${common[@]}" --rpc 127.0.0.1:"$p1",127.0.0.1:"$p2" | tee $build/bench-split.txt
awk -F'|' '
    FNR == NR && $6 ~ /(pp|tg)[0-9]/ { split($7, a, " "); local[$6] = a[1] }
    FNR != NR && $6 ~ /(pp|tg)[0-9]/ { split($7, a, " "); if (a[1] > 0) printf "%s: split/local time ratio %.2f (local %.2f t/s, split %.2f t/s)\n", $6, local[$6] / a[1], local[$6], a[1] }
' $build/bench-local.txt $build/bench-split.txt
