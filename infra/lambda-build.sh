#!/usr/bin/env bash
# Every function's bootstrap in one workspace build: `cargo lambda build --release` of all the
# function crates at once (their dependencies compiled once, the binaries linked side by side),
# cross-linked by zig for Amazon Linux 2023's glibc. The profile is the workspace's
# [profile.release]; cargo lambda's own release settings are off so it is the only one. A second
# call is cargo's no-op check (about a second).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PWD/.venv/bin:$PATH"
packages=()
for dir in functions/*/; do packages+=(-p "$(basename "$dir")"); done
cargo lambda build --release --disable-optimizations --quiet "${packages[@]}"
# What the bootstraps were built from, for infra/lambda-artifact.sh to check before sam ships them.
infra/source-stamp.sh > "${CARGO_TARGET_DIR:-target}/lambda/.source"
