#!/usr/bin/env bash
# One function's artifact for `sam build` (BuildMethod: makefile, run as `make build-<LogicalId>`
# with ARTIFACTS_DIR set): the bootstrap of the binary template.yaml names for the function, out
# of one workspace build (infra/lambda-build.sh) that every function shares.
set -euo pipefail
cd "$(dirname "$0")/.."
id=$1
artifacts=${2:?ARTIFACTS_DIR is set by sam build}
binary=$(awk -v id="  $id:" '$0 == id {found = 1} found && $1 == "Binary:" {print $2; exit}' template.yaml)
[ -n "$binary" ] || { echo "template.yaml names no Binary for $id" >&2; exit 1; }
infra/lambda-build.sh
cp "target/lambda/$binary/bootstrap" "$artifacts/bootstrap"
