#!/usr/bin/env bash
# Starts a private local stack on free loopback ports and writes its environment to $1/env:
# redis-server, a TLS redis-server with a CA generated here, and the moto server (DynamoDB,
# Secrets Manager, SES). `infra/stack.sh up DIR` / `infra/stack.sh down DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?up|down}; dir=${2:?state directory}

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2; return 1
}

case "$cmd" in
up)
  mkdir -p "$dir"
  redis_port=$(free_port); tls_port=$(free_port); moto_port=$(free_port)
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize yes \
    --pidfile "$dir/redis.pid" --logfile "$dir/redis.log"
  # A CA and a server certificate for the rediss:// test, made fresh for every run.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$tls_port" --tls-cert-file "$dir/server.pem" \
    --tls-key-file "$dir/server.key" --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients no \
    --save "" --appendonly no --daemonize yes --pidfile "$dir/redis-tls.pid" --logfile "$dir/redis-tls.log"
  .venv/bin/moto_server -H 127.0.0.1 -p "$moto_port" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  wait_port "$redis_port" redis; wait_port "$tls_port" redis-tls; wait_port "$moto_port" moto
  cat > "$dir/env" <<ENV
export APP_ENV=local
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port
export AWS_REGION=us-east-1
export AWS_DEFAULT_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true
export REDIS_URL=redis://127.0.0.1:$redis_port
export TEST_REDIS_TLS_URL=rediss://localhost:$tls_port
export TEST_REDIS_CA_FILE=$PWD/$dir/ca.pem
export REDIS_SERVER_BIN=$(command -v redis-server)
export VENV_PYTHON=$PWD/.venv/bin/python
ENV
  sed "s/^export //" "$dir/env" > "$dir/lambda.env"
  ;;
down)
  for f in "$dir"/redis.pid "$dir"/redis-tls.pid "$dir"/moto.pid; do
    [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true
  done
  ;;
*) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
