#!/usr/bin/env bash
# Checks that every citation of a project document resolves.
#
#   scripts/check-citations.sh
#
# Comments and documentation cite the references in docs/ as
# "docs/<name>.md <section>", e.g. "docs/ops.md B.14",
# "docs/types.md sections 4-7", "docs/rpc-protocol.md sections 2, 4, 5 and 6".
# This script scans src/, include/, tests/, fuzz/, bench/, tools/, scripts/,
# docs/ and README.md and fails (exit 1), naming file:line, when
#   - a cited docs/<name>.md does not exist (a relative "../docs/<name>.md"
#     is resolved from the citing file's directory);
#   - a cited section has no heading in that document: a heading "## 5. ...",
#     "### 5.0 ...", "### B.14 ..." or "## Part A. ..." defines 5, 5.0, B.14, A;
#   - a document is cited without its path ("ops.md B.14", "types.md"), or
#     with the old wording ("spec section", "the spec's section", "fact sheet").
# Section lists may use "section"/"sections"/"§", commas, "and" and integer
# ranges ("4-7"). Exit 0 when everything resolves.
set -u
cd "$(dirname "$0")/.." || exit 2

self="check-citations.sh"
scan=()
for p in src include tests fuzz bench tools scripts docs README.md; do
    [ -e "$p" ] && scan+=("$p")
done
[ -d docs ] || { echo "check-citations: no docs/ directory" >&2; exit 2; }

fail=0

# 1. Citations without the document's path, and the old wording.
bare=$(grep -rInE --exclude="$self" \
    '(^|[^A-Za-z0-9_./-])(ops|types|rpc-protocol|ggml-rpc-protocol|ggml-rpc-facts)\.md' \
    "${scan[@]}" 2>/dev/null)
if [ -n "$bare" ]; then
    printf '%s\n' "$bare" | while IFS= read -r l; do
        echo "${l%%:*}:$(printf '%s' "$l" | cut -d: -f2): document cited without its path (write docs/<name>.md)"
    done
    fail=1
fi
old=$(grep -rInE --exclude="$self" "spec('s)? section|fact sheet" "${scan[@]}" 2>/dev/null)
if [ -n "$old" ]; then
    printf '%s\n' "$old" | while IFS= read -r l; do
        echo "${l%%:*}:$(printf '%s' "$l" | cut -d: -f2): cites an unnamed specification (write docs/<name>.md <section>)"
    done
    fail=1
fi

# 2. Every "docs/<name>.md [section list]" must name an existing document
#    and existing headings. Headings: "<doc>|<id>" per line.
headings=$(for f in docs/*.md; do
    awk -v doc="$(basename "$f")" '
        /^#+[ \t]/ {
            s = $0
            sub(/^#+[ \t]+/, "", s)
            sub(/^Part[ \t]+/, "", s)
            n = split(s, w, /[ \t]+/)
            id = w[1]
            sub(/[.:]$/, "", id)
            if (id ~ /^([A-Z]|[A-Z]\.[0-9]+|[0-9]+(\.[0-9]+)*)$/) print doc "|" id
        }' "$f"
done)

cites=$(grep -rInE --exclude="$self" 'docs/[A-Za-z0-9_-]+\.md' "${scan[@]}" 2>/dev/null)

out=$(printf '%s\n' "$cites" | awk -v headings="$headings" '
    function exists(path,    line, r) {
        if (path in seen) return seen[path]
        r = (getline line < path) >= 0
        if (r) close(path)
        seen[path] = r
        return r
    }
    function dirname(p) { if (p !~ /\//) return "."; sub(/\/[^\/]*$/, "", p); return p }
    BEGIN {
        n = split(headings, h, "\n")
        for (i = 1; i <= n; i++) if (h[i] != "") have[h[i]] = 1
        ID = "^([A-D]\\.[0-9]+|[0-9]+(\\.[0-9]+)?)"
    }
    $0 == "" { next }
    {
        # grep -n output: file:line:text
        file = $0; sub(/:.*/, "", file)
        rest = substr($0, length(file) + 2)
        lineno = rest; sub(/:.*/, "", lineno)
        text = substr(rest, length(lineno) + 2)
        while (match(text, /(\.\.\/)*docs\/[A-Za-z0-9_-]+\.md/)) {
            ref = substr(text, RSTART, RLENGTH)
            text = substr(text, RSTART + RLENGTH)
            doc = ref; sub(/.*\//, "", doc)
            path = (ref ~ /^\.\.\//) ? dirname(file) "/" ref : ref
            if (!exists(path)) {
                printf "%s:%s: cites %s, which does not exist\n", file, lineno, ref
                bad = 1
                continue
            }
            # the section list right after the name, if any
            t = text
            if (!match(t, /^[ \t]+(sections?[ \t]+|§[ \t]*)?/)) continue
            t = substr(t, RLENGTH + 1)
            while (match(t, ID)) {
                id = substr(t, RSTART, RLENGTH)
                t = substr(t, RLENGTH + 1)
                ids[1] = id; k = 1
                if (match(t, /^(-|–)[0-9]+/) && id ~ /^[0-9]+$/) {
                    hi = substr(t, RSTART, RLENGTH); sub(/^(-|–)/, "", hi)
                    t = substr(t, RLENGTH + 1)
                    k = 0
                    for (v = id + 0; v <= hi + 0 && k < 100; v++) ids[++k] = v ""
                }
                for (j = 1; j <= k; j++)
                    if (!((doc "|" ids[j]) in have)) {
                        printf "%s:%s: cites %s section %s, which has no such heading\n", file, lineno, ref, ids[j]
                        bad = 1
                    }
                if (!match(t, /^([ \t]*,[ \t]*(and[ \t]+)?|[ \t]+and[ \t]+)/)) break
                t = substr(t, RLENGTH + 1)
            }
        }
    }
    END { exit bad }
')
[ $? -ne 0 ] && fail=1
[ -n "$out" ] && printf '%s\n' "$out"

if [ "$fail" -ne 0 ]; then
    echo "check-citations: FAILED" >&2
    exit 1
fi
echo "check-citations: all citations resolve"
exit 0
