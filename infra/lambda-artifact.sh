#!/usr/bin/env bash
# One function's artifact for `sam build` (BuildMethod: makefile, run as `make build-<LogicalId>`
# with ARTIFACTS_DIR set): the bootstrap of the binary template.yaml names for the function, out
# of the one workspace build (infra/lambda-build.sh) that `make build` runs first.
set -euo pipefail
cd "$(dirname "$0")/.."
id=$1
artifacts=${2:?ARTIFACTS_DIR is set by sam build}
binary=$(awk -v id="  $id:" '$0 == id {found = 1} found && $1 == "Binary:" {print $2; exit}' template.yaml)
[ -n "$binary" ] || { echo "template.yaml names no Binary for $id" >&2; exit 1; }
# sam builds several functions at once: each copies the bootstrap `make build` built before it
# ran sam (one cargo invocation per function here would race over target/lambda).
bootstrap="${CARGO_TARGET_DIR:-target}/lambda/$binary/bootstrap"
[ -f "$bootstrap" ] || { echo "$bootstrap is missing: build with \`make build\` (infra/lambda-build.sh, then sam build)" >&2; exit 1; }
stamp="${CARGO_TARGET_DIR:-target}/lambda/.source"
[ "$(cat "$stamp" 2>/dev/null)" = "$(infra/source-stamp.sh)" ] || {
  echo "$bootstrap was built from other source than this tree's: build with \`make build\`" >&2; exit 1; }
cp "$bootstrap" "$artifacts/bootstrap"
