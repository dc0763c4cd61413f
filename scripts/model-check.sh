#!/usr/bin/env bash
# Checks docs/models/routers.pml with spin: no violation as written, and one without each rule it marks `RULE:<name>`.
set -euo pipefail
command -v spin >/dev/null || { echo "model-check: needs spin (apt-get install spin)" >&2; exit 1; }
model=$(realpath "$(dirname "$0")/../docs/models/routers.pml")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Runs the model in $1; prints spin's verdict line, and returns 0 if it
# found no violation.
check() {
    spin -a "$1" >/dev/null
    gcc -O2 -DSAFETY -w -o pan pan.c
    local out
    out=$(./pan -m2000000)
    echo "$out" | grep -E 'errors:|states, stored' | tr -s ' \t' ' ' | tr '\n' ' '
    echo
    echo "$out" | grep -q 'errors: 0'
}

echo "as written:"
check "$model" || { echo "model-check: a violation as written" >&2; exit 1; }
for rule in $(grep -o 'RULE:[a-z-]*' "$model" | cut -d: -f2 | sort -u); do
    # Without the rule: its condition never holds.
    sed -E "/RULE:$rule/ s/:: [^-]*->/:: false ->/" "$model" > without.pml
    echo "without $rule:"
    if check without.pml; then
        echo "model-check: no violation without $rule: the model does not need it" >&2
        exit 1
    fi
done
echo "model-check: passed"
