#!/usr/bin/env bash
# Builds a release tree in build-rdma/ and runs the RDMA suite over a real
# verbs stack: Soft-RoCE (rdma_rxe) inside a QEMU guest, tools/softroce-vm.
# Needs root (the harness installs qemu and boots the guest).
#   scripts/rdma-test.sh              build, boot the guest, run the suite and the bench
#   scripts/rdma-test.sh --bench      only ferry bench rpc over RDMA and idle CPU, in the guest
#   scripts/rdma-test.sh --load       only bench/model-load.sh over RDMA (RDMA_LOAD_SIZE, default 200M)
#   RDMA_GGML=DIR scripts/rdma-test.sh --table
#                                     small-request round trips, RDMA against TCP, for every
#                                     pair of ggml and ferry client and server, in one guest run;
#                                     DIR holds ggml's source (DIR/ggml) and a GGML_NATIVE=OFF
#                                     build of it with RDMA (DIR/build: targets ggml ggml-rpc
#                                     ggml-cpu, see /work/shared/ggml/build.sh's flags)
#   [RDMA_GGML=DIR] [RDMA_BEFORE=1] scripts/rdma-test.sh --blips
#                                     transient loss the connections must survive (neighbour
#                                     flush, veth down 300 ms / 3 s), ferry <-> ferry and, with
#                                     RDMA_GGML, ferry client -> ggml server; then the detection
#                                     time of a partition and of a killed server. RDMA_BEFORE=1:
#                                     with the former ack timeout 14 / retry_cnt 6, to compare
#   RDMA_TEST_TIMEOUT=SEC             bound on the guest run (default 540)
# Inside the guest (rxe0 on veth0 198.18.0.1, rxe1 on veth1 198.18.0.2) it
# runs tests/test_rdma with FERRY_TEST_RDMA=1, then again under a 4 MiB
# memlock limit without CAP_IPC_LOCK (--memlock), then raises veth0's MTU to
# 9000 (veth1 keeps 1500) and runs the 64 MiB transfer again; then the ggml
# peer test (tests/test_rdma_ggml.c), a generated model run split over RDMA
# against the same run locally, both suites again under ASan + UBSan
# (build-asan/), and `ferry bench rpc` over RDMA with the
# CPU time of idle and waiting peers. Lines starting "figures:" are the numbers
# the README and the protocol notes quote.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-rdma

# In the guest: ferry serve on rxe1 and `ferry bench rpc` from rxe0 over RDMA, then the CPU
# time of an idle server and an idle client holding an RDMA connection, and of a client
# blocked waiting for an answer (the server stopped with SIGSTOP meanwhile).
bench_in_guest() {
    cpu() { awk '{print $14 + $15}' "/proc/$1/stat"; } # utime + stime, in clock ticks
    ms() { echo $(( ($2 - $1) * 1000 / $(getconf CLK_TCK) )); }
    "$dir/ferry" serve -H 198.18.0.2 -p 50052 --transport rdma --log-level warn &
    spid=$!
    "$dir/ferry" bench net --listen -H 198.18.0.2 -p 50053 &
    npid=$!
    sleep 3
    FERRY_RDMA_DEV=rxe0 "$dir/ferry" bench rpc --rpc 198.18.0.2:50052 --net 198.18.0.2:50053 --quick \
        --max-size "${RDMA_BENCH_MAX:-64M}"
    kill $npid
    FERRY_RDMA_DEV=rxe0 "$dir/tests/test_rdma" --hold 198.18.0.2:50052 12 &
    hpid=$!
    sleep 4
    s0=$(cpu $spid) h0=$(cpu $hpid)
    sleep 6
    s1=$(cpu $spid) h1=$(cpu $hpid)
    echo "figures: idle over 6 s with an RDMA connection open: server $(ms $s0 $s1) ms CPU," \
         "client $(ms $h0 $h1) ms CPU"
    local rc=0
    wait $hpid || rc=1
    out=$(mktemp)
    FERRY_RDMA_DEV=rxe0 "$dir/tests/test_rdma" --hold 198.18.0.2:50052 2 >"$out" &
    hpid=$!
    for _ in $(seq 40); do grep -q connected "$out" && break; sleep 0.5; done
    kill -STOP $spid
    sleep 4 # the client's request after 2 s now waits for the stopped server
    h0=$(cpu $hpid)
    sleep 6
    h1=$(cpu $hpid)
    kill -CONT $spid
    echo "figures: a client blocked 6 s waiting for its answer over RDMA: $(ms $h0 $h1) ms CPU"
    wait $hpid || rc=1
    rm -f "$out"
    kill $spid
    wait $spid || true
    return $rc
}

# In the guest: p50 of a small request's round trip over RDMA and over TCP between the same two
# endpoints, one run after the other, for ggml <-> ggml, ggml client <-> ferry serve, ferry client
# <-> ggml server and ferry <-> ferry. ggml's client asks GET_DEVICE_MEMORY (build-rdma/ggml-rtt),
# ferry's GET_ALIGNMENT (`ferry bench rpc`); each pair's ratio compares it with itself.
table_in_guest() {
    local n=${RDMA_TABLE_N:-400} rc=0 spid
    # a fresh server per measure: ggml's server busy-polls its queue pair for good once an RDMA
    # client has come and gone, which would slow every later measure in a 2-CPU guest
    up() { # ggml|ferry: starts the server on 198.18.0.2:50070
        if [ "$1" = ggml ]; then "$dir/ggml-rpc-server" -H 198.18.0.2 -p 50070 -t 1 >/dev/null 2>&1 &
        else "$dir/ferry" serve -H 198.18.0.2 -p 50070 --log-level warn 2>/dev/null & fi
        spid=$!
        for _ in $(seq 100); do (exec 3<>/dev/tcp/198.18.0.2/50070) 2>/dev/null && break; sleep 0.2; done
    }
    down() { kill $spid; wait $spid 2>/dev/null || true; }
    p50() { # client (ggml|ferry), transport (rdma|tcp): p50 in us of its small request
        if [ "$1" = ggml ] && [ "$2" = rdma ]; then
            GGML_RDMA_DEV=rxe0 GGML_RDMA_GID=1 "$dir/ggml-rtt" 198.18.0.2:50070 "$n" 2>/dev/null | awk '{print $2}'
        elif [ "$1" = ggml ]; then
            GGML_RDMA_DEV=none "$dir/ggml-rtt" 198.18.0.2:50070 "$n" 2>/dev/null | awk '{print $2}'
        else
            FERRY_RDMA_DEV=rxe0 "$dir/ferry" bench rpc --rpc 198.18.0.2:50070 --net none --max-size 4K \
                --iterations "$n" --quiet --json --transport "$2" 2>/dev/null |
                grep -o '"get_alignment":{[^}]*' | grep -o '"p50_us":[0-9.]*' | cut -d: -f2
        fi
    }
    for round in 1 2; do
        echo "== round $round"
        for pair in "ggml ggml" "ggml ferry" "ferry ggml" "ferry ferry"; do
            set -- $pair
            up "$2"; a=$(p50 "$1" rdma); down
            up "$2"; b=$(p50 "$1" tcp); down
            awk -v n="$1 client <-> $2 server" -v a="$a" -v b="$b" 'BEGIN{
                if (a > 0 && b > 0) printf "figures: small request, %-27s RDMA p50 %8.1f us, TCP p50 %8.1f us: %.2fx TCP\n", n, a, b, a / b
                else { printf "figures: small request, %-27s FAILED (rdma %s, tcp %s)\n", n, a, b; exit 1 } }' || rc=1
        done
    done
    return $rc
}

# In the guest: a generated model run split over RDMA (every layer on a server on rxe1) must
# write, with greedy sampling, exactly the text of the same model run locally.
model_in_guest() {
    local m=$dir/model-20m.gguf args=(-p "The ferry crosses the river" -n 8 --temp 0 --no-progress -t 1)
    "$dir/ferry" serve -H 198.18.0.2 -p 50062 --transport rdma --log-level warn 2>/dev/null &
    local spid=$! rc=0
    for _ in $(seq 50); do (exec 3<>/dev/tcp/198.18.0.2/50062) 2>/dev/null && break; sleep 0.2; done
    "$dir/ferry" run -m "$m" "${args[@]}" >"$dir/run-local.txt" 2>/dev/null || rc=1
    FERRY_RDMA_DEV=rxe0 "$dir/ferry" run -m "$m" --rpc 198.18.0.2:50062 --transport rdma "${args[@]}" \
        >"$dir/run-rdma.txt" 2>"$dir/run-rdma.err" || rc=1
    grep -E "^  198.18.0.2:50062 +rdma|tokens/s" "$dir/run-rdma.err" || rc=1
    if [ $rc = 0 ] && cmp -s "$dir/run-local.txt" "$dir/run-rdma.txt"; then
        echo "same text locally and split over RDMA: $(cat "$dir/run-rdma.txt")"
    else
        echo "FAIL: split over RDMA differs from the local run (or failed)"; cat "$dir/run-rdma.err"; rc=1
    fi
    kill $spid
    wait $spid || true
    return $rc
}

# In the guest: the model run of model_in_guest with netem dropping $1 of the packets both ways on
# the RDMA path for its first 10 s: the same text must come out.
model_loss_in_guest() {
    local m=$dir/model-20m.gguf args=(-p "The ferry crosses the river" -n 8 --temp 0 --no-progress -t 1)
    local rc=0 spid t0
    "$dir/ferry" serve -H 198.18.0.2 -p 50064 --transport rdma --log-level warn 2>/dev/null &
    spid=$!
    for _ in $(seq 50); do (exec 3<>/dev/tcp/198.18.0.2/50064) 2>/dev/null && break; sleep 0.2; done
    [ -s "$dir/run-local.txt" ] || "$dir/ferry" run -m "$m" "${args[@]}" >"$dir/run-local.txt" 2>/dev/null || rc=1
    tc qdisc add dev veth0 root netem loss "$1" && tc qdisc add dev veth1 root netem loss "$1" || rc=1
    ( sleep 10; tc qdisc del dev veth0 root; tc qdisc del dev veth1 root ) &
    local lpid=$!
    t0=$EPOCHREALTIME
    FERRY_RDMA_DEV=rxe0 timeout 120 "$dir/ferry" run -m "$m" --rpc 198.18.0.2:50064 --transport rdma "${args[@]}" \
        >"$dir/run-loss.txt" 2>"$dir/run-loss.err" || rc=1
    local took; took=$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}')
    wait $lpid || true
    if [ $rc = 0 ] && cmp -s "$dir/run-local.txt" "$dir/run-loss.txt"; then
        echo "figures: a model run split over RDMA with $1 packet loss for 10 s: same text as locally, $took s"
    else
        echo "FAIL: a model run with $1 packet loss (after $took s)"; tail -5 "$dir/run-loss.err"; rc=1
    fi
    kill $spid
    wait $spid || true
    return $rc
}

# In the guest: transient loss on the RDMA path (neighbour flush, veth0 down 300 ms and 3 s
# between requests, every packet lost for 300 ms and 3 s under 64 MiB transfers, 1 % and 10 %
# lost for 10 s under a model run) that every connection must survive, for ferry
# <-> ferry, ferry client -> ferry server in ggml framing and, with a ggml build, ferry client ->
# ggml's rpc-server; then a partition and a killed server, whose detection times are printed.
# RDMA_BEFORE=1 runs the same with the former queue pair timing (ack timeout 14, retry_cnt 6).
blips_in_guest() {
    local rc=0 gpid=
    if [ "${RDMA_BEFORE:-}" = 1 ]; then export FERRY_RDMA_ACK_TIMEOUT=14 FERRY_RDMA_RETRY_CNT=6; fi
    if [ -x "$dir/ggml-rpc-server" ]; then
        "$dir/ggml-rpc-server" -H 198.18.0.2 -p 50072 -t 1 >/dev/null 2>&1 &
        gpid=$!
        for _ in $(seq 100); do (exec 3<>/dev/tcp/198.18.0.2/50072) 2>/dev/null && break; sleep 0.2; done
    fi
    timeout 240 "$dir/tests/test_rdma" --blips ${gpid:+198.18.0.2:50072} || rc=1
    [ -n "$gpid" ] && { kill $gpid; wait $gpid 2>/dev/null || true; }
    timeout 60 "$dir/tests/test_rdma" --partition || rc=1
    timeout 60 "$dir/tests/test_rdma" --server-killed || rc=1
    if [ "${RDMA_BEFORE:-}" != 1 ]; then
        model_loss_in_guest 1% || rc=1
        model_loss_in_guest 10% || rc=1
    fi
    return $rc
}

# In the guest: bench/model-load.sh over RDMA (server on rxe1, client on rxe0): a fresh
# `ferry run -n 1` locally, against a cold server, one holding the file, and through the cache.
load_in_guest() {
    FERRY_BUILD=$dir FERRY_BENCH_HOST=198.18.0.2 FERRY_BENCH_RUN_ARGS="--transport rdma" FERRY_RDMA_DEV=rxe0 \
        ROUNDS=${ROUNDS:-2} bash bench/model-load.sh "${RDMA_LOAD_SIZE:-200M}"
}

if [ "${1:-}" = --blips-in-guest ]; then
    blips_in_guest
    exit
fi
if [ "${1:-}" = --load-in-guest ]; then
    load_in_guest
    exit
fi
if [ "${1:-}" = --bench-in-guest ]; then
    bench_in_guest
    exit
fi
if [ "${1:-}" = --table-in-guest ]; then
    table_in_guest
    exit
fi

if [ "${1:-}" = --in-guest ]; then
    export FERRY_TEST_RDMA=1
    rc=0
    start=$EPOCHREALTIME
    stamp() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
    echo "== [guest $(stamp) s] test_rdma"
    "$dir/tests/test_rdma" || rc=1
    echo "== [guest $(stamp) s] test_rdma_ggml"
    FERRY_RDMA_DEV=rxe0 "$dir/tests/test_rdma_ggml" || rc=1
    echo "== [guest $(stamp) s] test_rdma --memlock (ulimit -l 4096, no CAP_IPC_LOCK)"
    ( ulimit -l 4096
      exec setpriv --inh-caps -ipc_lock --bounding-set -ipc_lock "$dir/tests/test_rdma" --memlock ) || rc=1
    echo "== [guest $(stamp) s] test_rdma --partition (rxe0's packets dropped under a transfer, TCP unaffected)"
    "$dir/tests/test_rdma" --partition || rc=1
    echo "== [guest $(stamp) s] test_rdma --mtu-mismatch (veth0 mtu 9000, veth1 mtu 1500)"
    ip link set dev veth0 mtu 9000
    "$dir/tests/test_rdma" --mtu-mismatch || rc=1
    ip link set dev veth0 mtu 1500
    echo "== [guest $(stamp) s] ferry run: a model split over RDMA against the same model locally"
    model_in_guest || rc=1
    echo "== [guest $(stamp) s] test_rdma and test_rdma_ggml under AddressSanitizer + UBSan"
    ( export ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
      build-asan/tests/test_rdma >/dev/null 2>build-asan/test_rdma.log && \
      FERRY_RDMA_DEV=rxe0 build-asan/tests/test_rdma_ggml >/dev/null 2>>build-asan/test_rdma.log ) \
        || { tail -40 build-asan/test_rdma.log; rc=1; }
    echo "== [guest $(stamp) s] ferry bench rpc over RDMA, idle and blocked CPU"
    bench_in_guest || rc=1
    echo "== [guest $(stamp) s] done, rc $rc"
    exit $rc
fi

what=--in-guest targets=(test_rdma test_rdma_ggml ferry-cli)
if [ "${1:-}" = --bench ]; then what=--bench-in-guest; fi
if [ "${1:-}" = --table ]; then what=--table-in-guest; fi
if [ "${1:-}" = --blips ]; then what=--blips-in-guest; fi
if [ "${1:-}" = --load ]; then what=--load-in-guest; fi
bash scripts/deps.sh
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_WERROR=ON -DFERRY_RDMA=ON >/dev/null
ninja -C "$dir" "${targets[@]}"
if [ "$what" = --blips-in-guest ] && [ -d "${RDMA_GGML:-}/build/src/ggml-rpc" ]; then # ggml's server
    gb=$RDMA_GGML/build/src
    gcc -O2 -o "$dir/ggml-rpc-server" /work/shared/ggml/rpc-ref-server.c -I"$RDMA_GGML/ggml/include" -L"$gb" \
        -L"$gb/ggml-rpc" -Wl,-rpath,"$gb" -Wl,-rpath,"$gb/ggml-rpc" -lggml -lggml-base -lggml-cpu -lggml-rpc
fi
if [ "$what" = --table-in-guest ]; then # ggml's RPC client and server, against ggml's own build
    [ -d "${RDMA_GGML:-}/build/src/ggml-rpc" ] || { echo "--table needs RDMA_GGML=DIR (see the header)"; exit 2; }
    gb=$RDMA_GGML/build/src
    link=(-I"$RDMA_GGML/ggml/include" -L"$gb" -L"$gb/ggml-rpc" -Wl,-rpath,"$gb" -Wl,-rpath,"$gb/ggml-rpc"
          -lggml -lggml-base -lggml-cpu -lggml-rpc)
    gcc -O2 -o "$dir/ggml-rpc-server" /work/shared/ggml/rpc-ref-server.c "${link[@]}"
    gcc -O2 -x c -o "$dir/ggml-rtt" - "${link[@]}" <<'EOF'
/* p50 of small round trips (GET_DEVICE_MEMORY) from ggml's own RPC client. */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include "ggml-backend.h"
#include "ggml-rpc.h"
static double now_us(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec * 1e6 + t.tv_nsec / 1e3; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return x < y ? -1 : x > y; }
int main(int argc, char **argv) {
    int n = argc > 2 ? atoi(argv[2]) : 0;
    if (n < 1) { fprintf(stderr, "usage: ggml-rtt HOST:PORT N\n"); return 2; }
    ggml_backend_buffer_type_t bt = ggml_backend_rpc_buffer_type(argv[1], 0);
    ggml_backend_buffer_t buf = bt ? ggml_backend_buft_alloc_buffer(bt, 4096) : NULL; /* holds the connection */
    double *t = malloc(sizeof *t * n);
    if (!buf || !t) { fprintf(stderr, "ggml-rtt: no connection to %s\n", argv[1]); return 1; }
    size_t fr, tot;
    for (int i = 0; i < n / 10 + 1; i++) ggml_backend_rpc_get_device_memory(argv[1], 0, &fr, &tot);
    for (int i = 0; i < n; i++) {
        double t0 = now_us();
        ggml_backend_rpc_get_device_memory(argv[1], 0, &fr, &tot);
        t[i] = now_us() - t0;
    }
    qsort(t, n, sizeof *t, cmp);
    printf("p50_us %.1f min_us %.1f n %d\n", t[n / 2], t[0], n);
    ggml_backend_buffer_free(buf);
    return 0;
}
EOF
fi
[ -f "$dir/model-20m.gguf" ] || "$dir/ferry" gen-model -o "$dir/model-20m.gguf" --size 20M --type q8_0 >/dev/null
if [ "$what" = --load-in-guest ]; then
    m=$dir/bench-load-${RDMA_LOAD_SIZE:-200M}-q8_0.gguf
    [ -f "$m" ] || "$dir/ferry" gen-model -o "$m" --size "${RDMA_LOAD_SIZE:-200M}" --type q8_0 --no-progress >/dev/null
fi
if [ "$what" = --in-guest ]; then # the same tests under the sanitizers (scripts/test.sh --sanitize's tree)
    CC=clang cmake -S . -B build-asan -G Ninja -DFERRY_WERROR=ON -DCMAKE_BUILD_TYPE=Debug -DFERRY_SANITIZE=ON \
        -DFERRY_RDMA=ON >/dev/null
    ninja -C build-asan test_rdma test_rdma_ggml
fi
t0=$EPOCHREALTIME
set +e
bash tools/softroce-vm/softroce-vm.sh -t "${RDMA_TEST_TIMEOUT:-540}" -m 2048 -- bash scripts/rdma-test.sh "$what"
rc=$?
set -e
echo "== RDMA suite: exit $rc after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}') s in the guest"
exit $rc
