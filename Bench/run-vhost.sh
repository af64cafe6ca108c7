#!/usr/bin/env bash
# Regenerates Bench/results/vhost.md (see Bench/run_vhost.py). --no-build skips the release build.
set -euo pipefail; cd "$(dirname "$0")/.."; scripts/install-deps
[[ " $* " == *" --no-build "* ]] || { swift build -c release --static-swift-stdlib --product strata >&2 && swift build -c release --product strata-alloc-count >&2 && swift build -c release --product strata-ring-floor >&2; }
args=(); for a in "$@"; do [[ "$a" == --no-build ]] || args+=("$a"); done
exec python3 Bench/run_vhost.py "${args[@]+"${args[@]}"}"
