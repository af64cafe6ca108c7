#!/usr/bin/env bash
# Regenerates Bench/results/nbd.md (see Bench/run_nbd.py). --no-build skips the release build;
# a failed build still lets the script measure the peers (strata's rows then say FAIL).
set -euo pipefail; cd "$(dirname "$0")/.."; scripts/install-deps
[[ " $* " == *" --no-build "* ]] || swift build -c release --static-swift-stdlib --product strata >&2 || echo "release build failed: strata rows will FAIL" >&2
args=(); for a in "$@"; do [[ "$a" == --no-build ]] || args+=("$a"); done
exec python3 Bench/run_nbd.py "${args[@]+"${args[@]}"}"
