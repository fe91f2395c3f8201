#!/usr/bin/env bash
# Prompt and generation speed of a generated Q8_0 model, locally and split
# over two `ferry serve` on loopback, and the RPC overhead as a ratio.
#   bench/model-split.sh SIZE [THREADS]      e.g. bench/model-split.sh 1G 2
# THREADS: each server's and the local engine's (default: ferry's default,
# the physical cores). Ports: 127.0.0.1:50162 and 50163, or FERRY_BENCH_PORT
# and FERRY_BENCH_PORT+1, checked free first. Needs a built tree in build/
# (scripts/setup.sh), or FERRY_BUILD=DIR. Progress goes to stderr, tables
# to stdout and $FERRY_BUILD/bench-{local,split}.csv.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ports.sh
size=${1:-100M}
build=${FERRY_BUILD:-build}
ferry=./$build/ferry
threads=${2:-}
t_opt=()
[ -n "$threads" ] && t_opt=(-t "$threads")
model=$build/bench-$size-q8_0.gguf
p1=${FERRY_BENCH_PORT:-50162}
p2=$((p1 + 1))
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*" >&2; }
require_free_ports model-split.sh FERRY_BENCH_PORT "$p1" "$p2"
if [ -f "$model" ]; then
    step "model $model (already there)"
else
    step "generating $model (a $size model takes about 25 s per GB)"
    "$ferry" gen-model -o "$model" --size "$size" --type q8_0
fi
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done' EXIT
step "two ferry serve on 127.0.0.1:$p1 and 127.0.0.1:$p2"
for port in "$p1" "$p2"; do
    "$ferry" serve -H 127.0.0.1 -p "$port" "${t_opt[@]}" --log-level warn &
    pids+=($!)
done
wait_listening model-split.sh "${pids[0]}" "$p1"
wait_listening model-split.sh "${pids[1]}" "$p2"
common=(-m "$model" -p 512 -n 128 -r 3 "${t_opt[@]}" -o csv)
step "local: pp512 and tg128, 3 runs each after a warm-up (progress below)"
"$ferry" bench model "${common[@]}" | tee "$build/bench-local.csv"
step "split over 127.0.0.1:$p1 and 127.0.0.1:$p2: weights upload, then the same tests"
"$ferry" bench model "${common[@]}" --rpc 127.0.0.1:"$p1",127.0.0.1:"$p2" | tee "$build/bench-split.csv"
step "done"
# csv: model,size_bytes,params,backend,threads,n_prompt,n_gen,test,avg_ts,stddev_ts,load_s
awk -F, '
    FNR == 1 { next }
    FNR == NR { local[$8] = $9; next }
    $9 > 0 { printf "%s: split/local time ratio %.2f (local %.2f t/s, split %.2f t/s)\n", $8, local[$8] / $9, local[$8], $9 }
' "$build/bench-local.csv" "$build/bench-split.csv"
