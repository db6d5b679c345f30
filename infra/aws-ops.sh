#!/usr/bin/env bash
# Operator commands against a deployed stack, with your AWS credentials:
#   infra/aws-ops.sh STACK init-secrets | rotate-jwt-keys | kill-switch on|off [REASON] | grant-admin EMAIL | backfill-history
# It reads the table and secret ARNs from the stack's outputs and runs the same `ops` binary that
# `make dev` uses against the local emulator.
set -euo pipefail
cd "$(dirname "$0")/.."
stack=${1:?stack name, e.g. trading-bot-prod}; shift
outputs=$(.venv/bin/sam list stack-outputs --stack-name "$stack" --output json)
output() { printf '%s' "$outputs" | .venv/bin/python -c "import json,sys; print(next(o['OutputValue'] for o in json.load(sys.stdin) if o['OutputKey']==sys.argv[1]))" "$1"; }
export APP_ENV=dev REDIS_URL=rediss://unused:6379
export TABLE_NAME=$(output TableName)
export JWT_SECRET_ID=$(output AuthSecretArn)
export ENCRYPTION_SECRET_ID=$(output EncryptionSecretArn)
export TELEGRAM_SECRET_ID=$(output TelegramSecretArn)
exec cargo run -q --release --bin ops -- "$@"
