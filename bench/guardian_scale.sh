#!/usr/bin/env bash
# Scale benchmark of the guardian: 10,000 running paper bots with open positions in a private
# local stack (redis-server + moto), one sweep. Prints wall time, backend calls by kind and peak
# memory. BOTS=1000 bench/guardian_scale.sh for a quicker look.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install.sh
state=.local/bench-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
export BOTS=${BOTS:-10000} RUST_LOG=warn
cargo run -q --release -p shared --example guardian_scale
