#!/usr/bin/env bash
# Builds ferry in every configuration a user may build it in and runs the
# whole suite in each: gcc and clang; Release (-O3), RelWithDebInfo (-O2),
# no build type (which must give Release), and Debian's packaging build
# (type None with dpkg's default flags); then the Release builds again with
# the SIMD level capped to AVX2 and to the portable kernels. A kernel that is
# right at -O2 and wrong at -O3 fails here.
#   scripts/test-matrix.sh            every configuration (build-matrix/<name>)
#   scripts/test-matrix.sh NAME...    only those, e.g. gcc-release clang-default
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh

# name | compiler | cmake build-type argument (empty: none given) | CFLAGS
configs=(
    "gcc-release|gcc|-DCMAKE_BUILD_TYPE=Release|"
    "gcc-relwithdebinfo|gcc|-DCMAKE_BUILD_TYPE=RelWithDebInfo|"
    "gcc-default|gcc||"
    "gcc-debian|gcc|-DCMAKE_BUILD_TYPE=None|-g -O2 -ffile-prefix-map=$PWD=. -fstack-protector-strong -Wformat -Werror=format-security"
    "clang-release|clang|-DCMAKE_BUILD_TYPE=Release|"
    "clang-relwithdebinfo|clang|-DCMAKE_BUILD_TYPE=RelWithDebInfo|"
    "clang-default|clang||"
)
simd_caps=(avx2 scalar) # also run in the -release builds

want=("$@")
selected() {
    [ ${#want[@]} -eq 0 ] && return 0
    local w
    for w in "${want[@]}"; do [ "$w" = "$1" ] && return 0; done
    return 1
}

mkdir -p build-matrix
failed=()
summary=()
run_suite() { # dir label [env...]
    local dir=$1 label=$2
    shift 2
    local t0=$SECONDS
    if env "$@" ctest --test-dir "$dir" --output-on-failure >"$dir/ctest-$label.log" 2>&1; then
        summary+=("ok    $label ($((SECONDS - t0)) s)")
    else
        tail -n 60 "$dir/ctest-$label.log"
        summary+=("FAIL  $label")
        failed+=("$label")
    fi
}

for c in "${configs[@]}"; do
    IFS='|' read -r name cc type cflags <<<"$c"
    selected "$name" || continue
    dir=build-matrix/$name
    echo "== $name: CC=$cc ${type:-(no build type)} ${cflags:+CFLAGS=\"$cflags\"}"
    rm -rf "$dir"
    t0=$SECONDS
    CC=$cc CFLAGS="$cflags" cmake -S . -B "$dir" -G Ninja -DFERRY_WERROR=ON $type >"$dir.cmake.log" 2>&1 ||
        { cat "$dir.cmake.log"; exit 1; }
    ninja -C "$dir" >"$dir.build.log" 2>&1 || { tail -n 80 "$dir.build.log"; failed+=("$name (build)"); continue; }
    if [ -z "$type" ]; then
        # no build type given: must be an optimised build, never -O0
        bt=$(sed -n 's/^CMAKE_BUILD_TYPE:STRING=//p' "$dir/CMakeCache.txt")
        if [ "$bt" != Release ]; then
            echo "FAIL: a build with no type became '$bt', expected Release"
            failed+=("$name (default type '$bt')")
        fi
    fi
    echo "   built in $((SECONDS - t0)) s"
    run_suite "$dir" "$name"
    if [[ $name == *-release ]]; then
        for cap in "${simd_caps[@]}"; do run_suite "$dir" "$name-simd-$cap" FERRY_SIMD="$cap"; done
    fi
done

printf '%s\n' "${summary[@]}"
if [ ${#failed[@]} -gt 0 ]; then
    echo "test-matrix: failed: ${failed[*]}"
    exit 1
fi
echo "test-matrix: every configuration passed"
