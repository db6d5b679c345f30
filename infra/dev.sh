#!/usr/bin/env bash
# `make dev`: the local stack (cluster-mode redis-server, DynamoDB Local and moto on loopback), the table from template.yaml,
# fresh development secrets, every HTTP function at http://127.0.0.1:9000 through
# `cargo lambda watch` and its router, the WebSocket API at ws://127.0.0.1:9001 with the table's
# stream feeding the broadcast function (doubles' live-gateway), and the guardian invoked every
# 60 s. Ctrl-C stops it all.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state=.local/dev
infra/stack.sh down "$state" 2>/dev/null || true
cleanup() {
  trap - EXIT INT TERM
  [ -n "${sweeper_pid:-}" ] && kill "$sweeper_pid" 2>/dev/null || true
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null || true
  [ -n "${live_pid:-}" ] && kill "$live_pid" 2>/dev/null || true
  [ -n "${double_pid:-}" ] && kill "$double_pid" 2>/dev/null || true
  infra/stack.sh down "$state"
  echo "local stack stopped"
}
trap cleanup EXIT INT TERM
infra/stack.sh up "$state"
source "$state/env"
export OUTBOX_PATH="$PWD/.local/outbox.jsonl" IP_RATE_LIMIT_PER_MINUTE=1000 CORS_ALLOWED_ORIGINS="http://localhost:3000"
printf 'OUTBOX_PATH=%s\nIP_RATE_LIMIT_PER_MINUTE=1000\nCORS_ALLOWED_ORIGINS=%s\nRUST_LOG=info\n' "$OUTBOX_PATH" "$CORS_ALLOWED_ORIGINS" >> "$state/lambda.env"
# The operator commands (make price, make kill-switch, make sweep) read the same environment.
printf 'export OUTBOX_PATH=%s\n' "$OUTBOX_PATH" >> "$state/env"
cargo build --workspace
# Live mode against the Bitget double (keys below), so nothing real is ever called from here.
double_port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/bitget-double --port "$double_port" > "$state/bitget-double.log" 2>&1 &
double_pid=$!
printf 'BITGET_BASE_URL=http://127.0.0.1:%s\n' "$double_port" >> "$state/lambda.env"
# The broadcast function pushes through the local WebSocket gateway's Management API.
printf 'WS_MANAGEMENT_URL=http://127.0.0.1:9001\n' >> "$state/lambda.env"
printf 'export WS_URL=ws://127.0.0.1:9001\n' >> "$state/env"
# make candles / make price load and extend the double's candle series through it.
printf 'export BITGET_BASE_URL=http://127.0.0.1:%s\n' "$double_port" >> "$state/env"
cargo run -q --bin ops -- create-table
cargo run -q --bin ops -- seed-secrets
cargo run -q --bin ops -- set-price BTCUSDT 65000 >/dev/null
cargo run -q --bin ops -- set-price ETHUSDT 3200 >/dev/null
cargo lambda watch -A 127.0.0.1 -P 9000 --env-file "$state/lambda.env" > "$state/lambda.log" 2>&1 &
watch_pid=$!
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/9000) 2>/dev/null && break; sleep 0.2; done
# API Gateway's WebSocket part and the stream's event source mapping, invoking the same function
# binaries through the runtime emulator above.
target/debug/live-gateway --port 9001 --runtime http://127.0.0.1:9000 --table "${TABLE_NAME:-trading-bot-local}" \
  --dead-letters "$state/broadcast-dlq.jsonl" > "$state/live-gateway.log" 2>&1 &
live_pid=$!
if [ -d functions/sweep ]; then
  ( while sleep 60; do
      cargo lambda invoke sweep --data-file events/schedule.json --invoke-address 127.0.0.1 --invoke-port 9000 >> "$state/sweep.log" 2>&1 || true
      # No time in the event: the strategy runner decides on the candles closed now.
      cargo lambda invoke strategy --data-ascii '{}' --invoke-address 127.0.0.1 --invoke-port 9000 >> "$state/strategy.log" 2>&1 || true
    done ) &
  sweeper_pid=$!
fi
cat <<INFO

  API          http://127.0.0.1:9000   (try: curl -s 127.0.0.1:9000/api/v1/health)
  WebSocket    ws://127.0.0.1:9001/?token=<access token>   (WS_URL in $state/env; log $state/live-gateway.log)
  Lambda logs  $state/lambda.log
  Guardian     invoked every 60 s, answers in $state/sweep.log
  Strategies   invoked every 60 s, answers in $state/strategy.log (make candles SYMBOL=BTCUSDT FILE=x.csv loads a series)
  Mail outbox  $OUTBOX_PATH
  Bitget       double at http://127.0.0.1:$double_port (keys: bg_test_key / bg_test_secret / "bg test passphrase")
  Redis        $REDIS_URL (cluster mode)   DynamoDB Local  $AWS_ENDPOINT_URL_DYNAMODB   Secrets/SES (moto)  $AWS_ENDPOINT_URL
  Ctrl-C stops everything.

INFO
wait "$watch_pid"
