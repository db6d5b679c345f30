#!/usr/bin/env bash
# `make bench`: criterion benchmarks (crypto without servers; handlers against a private local
# stack), then the guardian scale benchmark, the init-time comparison and live push latency.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.local/bench-criterion-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
cargo bench -p shared --bench crypto --bench handlers
bench/guardian_scale.sh
bench/init_time.sh
bench/live_latency.sh
