#!/usr/bin/env bash
# Proves that every layer uses only the layers below it (docs/architecture.md,
# "Layers"), from what was built, not from what anyone meant:
#   - symbols: every name a layer's library leaves undefined (nm -u) must be
#     defined in itself, in a layer below it, or outside ferry (libc, verbs);
#   - includes: a layer's sources include only their own folder's headers,
#     the headers of layers below, and the public headers (include/ferry/)
#     that belong to those layers.
#   scripts/check-layers.sh [BUILD_DIR]    (default build/; run after building)
# The layer graph is the one CMakeLists.txt builds (BUILD_DIR/ferry-layers.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:-build}
graph=$build/ferry-layers.txt
[ -f "$graph" ] || { echo "check-layers: $graph not found (configure and build first)"; exit 2; }

declare -A deps below
layers=()
while IFS=: read -r layer rest; do
    layers+=("$layer")
    deps[$layer]=$(echo "$rest" | tr ';' ' ')
done <"$graph"

# the layers below each layer: the transitive closure of its dependencies
closure() {
    local seen=" " todo=(${deps[$1]}) l
    while [ ${#todo[@]} -gt 0 ]; do
        l=${todo[0]}
        todo=("${todo[@]:1}")
        case "$seen" in *" $l "*) continue ;; esac
        seen+="$l "
        todo+=(${deps[$l]})
    done
    echo "$seen"
}
for l in "${layers[@]}"; do below[$l]=$(closure "$l"); done

# which layer owns each public header
declare -A header_layer=(
    [error.h]=util [log.h]=util [version.h]=util
    [types.h]=tensor [tensor.h]=tensor
    [engine.h]=exec
    [server.h]=server [client.h]=client
    [gguf.h]=gguf [vocab.h]=text [sampler.h]=text
    [model.h]=model [gen.h]=gen
)

bad=0
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for l in "${layers[@]}"; do
    lib=$build/libferry_$l.a
    [ -f "$lib" ] || { echo "check-layers: $lib missing"; exit 2; }
    nm -g --defined-only "$lib" 2>/dev/null | awk 'NF == 3 && $2 != "U" {print $3}' | sort -u >"$tmp/def.$l"
    nm -u "$lib" 2>/dev/null | awk '{print $NF}' | sort -u >"$tmp/undef.$l"
done
for l in "${layers[@]}"; do
    for other in "${layers[@]}"; do
        [ "$other" = "$l" ] && continue
        case "${below[$l]}" in *" $other "*) continue ;; esac
        # names l needs that only a layer it may not use defines
        comm -12 "$tmp/undef.$l" "$tmp/def.$other" | comm -23 - "$tmp/def.$l" >"$tmp/climb" || true
        if [ -s "$tmp/climb" ]; then
            echo "layer $l uses $other, which is not below it: $(head -n 5 "$tmp/climb" | tr '\n' ' ')"
            bad=1
        fi
    done
    # includes
    for f in src/"$l"/*.c src/"$l"/*.h; do
        [ -f "$f" ] || continue
        while IFS= read -r inc; do
            dir=${inc%%/*}
            name=${inc#*/}
            if [ "$dir" = ferry ]; then
                owner=${header_layer[$name]:-}
                if [ -z "$owner" ]; then
                    echo "$f: includes ferry/$name, a public header no layer owns (add it to check-layers.sh)"
                    bad=1
                    continue
                fi
            elif [ "$inc" = "$name" ]; then
                continue # same folder
            else
                owner=$dir
            fi
            [ "$owner" = "$l" ] && continue
            case "${below[$l]}" in *" $owner "*) continue ;; esac
            echo "$f: includes $inc, of layer $owner, which is not below $l"
            bad=1
        done < <(sed -n 's/^[[:space:]]*#[[:space:]]*include[[:space:]]*"\([^"]*\)".*/\1/p' "$f")
    done
done
if [ $bad -ne 0 ]; then
    echo "check-layers: a layer climbs (see above)"
    exit 1
fi
echo "check-layers: ${#layers[@]} layers, no call or include climbs"
