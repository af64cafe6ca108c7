#!/usr/bin/env bash
# Regenerates Bench/results/reliability.md: the power-cut campaign (scripts/sim-campaign, SEEDS
# seeds, default 10000), libFuzzer on each target for FUZZ_SECONDS (default 60; scripts/fuzz)
# the ThreadSanitizer run (scripts/tsan; TSAN=0 leaves it out and says so) and the differential
# matrix against qemu-img and qemu-io (scripts/img-differential). REUSE_CAMPAIGN=1
# reports the last campaign's results (.build/sim-campaign) instead of running it again;
# FUZZ_SECONDS=0 leaves fuzzing out and says so.
# Usage: SEEDS=10000 FUZZ_SECONDS=60 TSAN=1 Bench/run-reliability.sh
set -uo pipefail
cd "$(dirname "$0")/.."
seeds="${SEEDS:-10000}"
fuzz_seconds="${FUZZ_SECONDS:-60}"
tsan="${TSAN:-1}"
out=Bench/results/reliability.md
work=.build/reliability
mkdir -p "$work"
commit=$(git rev-parse --short HEAD)
start=$(date +%s)
if [ "${REUSE_CAMPAIGN:-0}" = 1 ]; then
    cat .build/sim-campaign/*.log >"$work/campaign.txt"
    ! grep -q "FAILED\|crashed while" "$work/campaign.txt"
    campaign_status=$?
else
    scripts/sim-campaign "$seeds" 1 "$(nproc)" >"$work/campaign.txt" 2>&1
    campaign_status=$?
fi
fuzz_status=0
if [ "$fuzz_seconds" -gt 0 ]; then
    scripts/fuzz "$fuzz_seconds" >"$work/fuzz.txt" 2>&1
    fuzz_status=$?
fi
if [ "$tsan" = 1 ]; then
    scripts/tsan >"$work/tsan.txt" 2>&1
    tsan_status=$?
fi
swift build --product strata >/dev/null 2>&1
scripts/img-differential >"$work/differential.txt" 2>&1
differential_status=$?
{
    echo "# Reliability"
    echo
    echo "Measured at commit $commit on $(nproc) CPUs ($(date -u +%Y-%m-%d)), by \`SEEDS=$seeds FUZZ_SECONDS=$fuzz_seconds TSAN=$tsan Bench/run-reliability.sh\`"
    echo "($(( $(date +%s) - start )) s in all$([ "${REUSE_CAMPAIGN:-0}" = 1 ] && echo "; the campaign's results are those of its last run by scripts/sim-campaign, reused")). What each part does: design/reliability.md."
    echo
    echo "## Power-cut simulation (scripts/sim-campaign)"
    echo
    echo "| workload | seeds | failed | power cuts | faults injected | disk requests | images checked (qemu-img check) | dirty repaired | leaked clusters | sectors read back | wrong | seeds/s |"
    echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
    for mix in mixed writes edits; do
        python3 - ".build/sim-campaign/summary-$mix.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
rate = d["seeds"] / d["seconds"] if d["seconds"] else 0
print(f"| {d['workload']} | {d['seeds']} | {d['failed']} | {d['power-cuts']} | {d['faults']} | {d['disk-requests']} | "
      f"{d['images-checked']} ({d['qemu-img-checks']}) | {d['dirty-repaired']} | {d['leaked-clusters']} | {d['sectors-verified']} | "
      f"{d['wrong-sectors']} | {rate:.1f} per process |")
PY
    done
    echo
    echo "Guest operations (all workloads):"
    echo
    python3 - .build/sim-campaign/summary-*.json <<'PY'
import json, sys
total = {}
for path in sys.argv[1:]:
    for op, c in json.load(open(path))["operations"].items():
        slot = total.setdefault(op, [0, 0])
        slot[0] += c["issued"]; slot[1] += c["failed"]
print("| operation | issued | failed |\n|---|---|---|")
for op, (issued, failed) in total.items():
    print(f"| {op} | {issued} | {failed} |")
PY
    echo
    if [ "$campaign_status" -ne 0 ]; then
        echo "Failing seeds (each replays with the command printed under it in the campaign's log):"
        echo
        echo '```'
        grep -h -A12 "FAILED" .build/sim-campaign/*.log | grep -E "^seed|replay:|^  ran:|^  (after|during|strata's|qemu-img)" | head -40
        echo '```'
    else
        echo "No seed failed."
    fi
    echo
    echo "## Fuzzing (scripts/fuzz $fuzz_seconds)"
    echo
    if [ "$fuzz_seconds" -gt 0 ]; then
        echo '```'
        grep -E "executions|CRASH" "$work/fuzz.txt"
        echo '```'
    else
        echo "Not run for this report (FUZZ_SECONDS=0)."
    fi
    echo
    echo "## strata img and strata io against qemu-img 7.2 and qemu-io (scripts/img-differential)"
    echo
    echo '```'
    tail -1 "$work/differential.txt"
    echo '```'
    echo
    echo "The differences kept on purpose, with why: Tests/img-differential/known-differences.txt."
    echo
    echo "## ThreadSanitizer (scripts/tsan)"
    echo
    if [ "$tsan" = 1 ]; then
        echo '```'
        grep -E "tsan:|Test run with" "$work/tsan.txt" | tail -2
        echo '```'
    else
        echo "Not run for this report (TSAN=0)."
    fi
} >"$out"
echo "wrote $out"
[ "$campaign_status" -eq 0 ] && [ "$fuzz_status" -eq 0 ] && [ "${tsan_status:-0}" -eq 0 ] && [ "$differential_status" -eq 0 ]
