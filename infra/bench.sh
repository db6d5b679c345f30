#!/usr/bin/env bash
# `make bench`: criterion benchmarks (crypto without servers; handlers against a private local
# stack), each route's own CPU per request, then the guardian scale benchmark, the init time and
# size of every function, live push latency, and bench/RESULTS.md from the figures.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.local/bench-criterion-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
cargo bench -p shared --bench crypto --bench handlers
N=${N:-1000} cargo bench -p shared --bench route_cpu
bench/guardian_scale.sh
bench/init_time.sh
bench/live_latency.sh
bench/results.sh
cat bench/RESULTS.md
