#!/usr/bin/env bash
# Scale benchmark of the guardian on DynamoDB Local (AWS's own engine): BOTS (default 10,000)
# running paper bots with open positions in a private local stack, 1 % past their stop: the
# deployed fan-out (one run per shard, all at once), then one run over every shard. Prints wall
# times, backend calls by kind and peak memory.
# BOTS=100000 FAN_OUT_ONLY=1 bench/guardian_scale.sh for the 100k figure.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install.sh
state=.local/bench-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
export BOTS=${BOTS:-10000} RUST_LOG=warn
cargo run -q --profile scale -p shared --example guardian_scale
