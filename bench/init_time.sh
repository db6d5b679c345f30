#!/usr/bin/env bash
# Init time of a function: process start to its first poll of the Lambda Runtime API
# (GET /2018-06-01/runtime/invocation/next), measured against a stand-in Runtime API, for the
# health function (which loads its secret and pings Redis during init) next to a hello-world
# lambda_http binary built with the same release profile. Median of RUNS (20) starts each.
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
cargo build -q --release --bin health -p health
cargo build -q --release --example hello_lambda -p shared
RUNS=${RUNS:-20} .venv/bin/python - target/release/health target/release/examples/hello_lambda <<'PY'
import http.server, os, socket, statistics, subprocess, sys, threading, time

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
               AWS_LAMBDA_FUNCTION_VERSION="1", AWS_LAMBDA_LOG_STREAM_NAME="bench", AWS_LAMBDA_LOG_GROUP_NAME="bench", RUST_LOG="error")
    start = time.perf_counter()
    proc = subprocess.Popen([binary], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ok = ready.wait(10)
    elapsed = (time.perf_counter() - start) * 1000
    proc.kill(); proc.wait(); server.shutdown()
    if not ok:
        sys.exit(f"{binary} never polled the Runtime API")
    return elapsed

runs = int(os.environ.get("RUNS", "20"))
for binary in sys.argv[1:]:
    samples = [first_poll_ms(binary) for _ in range(runs)]
    size = os.path.getsize(binary) / 1024 / 1024
    print(f"{os.path.basename(binary):>12}: init median {statistics.median(samples):6.1f} ms  p90 {sorted(samples)[int(runs*0.9)-1]:6.1f} ms  binary {size:5.1f} MiB")
PY
