#!/usr/bin/env bash
# `make test`: a private stack on free ports, every cargo test against it, the template linted,
# every sample event replayed through its real function binary; everything torn down on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
state=.local/test-$$
cleanup() {
  [ -n "${watch_pid:-}" ] && kill "$watch_pid" 2>/dev/null || true
  infra/stack.sh down "$state"
  rm -rf "$state"
}
trap cleanup EXIT INT TERM
infra/stack.sh up "$state"
source "$state/env"

echo "== cargo test (cluster-mode redis on ${REDIS_URL##*:}, DynamoDB Local on ${AWS_ENDPOINT_URL_DYNAMODB##*:}, moto on ${AWS_ENDPOINT_URL##*:})"
cargo test --workspace --locked 2>&1 | tee "$state/cargo-test.log"
passed=$(grep -E '^test result:' "$state/cargo-test.log" | awk '{s+=$4} END {print s+0}')
failed=$(grep -E '^test result:' "$state/cargo-test.log" | awk '{s+=$6} END {print s+0}')

echo "== template lint"
cfn-lint template.yaml
sam validate --lint --template template.yaml --region us-east-1
openapi-spec-validator docs/openapi.yaml

echo "== replaying events/ through the function binaries (cargo lambda watch + invoke)"
export TABLE_NAME="replay-$$" OUTBOX_PATH="$PWD/$state/outbox.jsonl" IP_RATE_LIMIT_PER_MINUTE=1000
printf 'TABLE_NAME=%s\nOUTBOX_PATH=%s\nIP_RATE_LIMIT_PER_MINUTE=1000\n' "$TABLE_NAME" "$OUTBOX_PATH" >> "$state/lambda.env"
cargo run -q --bin ops -- create-table
cargo run -q --bin ops -- seed-secrets
infra/replay.sh "$state" | tee "$state/replay.log"
replayed=$(awk '/^events:/ {print $2}' "$state/replay.log")
echo "== summary: cargo test $passed passed, $failed failed; events replayed $replayed"
echo "tests: $((passed + replayed)) passed, $failed failed"
