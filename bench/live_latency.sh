#!/usr/bin/env bash
# Live push on a private local stack (cluster-mode redis, DynamoDB Local and its stream, moto):
# stop request → push on a second connection (median, p90, max of 20), and the broadcast
# function's own time per stream record. Release build.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install.sh
state=.local/live-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
export RUST_LOG=warn
cargo run -q --release -p shared --example live_latency
