#!/usr/bin/env bash
# The source a build comes from: the commit and a hash of the uncommitted changes to tracked files.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "$(git rev-parse HEAD) $(git diff HEAD | sha256sum | cut -c1-16)"
