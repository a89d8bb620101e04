#!/usr/bin/env bash
# Idempotent set-up for a fresh Debian 12 machine, as root: apt packages, the venv, the package.
# Safe to rerun: each step checks whether it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run as root: the lab needs network namespaces and systemd-nspawn"
[ -r /etc/debian_version ] || die "this set-up is for Debian 12 (bookworm); see README"

# Controller packages: the lab (debootstrap, systemd-nspawn, ip, iptables), ssh, and the
# real alerting stack the demo and tests run on loopback (Prometheus, Alertmanager, blackbox).
STACK_PACKAGES=(prometheus prometheus-alertmanager prometheus-blackbox-exporter)
# PostgreSQL server binaries: tests/pgserver.py runs throwaway clusters for the shared state store.
STATE_PACKAGES=(postgresql)
# Headless Chromium: tests/integration/test_report_html.py reads the HTML report in it.
REPORT_PACKAGES=(chromium)
APT_PACKAGES=(debootstrap systemd-container iptables iproute2 openssh-client python3-venv
              ca-certificates "${STACK_PACKAGES[@]}" "${STATE_PACKAGES[@]}"
              "${REPORT_PACKAGES[@]}")
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # The packages enable their own services; ours run on other ports, started by the tests.
  if [ -d /run/systemd/system ]; then
    systemctl disable --now prometheus prometheus-alertmanager prometheus-blackbox-exporter \
      >/dev/null 2>&1 || true
    systemctl disable --now postgresql >/dev/null 2>&1 || true
  fi
fi

PY=${PYTHON:-python3}
"$PY" -c 'import sys; sys.exit(sys.version_info < (3, 11))' || die "$PY is older than 3.11"

# The venv is rebuilt only when the dependency pins change.
stamp=.venv/.veris-setup
want=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: creating .venv"
  [ -x .venv/bin/python ] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q -c constraints.txt -e '.[test]'
  echo "$want" > "$stamp"
fi
echo "setup: ready ($(.venv/bin/veris-remediate --help >/dev/null && echo veris-remediate ok))"
