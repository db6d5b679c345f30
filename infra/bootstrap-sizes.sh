#!/usr/bin/env bash
# Every function's bootstrap in DIR (sam's .aws-sam/build, or cargo lambda's target/lambda) with
# its size, checked against its budget: 6 MiB for health, jwks, me and verify, 9 MiB for the rest.
set -euo pipefail
dir=${1:-target/lambda}
small=" health jwks me verify HealthFunction JwksFunction MeFunction VerifyFunction "
status=0
for bootstrap in "$dir"/*/bootstrap; do
  name=$(basename "$(dirname "$bootstrap")")
  bytes=$(stat -c %s "$bootstrap")
  budget=$((9 * 1024 * 1024))
  [[ $small == *" $name "* ]] && budget=$((6 * 1024 * 1024))
  verdict=ok
  if ((bytes > budget)); then verdict="OVER $((budget / 1024 / 1024)) MiB"; status=1; fi
  awk -v n="$name" -v b="$bytes" -v v="$verdict" 'BEGIN { printf "%-32s %6.2f MiB  %s\n", n, b / 1048576, v }'
done
exit $status
