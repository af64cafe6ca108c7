#!/usr/bin/env bash
set -euo pipefail; cd "$(dirname "$0")/.."; scripts/install-deps
[[ " $* " == *" --no-build "* ]] || swift build -c release --static-swift-stdlib --product strata >&2
exec python3 Bench/run_remote.py "$@"
