#!/usr/bin/env bash
# Builds a release tree in build-rdma/ and runs the RDMA suite over a real
# verbs stack: Soft-RoCE (rdma_rxe) inside a QEMU guest, tools/softroce-vm.
# Needs root (the harness installs qemu and boots the guest).
#   scripts/rdma-test.sh              build, boot the guest, run the suite
#   RDMA_TEST_TIMEOUT=SEC             bound on the guest run (default 540)
# Inside the guest (rxe0 on veth0 198.18.0.1, rxe1 on veth1 198.18.0.2) it
# runs tests/test_rdma with FERRY_TEST_RDMA=1, then raises veth0's MTU to
# 9000 (veth1 keeps 1500) and runs the 64 MiB transfer again.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=build-rdma

if [ "${1:-}" = --in-guest ]; then
    export FERRY_TEST_RDMA=1
    rc=0
    start=$EPOCHREALTIME
    stamp() { awk -v a="$start" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.1f", b-a}'; }
    echo "== [guest $(stamp) s] test_rdma"
    "$dir/tests/test_rdma" || rc=1
    echo "== [guest $(stamp) s] test_rdma --mtu-mismatch (veth0 mtu 9000, veth1 mtu 1500)"
    ip link set dev veth0 mtu 9000
    "$dir/tests/test_rdma" --mtu-mismatch || rc=1
    echo "== [guest $(stamp) s] done, rc $rc"
    exit $rc
fi

bash scripts/deps.sh
cmake -S . -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DFERRY_WERROR=ON -DFERRY_RDMA=ON >/dev/null
ninja -C "$dir" test_rdma
t0=$EPOCHREALTIME
set +e
bash tools/softroce-vm/softroce-vm.sh -t "${RDMA_TEST_TIMEOUT:-540}" -m 2048 -- bash scripts/rdma-test.sh --in-guest
rc=$?
set -e
echo "== RDMA suite: exit $rc after $(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}') s in the guest"
exit $rc
