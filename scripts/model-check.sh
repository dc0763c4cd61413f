#!/usr/bin/env bash
# Checks docs/models/routers.pml with spin: no violation as written, and an assertion violated without each rule it marks `RULE:<name>`.
set -euo pipefail
command -v spin >/dev/null || { echo "model-check: needs spin (apt-get install spin)" >&2; exit 1; }
model=$(realpath "$(dirname "$0")/../docs/models/routers.pml")
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"

# Runs the model in $1 to the end of its state space; prints spin's
# verdict, and keeps its full output in out.txt.
check() {
    rm -f pan pan.* out.txt
    spin -a "$1" >/dev/null
    gcc -O2 -DSAFETY -w -o pan pan.c
    ./pan -m2000000 > out.txt || true
    if grep -q 'max search depth too small' out.txt; then
        echo "model-check: the search did not reach the end (raise -m)" >&2
        exit 1
    fi
    grep -E 'errors:|states, stored' out.txt | tr -s ' \t' ' ' | tr '\n' ' '
    echo
}

echo "as written:"
check "$model"
grep -q 'errors: 0' out.txt || { echo "model-check: a violation as written" >&2; exit 1; }
for rule in $(grep -o 'RULE:[a-z-]*' "$model" | cut -d: -f2 | sort -u); do
    # Without the rule: its condition never holds.
    sed -E "/RULE:$rule/ s/:: [^-]*->/:: false ->/" "$model" > without.pml
    ! cmp -s "$model" without.pml || { echo "model-check: RULE:$rule changed nothing" >&2; exit 1; }
    echo "without $rule:"
    check "$work/without.pml"
    grep -q 'assertion violated' out.txt || {
        echo "model-check: no violation without $rule: the model does not need it" >&2
        exit 1
    }
done
echo "model-check: passed"
