#!/usr/bin/env bash
# `make build`: every function's bootstrap in one workspace build (infra/lambda-build.sh), then
# `sam build` (BuildMethod: makefile, each function's `make build-<Id>` copying its bootstrap),
# then every bootstrap's size against its budget. Records the wall and CPU time and the sizes in
# .local/bench/build.tsv for bench/RESULTS.md.
set -euo pipefail
export LC_ALL=C
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
start=$(date +%s)
infra/lambda-build.sh
sam build --template template.yaml --build-in-source --no-cached
wall=$(( $(date +%s) - start ))
# The children's user and system time: every rustc, linker and sam process above (`times` runs
# in this shell, not a pipeline's subshell, whose counts would start at zero).
mkdir -p .local/bench
times > .local/bench/build-times
cpu=$(tail -1 .local/bench/build-times | awk '{ split($1, u, "m"); split($2, s, "m"); printf "%.0f", u[1] * 60 + u[2] + s[1] * 60 + s[2] }')
status=0
infra/bootstrap-sizes.sh .aws-sam/build || status=$?
sizes=$(stat -c %s .aws-sam/build/*/bootstrap | sort -n)
printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$(git rev-parse --short HEAD)" "$wall" "$cpu" "$(echo "$sizes" | wc -l)" \
  "$(echo "$sizes" | head -1 | awk '{printf "%.2f", $1 / 1048576}')" "$(echo "$sizes" | tail -1 | awk '{printf "%.2f", $1 / 1048576}')" \
  > .local/bench/build.tsv
echo "make build: ${wall} s wall, ${cpu} s CPU"
# Over budget is reported, not fatal: the artifacts are still what `sam deploy` ships.
[ "$status" = 0 ] || echo "make build: some bootstraps are over their size budget (above)" >&2
