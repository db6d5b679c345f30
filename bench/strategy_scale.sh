#!/usr/bin/env bash
# Scale benchmark of the strategy runner and the backtest on DynamoDB Local: BOTS (default
# 10,000) running paper ema_cross bots, one run per shard at once at a quiet minute and at a
# minute where every bot crosses, then a 10,000-candle backtest. Prints wall times and calls.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install.sh
state=.local/bench-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
export BOTS=${BOTS:-10000} RUST_LOG=warn
cargo run -q --profile scale -p shared --example strategy_scale
