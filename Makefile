# The two commands that matter: `make dev` (a working local API) and `make test` (every test).
SHELL := /bin/bash
export PATH := $(CURDIR)/.venv/bin:$(PATH)
export SAM_CLI_TELEMETRY := 0

.PHONY: install dev test build lint fmt bench sweep strategy candles price kill-switch admin admin-revoke clean

install:
	@infra/install.sh

dev: install
	@infra/dev.sh

test: install
	@infra/test.sh

lint: install
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings
	cfn-lint template.yaml

fmt:
	cargo fmt --all

# sam build: one workspace `cargo lambda build --release` (zig from .venv) serves every function;
# each function's `makefile` build method (build-<LogicalId> below) copies its bootstrap. The size
# of every bootstrap is checked against its budget.
build: install
	@infra/build.sh

build-%:
	@infra/lambda-artifact.sh $* "$(ARTIFACTS_DIR)"

bench: install
	@infra/bench.sh

# Operator commands against the running `make dev` stack (.local/dev/env).
sweep:
	@source .local/dev/env && cargo lambda invoke sweep --data-file events/schedule.json --invoke-address 127.0.0.1 --invoke-port 9000

strategy:
	@source .local/dev/env && cargo lambda invoke strategy --data-ascii '{}' --invoke-address 127.0.0.1 --invoke-port 9000

# A candle series for the Bitget double (CSV: time,open,high,low,close,volume; time in ms or RFC 3339).
candles:
	@test -n "$(SYMBOL)" -a -n "$(FILE)" || { echo "usage: make candles SYMBOL=BTCUSDT FILE=candles.csv"; exit 2; }
	@source .local/dev/env && cargo run -q --bin ops -- load-candles $(SYMBOL) $(FILE)

# The paper mark, and a tick on the double's candle series (its current minute moves or starts).
price:
	@test -n "$(SYMBOL)" -a -n "$(PRICE)" || { echo "usage: make price SYMBOL=BTCUSDT PRICE=65000"; exit 2; }
	@source .local/dev/env && cargo run -q --bin ops -- set-price $(SYMBOL) $(PRICE)

kill-switch:
	@test "$(STATE)" = on -o "$(STATE)" = off || { echo "usage: make kill-switch STATE=on|off [REASON=...]"; exit 2; }
	@source .local/dev/env && cargo run -q --bin ops -- kill-switch $(STATE) $(REASON)

# The admin role for a verified account (the admin routes also need its two-factor sign-in).
admin:
	@test -n "$(EMAIL)" || { echo "usage: make admin EMAIL=you@example.com"; exit 2; }
	@source .local/dev/env && cargo run -q --bin ops -- grant-admin $(EMAIL)

admin-revoke:
	@test -n "$(EMAIL)" || { echo "usage: make admin-revoke EMAIL=you@example.com"; exit 2; }
	@source .local/dev/env && cargo run -q --bin ops -- revoke-admin $(EMAIL)

clean:
	rm -rf .local .aws-sam

# The same operator commands against a deployed stack (AWS credentials from your environment).
aws-init-secrets:
	@infra/aws-ops.sh $(STACK) init-secrets

aws-rotate-jwt-keys:
	@infra/aws-ops.sh $(STACK) rotate-jwt-keys

# Once, after deploying the release that added order and fill history (see README).
aws-backfill-history:
	@infra/aws-ops.sh $(STACK) backfill-history

aws-kill-switch:
	@test "$(STATE)" = on -o "$(STATE)" = off || { echo "usage: make aws-kill-switch STACK=trading-bot-prod STATE=on|off"; exit 2; }
	@infra/aws-ops.sh $(STACK) kill-switch $(STATE) $(REASON)

aws-admin:
	@test -n "$(STACK)" -a -n "$(EMAIL)" || { echo "usage: make aws-admin STACK=trading-bot-prod EMAIL=you@example.com"; exit 2; }
	@infra/aws-ops.sh $(STACK) grant-admin $(EMAIL)

aws-admin-revoke:
	@test -n "$(STACK)" -a -n "$(EMAIL)" || { echo "usage: make aws-admin-revoke STACK=trading-bot-prod EMAIL=you@example.com"; exit 2; }
	@infra/aws-ops.sh $(STACK) revoke-admin $(EMAIL)
