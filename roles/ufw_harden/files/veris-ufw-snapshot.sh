#!/bin/sh
# The firewall snapshot of one ufw_harden run, on the host, needing no controller:
#
#   veris-ufw-snapshot.sh save DIR
#       DIR/etc-ufw (cp -a /etc/ufw), DIR/default-ufw (cp -a /etc/default/ufw),
#       DIR/iptables.rules and DIR/ip6tables.rules (for people), then DIR/saved (complete).
#       The role runs it once per directory (`creates: DIR/saved`): a second apply with
#       the same run id never overwrites the state it must restore.
#   veris-ufw-snapshot.sh restore DIR WHO      (WHO: timer | rollback)
#       Puts /etc/ufw, /etc/default/ufw and ufw's live rules back as saved, and records
#       when in DIR/restored-by-WHO. Run by the on-host revert (a transient systemd timer
#       armed before ufw is changed: it heals a lockout with no controller) or by the
#       rollback playbook. Idempotent; serialized with flock when both run at once.
set -u
command=${1:-}
dir=${2:-}
now() { date -u +%Y-%m-%dT%H:%M:%SZ; }

case $command in
save)
    set -e
    umask 077
    rm -rf "$dir/etc-ufw" "$dir/default-ufw"
    cp -a /etc/ufw "$dir/etc-ufw"
    cp -a /etc/default/ufw "$dir/default-ufw"
    iptables-save > "$dir/iptables.rules" 2>/dev/null || :
    ip6tables-save > "$dir/ip6tables.rules" 2>/dev/null || :
    now > "$dir/saved"
    ;;
restore)
    who=${3:-}
    case $who in timer|rollback) ;; *) echo "restore: WHO must be timer or rollback" >&2; exit 2 ;; esac
    if [ ! -d "$dir/etc-ufw" ] || [ ! -f "$dir/default-ufw" ] || [ ! -f "$dir/saved" ]; then
        echo "restore: no complete snapshot in $dir" >&2
        exit 2
    fi
    exec 9>>"$dir/lock"
    flock 9
    # Disabling flushes ufw's chains (new connections are let in again at once); it
    # leaves ufw's empty chains behind, which the probe's normalization counts as absent.
    ufw --force disable >/dev/null 2>&1 || :
    rm -rf /etc/ufw.veris-restore
    cp -a "$dir/etc-ufw" /etc/ufw.veris-restore || exit 1
    rm -rf /etc/ufw
    mv /etc/ufw.veris-restore /etc/ufw || exit 1
    cp -a "$dir/default-ufw" /etc/default/ufw || exit 1
    if grep -qx 'ENABLED=yes' /etc/ufw/ufw.conf; then
        ufw --force enable >/dev/null || exit 1
    fi
    now > "$dir/restored-by-$who"
    ;;
*)
    echo "usage: $0 save DIR | restore DIR timer|rollback" >&2
    exit 2
    ;;
esac
