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
# The round trips each hot route waits on, as the route test counts them. Before route_cpu, whose
# thousand sign-ins a minute from one source would leave the test that minute's rate limit spent.
mkdir -p .local/bench
cargo test -p shared --test round_trips -- --nocapture --test-threads=1 2>&1 \
  | grep -o '[a-z]*: [0-9]* round trips .*' | sed 's/^\([a-z]*\): \([0-9]*\) round trips \(.*\)$/\1\t\2\t\3/' > .local/bench/trips.tsv
# Each route_cpu run on a fresh stack: DynamoDB Local slows down as it fills.
infra/stack.sh down "$state"
infra/stack.sh up "$state"
source "$state/env"
N=${N:-1000} cargo bench -p shared --bench route_cpu
# The same at cargo's default release optimisation, for the profile's cost (bench/results.sh
# sets the two side by side); its own target dir, so the release build stays as it is.
infra/stack.sh down "$state"
infra/stack.sh up "$state"
source "$state/env"
CARGO_TARGET_DIR=target/opt3 CARGO_PROFILE_RELEASE_OPT_LEVEL=3 CARGO_PROFILE_RELEASE_CODEGEN_UNITS=16 \
  CARGO_PROFILE_BENCH_OPT_LEVEL=3 CARGO_PROFILE_BENCH_CODEGEN_UNITS=16 \
  N=${N:-1000} CPU_TSV=cpu-opt3.tsv cargo bench -p shared --bench route_cpu
bench/guardian_scale.sh
bench/init_time.sh
bench/live_latency.sh
bench/results.sh
cat bench/RESULTS.md
