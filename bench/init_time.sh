#!/usr/bin/env bash
# Init time of every function: process start to its first poll of the Lambda Runtime API
# (GET /2018-06-01/runtime/invocation/next), against a stand-in Runtime API, median and p90 of
# RUNS (20) starts each, next to a hello-world lambda_http binary built with the same profile.
# Each function's warm-up round trips (the secrets it loads, Redis's PING) are read off its
# main.rs builder chain and timed against the same local stack, so the gap to "hello world +
# the slowest round trip" is visible (App::ready makes them at once). Writes .local/bench/init.tsv for bench/results.sh.
# Uses the bootstraps of `infra/lambda-build.sh` (target/lambda), building them if needed.
set -euo pipefail
cd "$(dirname "$0")/.."
infra/install.sh
state=.local/init-$$
trap 'infra/stack.sh down "$state"; rm -rf "$state"' EXIT
infra/stack.sh up "$state"
source "$state/env"
export TABLE_NAME="init-$$"
cargo run -q --bin ops -- create-table >/dev/null
cargo run -q --bin ops -- seed-secrets >/dev/null
# LAMBDA_DIR: bootstraps built elsewhere (a CARGO_TARGET_DIR of their own) instead of building.
lambda_dir=${LAMBDA_DIR:-target/lambda}
[ -n "${LAMBDA_DIR:-}" ] || infra/lambda-build.sh
CARGO_TARGET_DIR=$(dirname "$lambda_dir") .venv/bin/cargo-lambda lambda build --release --disable-optimizations --quiet --example hello_lambda -p shared
mkdir -p .local/bench
RUNS=${RUNS:-20} .venv/bin/python - "$lambda_dir/hello_lambda/bootstrap" functions "$lambda_dir" > .local/bench/init.tsv <<'PY'
import http.server, os, re, socket, statistics, subprocess, sys, threading, time
import boto3

hello, functions_dir, lambda_dir = sys.argv[1:4]
runs = int(os.environ.get("RUNS", "20"))

def first_poll_ms(binary):
    ready = threading.Event()
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path.endswith("/runtime/invocation/next"):
                ready.set()
            time.sleep(0.2)
        def log_message(self, *args):
            pass
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = dict(os.environ, AWS_LAMBDA_RUNTIME_API=f"127.0.0.1:{server.server_address[1]}",
               AWS_LAMBDA_FUNCTION_NAME="bench", AWS_LAMBDA_FUNCTION_MEMORY_SIZE="256",
               AWS_LAMBDA_FUNCTION_VERSION="1", AWS_LAMBDA_LOG_STREAM_NAME="bench", AWS_LAMBDA_LOG_GROUP_NAME="bench",
               RUST_LOG="error", WS_MANAGEMENT_URL="http://127.0.0.1:9")
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = ready.wait(10)
    elapsed = (time.perf_counter() - start) * 1000
    proc.kill(); proc.wait(); server.shutdown()
    return elapsed if ok else None

def summary(samples):
    samples = sorted(samples)
    return statistics.median(samples), samples[max(0, int(len(samples) * 0.9) - 1)]

# One warm-up round trip of each kind, timed the way init makes it: on a fresh connection (a
# new client each time, made before the clock starts).
def secret_ms():
    secrets = boto3.client("secretsmanager", endpoint_url=os.environ["AWS_ENDPOINT_URL"])
    t = time.perf_counter(); secrets.get_secret_value(SecretId="trading-bot/local/jwt-keys"); return (time.perf_counter() - t) * 1000
def ping_ms():
    host, port = os.environ["REDIS_URL"].removeprefix("redis://").rstrip("/").split(":")
    t = time.perf_counter()
    with socket.create_connection((host, int(port))) as s:
        s.sendall(b"*1\r\n$4\r\nPING\r\n"); s.recv(64)
    return (time.perf_counter() - t) * 1000
trip_ms = {"secret": statistics.median([secret_ms() for _ in range(runs)]), "redis": statistics.median([ping_ms() for _ in range(runs)])}
steps = {".keys()": "secret", ".vault()": "secret", ".telegram()": "secret", ".telegram_webhook()": "secret", ".redis()": "redis"}

hello_med, hello_p90 = summary([first_poll_ms(hello) for _ in range(runs)])
print(f"hello_lambda\t{hello_med:.1f}\t{hello_p90:.1f}\t\t0\t{os.path.getsize(hello) / 1048576:.2f}")
for name in sorted(os.listdir(functions_dir)):
    binary = os.path.join(lambda_dir, name, "bootstrap")
    main = open(os.path.join(functions_dir, name, "src", "main.rs")).read()
    trips = [steps[s] for s in re.findall(r"\.(?:keys|vault|telegram_webhook|telegram|redis)\(\)", main)]
    # App::ready makes the warm-up trips at the same time: init waits for the slowest one.
    expected = hello_med + max((trip_ms[t] for t in trips), default=0.0)
    samples = [first_poll_ms(binary) for _ in range(runs)]
    if None in samples:
        print(f"{name}\tfailed\t\t\t{len(trips)}\t")
        continue
    med, p90 = summary(samples)
    print(f"{name}\t{med:.1f}\t{p90:.1f}\t{expected:.1f}\t{len(trips)}\t{os.path.getsize(binary) / 1048576:.2f}")
print(f"# {runs} starts each; warm-up round trip medians: Secrets Manager GetSecretValue {trip_ms['secret']:.1f} ms, Redis connect and PING {trip_ms['redis']:.1f} ms")
PY
column -t -s $'\t' .local/bench/init.tsv
