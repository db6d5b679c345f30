#!/usr/bin/env bash
# Installs what the local stack and the tests need, idempotently: redis-server and openssl from
# Debian (when root), and a project venv (.venv/) with the pinned tools of infra/requirements.txt.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v redis-server >/dev/null 2>&1 || need_apt+=(redis-server)
command -v openssl >/dev/null 2>&1 || need_apt+=(openssl)
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
