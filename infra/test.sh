#!/usr/bin/env bash
# `make test`: a private stack on free ports (cluster-mode redis, DynamoDB Local, moto), every cargo
# test against it, the template linted, then the functions served through `cargo lambda watch`:
# every sample event replayed through its real binary and the OpenAPI document checked against the
# served API by schemathesis; the Bitget double checked by ccxt's own client. Torn down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state=.local/test-$$
passed=0; failed=0; steps_failed=""
cleanup() {
  status=$?
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null || true
  [ -n "${double_pid:-}" ] && kill "$double_pid" 2>/dev/null || true
  infra/stack.sh down "$state"
  rm -rf "$state"
  # The total prints last, whether the run got through or stopped at a failing step.
  if [ "$status" != 0 ]; then
    [ "$failed" != 0 ] || failed=1
    steps_failed=" (stopped at: ${step:-setup})"
  fi
  echo "tests: $passed passed, $failed failed$steps_failed"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
infra/stack.sh up "$state"
source "$state/env"

step="cargo test"
echo "== cargo test (cluster-mode redis on ${REDIS_URL##*:}, DynamoDB Local on ${AWS_ENDPOINT_URL_DYNAMODB##*:}, moto on ${AWS_ENDPOINT_URL##*:})"
cargo test --workspace --locked 2>&1 | tee "$state/cargo-test.log" || {
  failed=$(grep -E '^test result:' "$state/cargo-test.log" | awk '{s+=$6} END {print s+0}')
  passed=$(grep -E '^test result:' "$state/cargo-test.log" | awk '{s+=$4} END {print s+0}')
  exit 1; }
passed=$(grep -E '^test result:' "$state/cargo-test.log" | awk '{s+=$4} END {print s+0}')

step="template lint"
echo "== template lint"
cfn-lint template.yaml
sam validate --lint --template template.yaml --region us-east-1
openapi-spec-validator docs/openapi.yaml

step="ccxt check"
echo "== the Bitget double, checked by ccxt's own bitget client"
cargo build -q --locked -p doubles --bin bitget-double -p shared --example bitget_read
double_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
target/debug/bitget-double --port "$double_port" > "$state/bitget-double.log" 2>&1 &
double_pid=$!
for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/"$double_port") 2>/dev/null && break; sleep 0.1; done
# The double's test keys (doubles::bitget::KEY, SECRET, PASSPHRASE).
BITGET_URL=http://127.0.0.1:$double_port BITGET_KEY=bg_test_key BITGET_SECRET=bg_test_secret \
  BITGET_PASSPHRASE="bg test passphrase" PROJECT_READER=target/debug/examples/bitget_read \
  python infra/ccxt_check.py | tee "$state/ccxt.log"
passed=$((passed + $(grep -c '^ok ' "$state/ccxt.log" || true)))

step="serving the functions"
echo "== serving every function (cargo lambda watch)"
# Live trading goes to the Bitget double; the per-address auth limit is out of schemathesis' way,
# and the conformance run's token outlives the run.
export TABLE_NAME="served-$$" OUTBOX_PATH="$PWD/$state/outbox.jsonl" IP_RATE_LIMIT_PER_MINUTE=100000 BITGET_BASE_URL="http://127.0.0.1:$double_port"
printf 'TABLE_NAME=%s\nOUTBOX_PATH=%s\nIP_RATE_LIMIT_PER_MINUTE=%s\nBITGET_BASE_URL=%s\nACCESS_TOKEN_TTL_SECS=3600\n' \
  "$TABLE_NAME" "$OUTBOX_PATH" "$IP_RATE_LIMIT_PER_MINUTE" "$BITGET_BASE_URL" >> "$state/lambda.env"
cargo run -q --bin ops -- create-table
cargo run -q --bin ops -- seed-secrets
cargo build -q --locked --workspace --bins
api_port=$(python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cargo lambda watch -A 127.0.0.1 -P "$api_port" --ignore-changes --env-file "$state/lambda.env" > "$state/watch.log" 2>&1 &
watch_pid=$!
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/"$api_port") 2>/dev/null && break; sleep 0.2; done

step="events replay"
echo "== replaying events/ through the function binaries (cargo lambda invoke)"
infra/replay.sh "$api_port" | tee "$state/replay.log"
passed=$((passed + $(awk '/^events:/ {print $2}' "$state/replay.log")))

step="schemathesis"
echo "== OpenAPI conformance: schemathesis --checks all against the served API"
python infra/conformance.py "http://127.0.0.1:$api_port" | tee "$state/conformance.log"
# One per API operation schemathesis tested (it exits non-zero on any failure).
passed=$((passed + $(awk '/Tested:/ {print $2}' "$state/conformance.log" | tail -1)))
step="done"
