#!/usr/bin/env bash
# What a user waits for when a model goes to a server: a fresh `ferry run -n 1`
# (load, prompt, one token), whole process, on loopback, for generated Q8_0
# models, in four ways:
#   local    no server: the reference
#   cold     `ferry serve`: every weight crosses the socket
#   holding  `ferry serve --model FILE`: the server fills the weights from its own
#            copy (FERRY_LOAD_LOCAL), the client never reads them
#   cache    `ferry serve -c DIR`, second load: every weight from the cache (one
#            load first fills it)
# Each line: best wall time of R runs, its ratio to local, and the bytes the
# client sent at load as a share of the model.
#   bench/model-load.sh [SIZE...]        default: 1G 4G; e.g. bench/model-load.sh 200M
# Env: FERRY_BENCH_PORT (default 50172), THREADS (each side, default 1),
# ROUNDS (default 3), FERRY_BUILD (default build), FERRY_BENCH_HOST (the
# server's address, default 127.0.0.1; scripts/rdma-test.sh --load uses the
# Soft-RoCE guest's RDMA link), FERRY_BENCH_RUN_ARGS (more `ferry run`
# options, e.g. --transport rdma). Models are generated once into
# $FERRY_BUILD/ (about 25 s per GB); progress goes to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/ports.sh
build=${FERRY_BUILD:-build}
ferry=./$build/ferry
port=${FERRY_BENCH_PORT:-50172}
host=${FERRY_BENCH_HOST:-127.0.0.1}
read -r -a run_args <<<"${FERRY_BENCH_RUN_ARGS:-}"
threads=${THREADS:-1}
rounds=${ROUNDS:-3}
sizes=("$@")
[ ${#sizes[@]} -eq 0 ] && sizes=(1G 4G)
[ -x "$ferry" ] || { echo "model-load.sh: no $ferry (build first: scripts/setup.sh)" >&2; exit 1; }
require_free_ports model-load.sh FERRY_BENCH_PORT "$port"
start=$SECONDS
step() { echo "== [$((SECONDS - start)) s] $*" >&2; }
tmp=$(mktemp -d)
server=
stop_server() {
    if [ -n "$server" ]; then
        kill "$server" 2>/dev/null || true
        wait "$server" 2>/dev/null || true
        server=
    fi
}
trap 'stop_server; rm -rf "$tmp"' EXIT
start_server() {
    "$ferry" serve -H "$host" -p "$port" -t "$threads" --log-level warn "$@" 2>"$tmp/serve.log" &
    server=$!
    # indexing a model or opening a cache happens before the port opens
    for _ in $(seq 600); do
        kill -0 "$server" 2>/dev/null || { cat "$tmp/serve.log" >&2; echo "model-load.sh: ferry serve exited" >&2; exit 1; }
        (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null && return 0
        sleep 0.1
    done
    echo "model-load.sh: ferry serve did not start listening in 60 s" >&2
    exit 1
}
# one run: prints "WALL_S SENT_BYTES"
run_once() {
    local t0 t1
    t0=$(date +%s.%N)
    "$ferry" run -m "$model" -p "Once upon a time" -n 1 --temp 0 -t "$threads" --json --no-progress "$@" \
        >"$tmp/run.json" 2>"$tmp/run.err" || { cat "$tmp/run.err" >&2; exit 1; }
    t1=$(date +%s.%N)
    python3 - "$tmp/run.json" "$t0" "$t1" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
sent = sum(n.get("uploaded_bytes", 0) for n in r["nodes"])
print(f"{float(sys.argv[3]) - float(sys.argv[2]):.3f} {sent}")
EOF
}
# best of $rounds: prints "WALL_S SENT_BYTES" of the fastest
best_of() {
    local best="" line
    for _ in $(seq "$rounds"); do
        line=$(run_once "$@")
        if [ -z "$best" ] || python3 -c "import sys; sys.exit(0 if float('${line% *}') < float('${best% *}') else 1)"; then
            best=$line
        fi
    done
    echo "$best"
}
row() { # case wall sent local_wall model_bytes
    python3 -c "
w, s, lw, mb = float('$2'), int('$3'), float('$4'), int('$5')
print(f'| $size | $1 | {w:.2f} s | {w / lw:.2f}x | {s / 1048576:.1f} MiB | {100 * s / mb:.2f} % |')"
}

echo "ferry run -n 1, $threads thread(s) each side, best of $rounds, server at $host ${run_args[*]}"
echo
echo "| model | case | wall | vs local | client sent at load | of the model |"
echo "|---|---|---:|---:|---:|---:|"
for size in "${sizes[@]}"; do
    model=$build/bench-load-$size-q8_0.gguf
    if [ ! -f "$model" ]; then
        step "generating $model"
        "$ferry" gen-model -o "$model" --size "$size" --type q8_0 --no-progress >&2
    fi
    bytes=$(stat -c %s "$model")
    cat "$model" >/dev/null # in the page cache, as for every case below
    step "$size: local"
    read -r lw _ < <(best_of)
    row local "$lw" 0 "$lw" "$bytes"
    step "$size: cold (every weight sent)"
    start_server
    read -r w s < <(best_of --rpc "$host:$port" "${run_args[@]}")
    stop_server
    row cold "$w" "$s" "$lw" "$bytes"
    step "$size: server holding the file (indexing it first)"
    start_server --model "$model"
    read -r w s < <(best_of --rpc "$host:$port" "${run_args[@]}")
    stop_server
    row holding "$w" "$s" "$lw" "$bytes"
    step "$size: second load through the server's cache"
    rm -rf "$tmp/cache"
    start_server -c "$tmp/cache"
    run_once --rpc "$host:$port" "${run_args[@]}" >/dev/null
    sleep 1 # the cache writes on its own thread
    read -r w s < <(best_of --rpc "$host:$port" "${run_args[@]}")
    stop_server
    row cache "$w" "$s" "$lw" "$bytes"
done
step "done"
