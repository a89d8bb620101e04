#!/usr/bin/env bash
# The demo: a real lab host, nginx stopped, a real Alertmanager webhook, the whole safety loop.
set -euo pipefail
cd "$(dirname "$0")/.."
VR=.venv/bin/veris-remediate
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

trap 'say "Removing the lab host"; $VR lab down' EXIT

say "Booting lab host lab1 (first run builds a Debian root file system: ~2 minutes)"
INV=$($VR lab up --hosts 1)
echo "inventory: $INV"
SSH=($VR lab ssh lab1 --)

say "Breaking it: systemctl stop nginx on lab1"
"${SSH[@]}" systemctl stop nginx
echo "nginx on lab1: $("${SSH[@]}" systemctl is-active nginx || true)"

say "Real Prometheus + blackbox exporter + Alertmanager on loopback, probing http://198.18.1.2/"
.venv/bin/python -m tests.alertstack --target http://198.18.1.2/ --out .state/alert.json
ALERT=.state/alert.json
say "The webhook Alertmanager sent (instance is the address: veris maps it to lab1 by ansible_host)"
python3 -m json.tool "$ALERT"

say "Preview only: veris-remediate handle --check-only"
$VR handle "$ALERT" -i "$INV" --check-only || true

say "The whole loop: diagnose, preview, score, apply, verify"
set +e; $VR handle "$ALERT" -i "$INV" --json > .state/demo-report.json; rc=$?; set -e
python3 -m json.tool .state/demo-report.json
echo "exit code: $rc"
echo "nginx on lab1: $("${SSH[@]}" systemctl is-active nginx || true)"

say "Incident report"
$VR report "$(python3 -c 'import json;print(json.load(open(".state/demo-report.json"))["run_id"])')"

say "Same alert again, now that nginx is healthy: nothing to do"
$VR handle "$ALERT" -i "$INV" || true

say "Audit log"
$VR audit verify
exit "$rc"
