#!/usr/bin/env bash
# Replays every file in events/ through the real function binary: `cargo lambda watch` runs the
# Runtime API emulator, `cargo lambda invoke --data-file` sends the event (the Docker-free stand-in
# for `sam local invoke`). events/<function>[.<case>].json names the function; the invocation must
# succeed and an HTTP answer must not be a 5xx.
set -euo pipefail
cd "$(dirname "$0")/.."
state=${1:?state dir with lambda.env}
port=$(.venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
cargo lambda watch -A 127.0.0.1 -P "$port" --ignore-changes --env-file "$state/lambda.env" > "$state/watch.log" 2>&1 &
watch_pid=$!
trap 'kill $watch_pid 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.2; done
fail=0; count=0
for event in events/*.json; do
  name=$(basename "$event" .json); function=${name%%.*}; [ "$name" = schedule ] && function=sweep
  out=$(cargo lambda invoke "$function" --data-file "$event" --invoke-port "$port" --invoke-address 127.0.0.1 2>&1) || {
    echo "FAIL $event: invoke failed: $out"; fail=$((fail+1)); continue; }
  status=$(printf '%s' "$out" | .venv/bin/python -c 'import json,sys; d=json.load(sys.stdin); print(d.get("statusCode", "-"))' 2>/dev/null || echo "?")
  if [ "$status" = "?" ] || [ "${status:0:1}" = 5 ]; then
    echo "FAIL $event: status $status: ${out:0:400}"; fail=$((fail+1))
  else
    echo "ok   $event -> $status"
  fi
  count=$((count+1))
done
echo "events: $((count-fail)) passed, $fail failed"
[ "$fail" = 0 ]
