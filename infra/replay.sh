#!/usr/bin/env bash
# Replays every file in events/ through the real function binary: `cargo lambda watch` runs the
# Runtime API emulator, `cargo lambda invoke --data-file` sends the event (the Docker-free stand-in
# for `sam local invoke`). events/<function>[.<case>].json names the function; the invocation must
# succeed and an HTTP answer must not be a 5xx. A `*.non-utf8.json` event carries a base64 body that
# is not UTF-8 and must be answered 400 `invalid_json`.
# `infra/replay.sh PORT`: the port of a running `cargo lambda watch`.
set -euo pipefail
cd "$(dirname "$0")/.."
port=${1:?port of cargo lambda watch}
fail=0; count=0
for event in events/*.json; do
  name=$(basename "$event" .json); function=${name%%.*}; [ "$function" = schedule ] && function=sweep
  out=$(cargo lambda invoke "$function" --data-file "$event" --invoke-port "$port" --invoke-address 127.0.0.1 2>&1) || {
    echo "FAIL $event: invoke failed: $out"; fail=$((fail+1)); count=$((count+1)); continue; }
  status=$(printf '%s' "$out" | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d.get("statusCode", "-"))' 2>/dev/null || echo "?")
  code=$(printf '%s' "$out" | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(json.loads(d.get("body") or "{}").get("code", "-"))' 2>/dev/null || echo "?")
  if [[ $name == *.non-utf8 ]] && [ "$status/$code" != "400/invalid_json" ]; then
    echo "FAIL $event: expected 400 invalid_json, got $status $code"; fail=$((fail+1))
  elif [ "$status" = "?" ] || [ "${status:0:1}" = 5 ]; then
    echo "FAIL $event: status $status: ${out:0:400}"; fail=$((fail+1))
  else
    echo "ok   $event -> $status $code"
  fi
  count=$((count+1))
done
echo "events: $((count-fail)) passed, $fail failed"
[ "$fail" = 0 ]
