#!/usr/bin/env bash
# `cmake --install` into a temporary prefix, then what a user does with it:
# the layout and ferry.pc, only the public API exported from libferry.so,
# every public header compiling alone, the man pages rendering without a
# warning and naming every long option `ferry CMD --help` prints, and the
# example client (share/doc/ferry/examples) built against the prefix through
# find_package(ferry) and through pkg-config, each linked with libferry.so and
# with libferry.a, and run against the prefix's `ferry serve` on a free
# loopback port.
#   tests/test_install.sh BUILD_DIR CONFIG LIBDIR PROJECT_VERSION SHARED(ON|OFF)
# CC is the compiler the build used; FERRY_EXAMPLE_FLAGS, flags the example
# must be compiled and linked with (the sanitizers of a sanitizer build).
set -uo pipefail
build=$1 config=$2 libdir=$3 version=$4 shared=$5
cmake=${CMAKE_COMMAND:-cmake}
cc=${CC:-cc}
flags=${FERRY_EXAMPLE_FLAGS:-}

passed=0 failed=0
check() { # description command...
    local what=$1
    shift
    if "$@"; then
        passed=$((passed + 1))
    else
        failed=$((failed + 1))
        echo "FAIL: $what"
    fi
}
finish() {
    echo "$passed passed, $failed failed"
    [ "$failed" -eq 0 ]
    exit
}

tmp=$(mktemp -d)
prefix=$tmp/prefix
server_pid=
cleanup() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null
        wait "$server_pid" 2>/dev/null
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT

# ---- install ----------------------------------------------------------------
if ! "$cmake" --install "$build" --config "$config" --prefix "$prefix" >"$tmp/install.log" 2>&1; then
    cat "$tmp/install.log"
    check "cmake --install $build" false
    finish
fi
lib=$prefix/$libdir
for f in bin/ferry "$libdir/libferry.a" include/ferry/client.h include/ferry/tensor.h \
    "$libdir/pkgconfig/ferry.pc" "$libdir/cmake/ferry/ferryConfig.cmake" \
    "$libdir/cmake/ferry/ferryConfigVersion.cmake" "$libdir/cmake/ferry/ferryTargets.cmake" \
    share/man/man1/ferry.1 share/man/man1/ferry-serve.1 share/man/man1/ferry-run.1 \
    share/man/man1/ferry-bench.1 share/man/man1/ferry-gen-model.1 \
    share/doc/ferry/examples/remote_add.c share/doc/ferry/examples/CMakeLists.txt \
    share/doc/ferry/examples/Makefile; do
    check "installed $f" test -f "$prefix/$f"
done
check "bin/ferry is executable" test -x "$prefix/bin/ferry"
check "ferry version says $version" grep -q "^ferry $version " <("$prefix/bin/ferry" version)

# ---- libferry.so ------------------------------------------------------------
if [ "$shared" = ON ]; then
    check "libferry.so -> libferry.so.0 -> libferry.so.$version" \
        test "$(readlink "$lib/libferry.so")" = libferry.so.0 -a \
        "$(readlink "$lib/libferry.so.0")" = "libferry.so.$version"
    check "SONAME libferry.so.0" grep -q 'SONAME.*\[libferry\.so\.0\]' <(readelf -d "$lib/libferry.so")
    nm -D --defined-only "$lib/libferry.so" | awk 'NF == 3 {print $3}' | sort >"$tmp/exports"
    check "libferry.so exports the client API" grep -qx ferry_client_connect "$tmp/exports"
    check "libferry.so exports the engine API" grep -qx ferry_engine_compute "$tmp/exports"
    others=$(grep -v '^ferry_' "$tmp/exports" | head -n 5)
    check "libferry.so exports nothing but ferry_* (found: ${others:-none})" test -z "$others"
    # each export is declared in a public header: nothing internal leaks
    cat "$prefix"/include/ferry/*.h >"$tmp/headers"
    undeclared=$(while read -r s; do grep -q "\\b$s\\b" "$tmp/headers" || echo "$s"; done <"$tmp/exports" | head -n 5)
    check "every export is in a public header (not: ${undeclared:-none})" test -z "$undeclared"
else
    check "no libferry.so when FERRY_SHARED=OFF" test ! -e "$lib/libferry.so"
fi

# ---- headers and pkg-config -------------------------------------------------
for h in "$prefix"/include/ferry/*.h; do
    check "ferry/${h##*/} compiles alone" \
        "$cc" -std=c17 -Wall -Wextra -Werror -fsyntax-only -I"$prefix/include" -x c - \
        <<<"#include <ferry/${h##*/}>"
done
export PKG_CONFIG_PATH=$lib/pkgconfig
if command -v pkg-config >/dev/null; then
    check "pkg-config --modversion ferry = $version" test "$(pkg-config --modversion ferry)" = "$version"
    libs=$(pkg-config --libs ferry | xargs)
    if [ "$shared" = ON ]; then
        check "pkg-config --libs ferry = -L$lib -lferry ($libs)" test "$libs" = "-L$lib -lferry"
    else # -lferry is libferry.a: what it needs follows
        check "pkg-config --libs ferry = -L$lib -lferry -lpthread -lm... ($libs)" \
            grep -q -- "^-L$lib -lferry -lpthread -lm" <<<"$libs"
    fi
    static_libs=$(pkg-config --static --libs ferry)
    check "pkg-config --static --libs ferry has -lpthread -lm ($static_libs)" \
        grep -q -- '-lpthread.*-lm' <<<"$static_libs"
else
    echo "skip: pkg-config not installed (scripts/deps.sh installs it)"
fi

# ---- man pages --------------------------------------------------------------
man1=$prefix/share/man/man1
if command -v groff >/dev/null; then
    for m in "$man1"/*.1; do
        warnings=$(groff -t -man -Tutf8 -ww -z "$m" 2>&1)
        check "man ${m##*/} renders without warnings: $warnings" test -z "$warnings"
    done
else
    echo "skip: groff not installed, man pages not rendered (scripts/deps.sh installs groff-base)"
fi
# every long option a command's help prints is in its man page(s)
options_documented() { # "command words" man pages...
    local cmd=$1 text opt missing=""
    shift
    text=$(cat "$@" | sed 's/\\-/-/g; s/\\f[BIRP]//g')
    # shellcheck disable=SC2086
    for opt in $("$prefix/bin/ferry" $cmd --help 2>&1 | grep -oE -- '--[a-z][a-z0-9-]*' | sort -u); do
        grep -qE -- "(^|[^a-z0-9-])$opt([^a-z0-9-]|$)" <<<"$text" || missing+=" $opt"
    done
    check "ferry${cmd:+ $cmd} --help's options are in ${*##*/} (missing:${missing:- none})" test -z "$missing"
}
options_documented "" "$man1/ferry.1"
options_documented serve "$man1/ferry-serve.1"
options_documented run "$man1/ferry-run.1"
options_documented gen-model "$man1/ferry-gen-model.1"
options_documented "bench model" "$man1/ferry-bench.1"
options_documented "bench rpc" "$man1/ferry-bench.1"
options_documented "bench net" "$man1/ferry-bench.1"

# ---- the example, built against the prefix ----------------------------------
examples=$prefix/share/doc/ferry/examples
if "$cmake" -S "$examples" -B "$tmp/ex-cmake" -DCMAKE_PREFIX_PATH="$prefix" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS="$flags" -DCMAKE_EXE_LINKER_FLAGS="$flags" \
    >"$tmp/ex-cmake.log" 2>&1 && "$cmake" --build "$tmp/ex-cmake" >>"$tmp/ex-cmake.log" 2>&1; then
    check "example built with find_package(ferry)" true
else
    cat "$tmp/ex-cmake.log"
    check "example built with find_package(ferry)" false
fi
cp -r "$examples" "$tmp/ex-pc"
if command -v pkg-config >/dev/null && command -v make >/dev/null; then
    if make -C "$tmp/ex-pc" CC="$cc" CFLAGS="-O2 -Wall -Wextra -Werror $flags" LDFLAGS="$flags" \
        >"$tmp/ex-pc.log" 2>&1; then
        check "example built with pkg-config and make" true
    else
        cat "$tmp/ex-pc.log"
        check "example built with pkg-config and make" false
    fi
fi
binaries=()
for b in "$tmp"/ex-cmake/remote_add "$tmp"/ex-cmake/remote_add_static "$tmp"/ex-pc/remote_add \
    "$tmp"/ex-pc/remote_add_static; do
    [ -x "$b" ] || continue
    binaries+=("$b")
    needs_so=no
    grep -q 'NEEDED.*\[libferry\.so\.0\]' <(readelf -d "$b") && needs_so=yes
    want=no
    [ "$shared" = ON ] && [ "${b##*/}" = remote_add ] && want=yes
    check "${b#"$tmp"/} needs libferry.so.0: $needs_so (want $want)" test $needs_so = $want
done

# ---- ferry serve from the prefix, the example against it --------------------
"$prefix/bin/ferry" serve -H 127.0.0.1 -p 0 -t 1 -m 64 2>"$tmp/serve.log" &
server_pid=$!
port=
for _ in $(seq 100); do # up to 10 s for the endpoint line
    port=$(sed -n 's/.*127\.0\.0\.1:\([0-9][0-9]*\).*/\1/p' "$tmp/serve.log" | head -n 1)
    [ -n "$port" ] && break
    kill -0 "$server_pid" 2>/dev/null || break
    sleep 0.1
done
if ! check "ferry serve -p 0 prints its endpoint" test -n "$port"; then
    cat "$tmp/serve.log"
    finish
fi
want="a + b ="
for i in 1 2 3 4 5 6 7 8; do want+=" $((i + 10 * i))"; done
want+=" ok"
for b in "${binaries[@]}"; do
    out=$(LD_LIBRARY_PATH=$lib timeout 60 "$b" "127.0.0.1:$port" 2>&1)
    rc=$?
    check "${b#"$tmp"/} against ferry serve: rc $rc, '$out'" test $rc -eq 0 -a "$out" = "$want"
done
check "four example programs ran" test ${#binaries[@]} -eq 4
kill -TERM "$server_pid"
wait "$server_pid"
rc=$?
server_pid=
check "ferry serve stopped cleanly on SIGTERM (rc $rc)" test $rc -eq 0
finish
