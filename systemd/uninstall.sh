#!/usr/bin/env bash
# Remove tope-updater: stop and remove its units (service, socket, the fleet wake-up's
# timer), the bin links install.sh made, the updater's slots (<prefix>/versions, current,
# previous) and its guard.
#
#   sudo /opt/tope-updater/uninstall.sh            # keeps <root>/versions, state, config
#   sudo /opt/tope-updater/uninstall.sh --purge    # also deletes them (the device's
#                                                  # software and its factory version!)
#
# The device services keep running the version `current` names; only the updater goes.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: uninstall.sh [options]
  --root DIR          install root (default /opt/tope)
  --prefix DIR        where the updater's slots are (default /opt/tope-updater)
  --state-dir DIR     state directory (default <root>/.updater)
  --config-dir DIR    config directory (default /etc/tope-updater)
  --unit-dir DIR      unit file directory (default /etc/systemd/system)
  --bin-links DIR     link directory (default /usr/local/bin)
  --systemctl "CMD"   systemctl command prefix (default systemctl)
  --no-disable        do not `systemctl disable` (units in a runtime dir)
  --keep-links        keep the <bin-links> links (device services still use them)
  --purge             also delete <root>/versions, the state and config directories
  -h, --help          this text
USAGE
}

die() { echo "uninstall.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }

ROOT=/opt/tope
PREFIX=/opt/tope-updater
STATE_DIR=""
CONFIG_DIR=/etc/tope-updater
UNIT_DIR=/etc/systemd/system
BIN_LINKS=/usr/local/bin
SYSTEMCTL=systemctl
DISABLE=1
KEEP_LINKS=0
PURGE=0
UNIT=tope-updater.service
SOCKET_UNIT=tope-updater.socket
WAKE_TIMER=tope-updater.timer

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --state-dir) STATE_DIR="$2"; shift 2 ;;
        --config-dir) CONFIG_DIR="$2"; shift 2 ;;
        --unit-dir) UNIT_DIR="$2"; shift 2 ;;
        --bin-links) BIN_LINKS="$2"; shift 2 ;;
        --systemctl) SYSTEMCTL="$2"; shift 2 ;;
        --no-disable) DISABLE=0; shift ;;
        --keep-links) KEEP_LINKS=1; shift ;;
        --purge) PURGE=1; shift ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done
ROOT="${ROOT%/}"; PREFIX="${PREFIX%/}"; CONFIG_DIR="${CONFIG_DIR%/}"
[[ -n "$STATE_DIR" ]] || STATE_DIR="$ROOT/.updater"
for dir in "$ROOT" "$PREFIX" "$STATE_DIR" "$CONFIG_DIR" "$UNIT_DIR" "$BIN_LINKS"; do
    # Every path below is deleted recursively somewhere: refuse the obviously wrong ones.
    case "$dir" in
        / | /usr | /etc | /opt | /var | /bin | /lib | /home | /root) die "refusing to work on $dir" ;;
        /*) ;;
        *) die "paths must be absolute (got '$dir')" ;;
    esac
done
read -r -a SYSTEMCTL_ARGV <<<"$SYSTEMCTL"

# --- 1. the service ----------------------------------------------------------------------
step "stop $WAKE_TIMER $SOCKET_UNIT $UNIT"
# The fleet wake-up's timer (transient, armed before an exit between polls: gone once
# stopped) and the socket first: stopped, neither can start the service again (the socket
# also frees the port).
"${SYSTEMCTL_ARGV[@]}" stop "$WAKE_TIMER" 2>/dev/null || true
"${SYSTEMCTL_ARGV[@]}" stop "$SOCKET_UNIT" "$UNIT" 2>/dev/null || true
# Only touch enablement links when a unit is enabled (nothing to undo otherwise).
for unit in "$SOCKET_UNIT" "$UNIT"; do
    if [[ $DISABLE -eq 1 ]] && [[ "$("${SYSTEMCTL_ARGV[@]}" is-enabled "$unit" 2>/dev/null || true)" == enabled ]]; then
        "${SYSTEMCTL_ARGV[@]}" disable "$unit"
    fi
done
rm -f "$UNIT_DIR/$UNIT" "$UNIT_DIR/$SOCKET_UNIT"
"${SYSTEMCTL_ARGV[@]}" stop tope-updater-screen.service 2>/dev/null || true
# A self-update's deadline timer still pending (transient: gone once stopped).
"${SYSTEMCTL_ARGV[@]}" stop 'tope-updater-probation-*.timer' 2>/dev/null || true
rm -f "$UNIT_DIR/tope-updater-screen.service"
# The USB stick's instances (install.sh --usb-mount): stopped, disabled, the template gone.
"${SYSTEMCTL_ARGV[@]}" stop 'tope-updater-usb@*.service' 2>/dev/null || true
for link in "$UNIT_DIR"/*.mount.wants/tope-updater-usb@*.service; do
    [[ -L "$link" ]] || continue
    if [[ $DISABLE -eq 1 ]]; then
        "${SYSTEMCTL_ARGV[@]}" disable "$(basename "$link")" 2>/dev/null || true
    fi
    rm -f "$link"  # a runtime install (--no-disable): the link would dangle
    rmdir "$(dirname "$link")" 2>/dev/null || true
done
rm -f "$UNIT_DIR/tope-updater-usb@.service"
"${SYSTEMCTL_ARGV[@]}" daemon-reload
"${SYSTEMCTL_ARGV[@]}" reset-failed "$UNIT" "$SOCKET_UNIT" 2>/dev/null || true
if [[ -d "$UNIT_DIR/$UNIT.d" ]]; then
    echo "    kept drop-ins in $UNIT_DIR/$UNIT.d (local changes; delete them by hand)"
fi

# --- 2. the links install.sh made (only those still pointing into this root) -----------
step "links"
remove_link() {
    local link="$1"
    [[ -L "$link" ]] || return 0
    case "$(readlink "$link")" in
        "$ROOT"/versions/*) rm -f "$link"; echo "    removed $link" ;;
        *) echo "    kept $link (points elsewhere now)" ;;
    esac
}
if [[ $KEEP_LINKS -eq 1 && $PURGE -eq 0 ]]; then
    echo "    kept (--keep-links)"
elif [[ -f "$PREFIX/installed-links" ]]; then
    while IFS= read -r link; do
        if [[ -n "$link" ]]; then remove_link "$link"; fi
    done <"$PREFIX/installed-links"
    echo "    note: device services that exec <bin-links>/<bin> fail on their next start" \
        "until install.sh runs again (use --keep-links to keep them)"
fi

# --- 3. the updater's slots ---------------------------------------------------------------
step "slots $PREFIX"
# versions/<version> (a venv each), current, previous; venv is an older install's single one.
rm -rf "$PREFIX/versions" "$PREFIX/venv" "$PREFIX/docs"
rm -f "$PREFIX/current" "$PREFIX/previous" "$PREFIX/.current.tmp" "$PREFIX/.previous.tmp"
rm -f "$PREFIX/probation" "$PREFIX/probation.starts" "$PREFIX/probation.starts.tmp"
rm -f "$PREFIX/updater-rollback" "$PREFIX/updater-rollback.tmp" "$PREFIX/updater-guard.sh"
rm -f "$PREFIX/installed-links" "$PREFIX/uninstall.sh" "$PREFIX/busy-probe-moonraker.sh"
if [[ -d "$PREFIX" ]]; then rmdir "$PREFIX" 2>/dev/null || echo "    kept $PREFIX (not empty)"; fi

# --- 4. data -----------------------------------------------------------------------------
if [[ $PURGE -eq 1 ]]; then
    step "purge $ROOT/versions $STATE_DIR $CONFIG_DIR"
    if [[ -d "$ROOT/versions" ]]; then
        # The factory snapshot is read-only (0555/0444) on purpose; make it deletable.
        chmod -R u+w "$ROOT/versions"
        rm -rf "$ROOT/versions"
    fi
    rm -rf "$STATE_DIR" "$CONFIG_DIR"
    rmdir "$ROOT" 2>/dev/null || true
else
    echo "    kept $ROOT/versions, $STATE_DIR and $CONFIG_DIR (use --purge to delete them)"
fi
echo "tope-updater removed"
