#!/usr/bin/env bash
# The demo: a real lab host, nginx stopped, the real Prometheus + blackbox exporter +
# Alertmanager posting to `veris-remediate serve`, which fixes it; the story on one screen.
# Idempotent: every run starts its own serve and stack and removes them and the lab host.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VR="$ROOT/.venv/bin/veris-remediate"
PY="$ROOT/.venv/bin/python"
export VERIS_STATE_DIR=${VERIS_STATE_DIR:-$ROOT/.state}
STATE=$VERIS_STATE_DIR
PREFIX=${DEMO_LAB_PREFIX:-lab}
SUBNET=${DEMO_LAB_SUBNET:-1}
PORT=${DEMO_SERVE_PORT:-19095}
HOST=${PREFIX}1
ADDR=198.18.$SUBNET.2
WORK=$STATE/demo
SERVE_PID= STACK_PID=

say() { printf '\033[1m== %s\033[0m\n' "$*"; }
die() { echo "demo: $*" >&2; exit 1; }
cleanup() {
  set +e
  [ -n "$STACK_PID" ] && kill "$STACK_PID" 2>/dev/null && wait "$STACK_PID" 2>/dev/null
  [ -n "$SERVE_PID" ] && kill "$SERVE_PID" 2>/dev/null && wait "$SERVE_PID" 2>/dev/null
  "$VR" lab down --prefix "$PREFIX" --first-subnet "$SUBNET" >/dev/null 2>&1
}
trap cleanup EXIT
# The serve log, from the demo's point on, as the story needs it: time and message.
serve_log() { sed -e 's/^\([0-9:]*\) /  \1  /' "$WORK/serve.log"; }
wait_for() {  # wait_for SECONDS PATTERN: until the serve log has a line matching PATTERN
  local end=$((SECONDS + $1))
  until grep -qE "$2" "$WORK/serve.log"; do
    [ $SECONDS -lt $end ] || { tail -20 "$WORK/serve.log" >&2; die "no '$2' in ${1}s"; }
    kill -0 "$SERVE_PID" 2>/dev/null || { tail -20 "$WORK/serve.log" >&2; die "serve stopped"; }
    sleep 0.5
  done
}

mkdir -p "$WORK" && chmod 700 "$STATE" "$WORK"
rm -rf "$WORK/stack" "$WORK/serve.log"

say "Lab host $HOST ($ADDR): Debian with systemd, sshd, nginx (first run builds it: ~2 min)"
INV=$("$VR" lab up --hosts 1 --prefix "$PREFIX" --first-subnet "$SUBNET" \
      2>"$WORK/lab.log") || { cat "$WORK/lab.log" >&2; die "lab up failed"; }

# A fresh host: what an earlier demo's host went through (the restart-storm breaker's
# cooldown, history) is not its story.
"$VR" breaker reset "$HOST" >/dev/null
"$PY" -c 'import secrets; print(secrets.token_urlsafe(32))' > "$WORK/token"
chmod 600 "$WORK/token"
"$VR" serve -i "$INV" --listen "127.0.0.1:$PORT" --token-file "$WORK/token" \
  2>"$WORK/serve.log" &
SERVE_PID=$!
wait_for 60 "listening on"
"$PY" -m tests.alertstack --target "http://$ADDR/" --webhook "http://127.0.0.1:$PORT/alerts" \
  --token-file "$WORK/token" --workdir "$WORK/stack" >"$WORK/stack.log" 2>&1 &
STACK_PID=$!
end=$((SECONDS + 60))
until grep -q "stack ready" "$WORK/stack.log"; do
  [ $SECONDS -lt $end ] && kill -0 "$STACK_PID" 2>/dev/null || { cat "$WORK/stack.log" >&2; die "no stack"; }
  sleep 0.3
done
say "veris-remediate serve on 127.0.0.1:$PORT; Prometheus probes http://$ADDR/ every second;"
echo "   Alertmanager posts to serve with a bearer token (logs: $WORK)"

say "Breaking it at $(date +%T): systemctl stop nginx on $HOST"
"$VR" lab ssh "$HOST" --prefix "$PREFIX" --first-subnet "$SUBNET" -- systemctl stop nginx
echo "   nginx on $HOST: $("$VR" lab ssh "$HOST" --prefix "$PREFIX" --first-subnet "$SUBNET" -- systemctl is-active nginx || true)"

say "The alert arrives: serve queues it and answers at once; a worker remediates it"
wait_for 150 "incident #[0-9]+: (resolved|rolled_back|escalated|failed|blocked|not_needed)"
serve_log | grep -E "firing|incident #" | head -4
RUN=$(grep -oE "report [0-9]{8}T[0-9]{6}Z-[0-9a-f]{6}" "$WORK/serve.log" | head -1 | cut -d' ' -f2)
[ -n "$RUN" ] || die "no run id in the serve log"

say "What the run did (run $RUN)"
"$VR" report "$RUN" --format json > "$WORK/report.json"
"$PY" - "$WORK/report.json" <<'EOF'
import json, sys

r = json.load(open(sys.argv[1]))
m = r["remediations"][0]
phase = {p["name"]: p for p in r["phases"]}
print(f"   what broke : {r['alert_type']} on {', '.join(r['hosts'])} (from {r['source']})")
for c in r["causes"][:1]:
    print(f"   diagnosis  : {c['summary']}")
for p in m["preview"][:2]:
    print(f"   preview    : ~ {p['task']} ({p['action'].rsplit('.', 1)[-1]}, check mode)")
print(f"   decision   : {r['decision']} {m['remediation']}, confidence {r['confidence']:.2f}")
for name in ("apply", "rollback"):
    if name in phase:
        print(f"   {name:<11}: {phase[name]['detail']} ({phase[name]['seconds']:.1f}s)")
if "verify" in phase:
    print(f"   verified   : {phase['verify']['detail']}")
print(f"   outcome    : {r['outcome']}")
if r["outcome"] != "resolved":
    for reason in r["reasons"]:
        print(f"     - {reason}")
    sys.exit(1)
EOF
echo "   nginx on $HOST: $("$VR" lab ssh "$HOST" --prefix "$PREFIX" --first-subnet "$SUBNET" -- systemctl is-active nginx || true)"

say "nginx answers again: Alertmanager sends 'resolved', which closes the incident"
wait_for 60 "resolved$"
serve_log | grep -E "resolved$" | head -1

say "The incident report"
echo "   $STATE/runs/$RUN/report.json"
echo "   $VR --state-dir $STATE report $RUN"
echo "   audit log: $("$VR" audit verify)"
