#!/usr/bin/env bash
# Install tope-updater on a device from this checkout (idempotent: re-run to upgrade).
#
#   sudo systemd/install.sh --version 1.0.0 --from /path/to/factory-tree
#   sudo ./install.sh --bundle tope-updater-0.1.0-aarch64.tar.gz --version 1.0.0   # offline
#
# Steps: a versioned slot <prefix>/versions/<updater version>/ (a venv with this checkout,
# or the bundle's wheels, pip-installed) and the links <prefix>/current -> versions/<it>
# (and <prefix>/previous -> the slot current named before); the versions/ layout and
# the factory snapshot under --root (`tope-updater init`); links
# <bin-links>/<bin> -> <root>/versions/current/bin/<bin> for every file of the factory's
# bin/; <config-dir>/config.toml (only if absent); the systemd units with this install's
# paths: tope-updater.socket (the API's port, ListenStream= from the config's host and
# port) and tope-updater.service; daemon-reload, enable, (re)start (systemctl returns once
# the API serves: Type=notify); finally `tope-updater verify-setup`. See docs/DEPLOYMENT.md.
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: install.sh [options]
  --root DIR          install root holding versions/ (default /opt/tope)
  --prefix DIR        where the updater's slots go: <prefix>/versions/<version>/ (a
                      venv each), <prefix>/current, <prefix>/previous
                      (default /opt/tope-updater)
  --state-dir DIR     journal, downloads, logs (default <root>/.updater)
  --config-dir DIR    config.toml lives here (default /etc/tope-updater)
  --unit-dir DIR      where the unit file goes (default /etc/systemd/system)
  --bin-links DIR     where <bin> -> <root>/versions/current/bin/<bin> links go
                      (default /usr/local/bin)
  --from DIR          factory content for a fresh root (default: a minimal tree)
  --version X.Y.Z     factory version; required when the root is not initialised yet
  --port N            API port written into a new config.toml and the socket unit
                      (default 12315; a kept config.toml's port wins)
  --host ADDR         API address (an IP address) written into a new config.toml and
                      the socket unit (default 127.0.0.1; a kept config.toml's host wins)
  --device-api-url U  device-api base URL for a new config.toml
                      (default http://127.0.0.1:9080)
  --extra-root DIR    allow manifest dst under DIR (config + ReadWritePaths); repeatable
  --unit NAME         a device unit a manual rollback restarts when the journal names
                      none (config `units`, start order = flag order); repeatable
  --python PY         interpreter that creates the slot's venv (default python3)
  --pip-args "ARGS"   extra arguments for pip install (e.g. "--no-index --find-links W")
  --bundle FILE       install from a release bundle (tope-updater-<version>-<arch>.tar.gz
                      from systemd/bundle.py, or that file unpacked) with no network:
                      pip --no-index from its wheels; its unit files, scripts and docs.
                      A bundle built --with-screen implies --screen
  --systemctl "CMD"   systemctl command prefix (default systemctl)
  --no-enable         do not `systemctl enable` (e.g. units in a runtime dir)
  --no-start          do not (re)start the service
  --screen            install the progress display too (pip extra "screen"; a new
                      config.toml names tope-updater-screen.service as screen_unit)
  --usb-mount DIR     install the newest signed package of a USB stick mounted at DIR
                      (tope-updater-usb@.service, enabled for DIR; a new config.toml
                      lists DIR in local_package_dirs; needs trusted_key); repeatable
  -h, --help          this text
USAGE
}

die() { echo "install.sh: $*" >&2; exit 1; }
step() { echo "==> $*"; }
# toml_list KEY VALUE... prints KEY = ["VALUE", ...] (values are checked paths/unit names).
toml_list() {
    local key=$1 sep="" value
    shift
    printf '%s = [' "$key"
    for value in "$@"; do printf '%s"%s"' "$sep" "$value"; sep=", "; done
    echo "]"
}

ROOT=/opt/tope
PREFIX=/opt/tope-updater
STATE_DIR=""
CONFIG_DIR=/etc/tope-updater
UNIT_DIR=/etc/systemd/system
BIN_LINKS=/usr/local/bin
FROM=""
VERSION=""
PORT=""
HOST=""
DEVICE_API_URL=http://127.0.0.1:9080
EXTRA_ROOTS=()
USB_MOUNTS=()
SCREEN=0
UNITS=()
PYTHON=python3
PIP_ARGS=""
BUNDLE=""
SYSTEMCTL=systemctl
ENABLE=1
START=1
UNIT=tope-updater.service
SOCKET_UNIT=tope-updater.socket
SCREEN_UNIT=tope-updater-screen.service
USB_UNIT=tope-updater-usb@.service

while [[ $# -gt 0 ]]; do
    case "$1" in
        --root) ROOT="$2"; shift 2 ;;
        --prefix) PREFIX="$2"; shift 2 ;;
        --state-dir) STATE_DIR="$2"; shift 2 ;;
        --config-dir) CONFIG_DIR="$2"; shift 2 ;;
        --unit-dir) UNIT_DIR="$2"; shift 2 ;;
        --bin-links) BIN_LINKS="$2"; shift 2 ;;
        --from) FROM="$2"; shift 2 ;;
        --version) VERSION="$2"; shift 2 ;;
        --port) PORT="$2"; shift 2 ;;
        --host) HOST="$2"; shift 2 ;;
        --device-api-url) DEVICE_API_URL="$2"; shift 2 ;;
        --extra-root) EXTRA_ROOTS+=("$2"); shift 2 ;;
        --unit) UNITS+=("$2"); shift 2 ;;
        --python) PYTHON="$2"; shift 2 ;;
        --pip-args) PIP_ARGS="$2"; shift 2 ;;
        --bundle) BUNDLE="$2"; shift 2 ;;
        --systemctl) SYSTEMCTL="$2"; shift 2 ;;
        --no-enable) ENABLE=0; shift ;;
        --no-start) START=0; shift ;;
        --screen) SCREEN=1; shift ;;
        --usb-mount) USB_MOUNTS+=("$2"); shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

# Paths end up unquoted in the unit file (ExecStart=, ReadWritePaths=) and quoted in TOML:
# keep them absolute and free of whitespace, quotes and backslashes.
check_path() {
    local name="$1" value="$2"
    case "$value" in
        /) die "$name must not be /" ;;
        *[[:space:]\"\'\\]*) die "$name must not contain spaces, quotes or backslashes" ;;
        /*) ;;
        *) die "$name must be an absolute path (got '$value')" ;;
    esac
}
ROOT="${ROOT%/}"; PREFIX="${PREFIX%/}"; CONFIG_DIR="${CONFIG_DIR%/}"
[[ -n "$STATE_DIR" ]] || STATE_DIR="$ROOT/.updater"
STATE_DIR="${STATE_DIR%/}"
for pair in "--root:$ROOT" "--prefix:$PREFIX" "--state-dir:$STATE_DIR" \
    "--config-dir:$CONFIG_DIR" "--unit-dir:$UNIT_DIR" "--bin-links:$BIN_LINKS"; do
    check_path "${pair%%:*}" "${pair#*:}"
done
for extra in "${EXTRA_ROOTS[@]}"; do check_path --extra-root "$extra"; done
for mount in "${USB_MOUNTS[@]}"; do check_path --usb-mount "$mount"; done
for unit in "${UNITS[@]}"; do
    [[ "$unit" =~ ^[A-Za-z0-9@._:-]+$ ]] || die "--unit $unit is not a unit name"
done
[[ -z "$FROM" || -d "$FROM" ]] || die "--from $FROM is not a directory"
[[ -z "$VERSION" || "$VERSION" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "--version must look like 1.2.3"
[[ -z "$PORT" || "$PORT" =~ ^[0-9]+$ ]] || die "--port must be a number"
# An address systemd's ListenStream= takes (no names: it does not resolve them).
[[ -z "$HOST" || "$HOST" =~ ^[0-9A-Fa-f.:]+$ ]] || die "--host must be an IP address"
[[ "$DEVICE_API_URL" =~ ^https?://[^[:space:]\"\\]+$ ]] || die "--device-api-url must be an http(s) URL"

TMP_DIRS=()
cleanup() { [[ ${#TMP_DIRS[@]} -eq 0 ]] || rm -rf "${TMP_DIRS[@]}"; }
trap cleanup EXIT

# --- 0. a release bundle: unpack, check it fits this device ------------------------------
BUNDLE_DIR=""
if [[ -n "$BUNDLE" ]]; then
    if [[ -d "$BUNDLE" ]]; then
        BUNDLE_DIR="$(cd "$BUNDLE" && pwd)"
    elif [[ -f "$BUNDLE" ]]; then
        step "unpack $BUNDLE"
        UNPACK_DIR="$(mktemp -d)"
        TMP_DIRS+=("$UNPACK_DIR")
        tar -C "$UNPACK_DIR" -xzf "$BUNDLE" || die "cannot unpack $BUNDLE"
        for candidate in "$UNPACK_DIR"/*/; do BUNDLE_DIR="${candidate%/}"; done
    else
        die "--bundle $BUNDLE: no such file or directory"
    fi
    [[ -n "$BUNDLE_DIR" && -f "$BUNDLE_DIR/manifest.json" ]] \
        || die "$BUNDLE is not a tope-updater bundle (no manifest.json)"
    # One line per value; the wheels' SHA-256 are checked here too.
    mapfile -t MANIFEST < <("$PYTHON" - "$BUNDLE_DIR" <<'PY'
import hashlib, json, pathlib, sys
top = pathlib.Path(sys.argv[1])
m = json.loads((top / "manifest.json").read_text())
for w in m["wheels"]:
    data = (top / "wheels" / w["file"]).read_bytes()
    if hashlib.sha256(data).hexdigest() != w["sha256"]:
        sys.exit(f"install.sh: {w['file']}: SHA-256 does not match manifest.json")
# Wheels built from source for this bundle (bundle.py --wheel-cache) name the shared
# libraries and the glibc they need: the device must have them, or their import fails.
import ctypes, os, re
have = tuple(int(n) for n in os.confstr("CS_GNU_LIBC_VERSION").split()[1].split(".")[:2])
for b in m.get("built", []):
    what = f"install.sh: {b['name']} {b['version']} in this bundle was built from source ({b['how']})"
    need = tuple(int(n) for n in (b.get("glibc") or "0.0").split(".")[:2])
    if have < need:
        sys.exit(f"{what}; it needs glibc >= {b['glibc']}, this machine has {'.'.join(map(str, have))}")
    for lib in b.get("needs") or []:
        if not re.fullmatch(r"lib[\w.+-]+\.so(\.[0-9]+)*", lib):
            sys.exit(f"{what}; manifest.json: {lib!r} is not a library's soname")
        try:
            ctypes.CDLL(lib)
        except OSError:
            sys.exit(f"{what}; it needs {lib}, which this machine lacks (install the package that ships it; Debian 12: libffi8 for libffi.so.8)")
missing = " ".join(f"{x['name']}=={x['version']}" for x in m["missing"])
print(m["arch"], m["python"], m["version"], m["project_wheel"], int(m["screen"]), sep="\n")
print(missing)
PY
    ) || die "$BUNDLE_DIR: bundle refused or its manifest.json unreadable (the reason is above)"
    [[ ${#MANIFEST[@]} -eq 6 ]] || die "cannot read $BUNDLE_DIR/manifest.json"
    B_ARCH="${MANIFEST[0]}" B_PYTHON="${MANIFEST[1]}" B_VERSION="${MANIFEST[2]}"
    B_WHEEL="${MANIFEST[3]}" B_SCREEN="${MANIFEST[4]}" B_MISSING="${MANIFEST[5]}"
    [[ "$B_VERSION" =~ ^[A-Za-z0-9.+!-]+$ && "$B_WHEEL" =~ ^[A-Za-z0-9._+!-]+\.whl$ ]] \
        || die "manifest.json: bad version or wheel name"
    MACHINE="$(uname -m)"
    [[ "$B_ARCH" == "$MACHINE" ]] \
        || die "this bundle is for $B_ARCH, this machine is $MACHINE: use tope-updater-$B_VERSION-$MACHINE.tar.gz"
    # The slot's interpreter when the slot exists (install.sh reuses it), else --python.
    VENV_PY="${PREFIX%/}/versions/$B_VERSION/bin/python"
    [[ -x "$VENV_PY" ]] || VENV_PY="$PYTHON"
    HAVE_PYTHON="$("$VENV_PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])')" \
        || die "$VENV_PY does not run"
    [[ "$B_PYTHON" == "$HAVE_PYTHON" ]] \
        || die "this bundle's wheels are for $B_PYTHON, $VENV_PY is $HAVE_PYTHON (a new Python: remove the slot ${PREFIX%/}/versions/$B_VERSION first, see docs/DEPLOYMENT.md)"
    if [[ $SCREEN -eq 1 && $B_SCREEN -ne 1 ]]; then
        die "--screen: this bundle has no screen extra (build it with bundle.py --with-screen)"
    fi
    [[ $B_SCREEN -eq 1 ]] && SCREEN=1
    if [[ -n "$B_MISSING" ]]; then
        echo "install.sh: warning: this bundle has no wheels for: $B_MISSING" >&2
        echo "install.sh: pip must find them via --pip-args (see MISSING.txt in the bundle)" >&2
    fi
    step "bundle tope-updater $B_VERSION for $B_ARCH ($B_PYTHON)"
    SRC="$BUNDLE_DIR"
    SLOT_VERSION="$B_VERSION"
else
    SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
    [[ -f "$SRC/pyproject.toml" ]] || die "$SRC is not a tope-updater checkout (no pyproject.toml)"
    SLOT_VERSION="$("$PYTHON" -c 'import sys, tomllib; print(tomllib.load(open(sys.argv[1], "rb"))["project"]["version"])' "$SRC/pyproject.toml")" \
        || die "cannot read the version from $SRC/pyproject.toml"
    [[ "$SLOT_VERSION" =~ ^[A-Za-z0-9.+!-]+$ ]] || die "pyproject.toml: bad version '$SLOT_VERSION'"
fi
read -r -a SYSTEMCTL_ARGV <<<"$SYSTEMCTL"
# The updater's own versioned slots, the discipline the device's versions follow: the unit
# runs <prefix>/current/bin/tope-updater, whatever slot `current` names at its start.
VENV="$PREFIX/versions/$SLOT_VERSION"
UPDATER="$VENV/bin/tope-updater"
CURRENT_UPDATER="$PREFIX/current/bin/tope-updater"
CONFIG="$CONFIG_DIR/config.toml"
# A slot is complete once this marker exists (the updater's self-update writes it too).
SLOT_MARK=.tope-slot-complete

# --- 1. the slot <prefix>/versions/<version>: a venv with this checkout installed --------
step "slot $VENV"
mkdir -p "$PREFIX/versions"
if [[ -d "$VENV" && ! -e "$VENV/$SLOT_MARK" ]]; then
    rm -rf "$VENV"  # left half-built by an interrupted run: build it again
fi
if [[ ! -x "$VENV/bin/python" ]]; then
    "$PYTHON" -m venv "$VENV"
fi
read -r -a PIP_ARGV <<<"$PIP_ARGS"
EXTRAS=""
[[ $SCREEN -eq 1 ]] && EXTRAS="[screen]"
if [[ -n "$BUNDLE_DIR" ]]; then
    # Offline: only the bundle's wheels (plus any --find-links given in --pip-args).
    WHEELS="$BUNDLE_DIR/wheels"
    if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --find-links "$WHEELS" "${PIP_ARGV[@]}" "tope-updater$EXTRAS==$B_VERSION"; then
        [[ -z "$B_MISSING" ]] || die "pip failed; the bundle has no wheels for $B_MISSING (see MISSING.txt)"
        die "pip install from $WHEELS failed"
    fi
    # The same version may be installed already (a rebuilt bundle): replace the updater.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-index \
        --no-deps --force-reinstall "$WHEELS/$B_WHEEL"
else
    # Build from a clean copy so pip never writes build/ or *.egg-info into the checkout.
    BUILD_DIR="$(mktemp -d)"
    TMP_DIRS+=("$BUILD_DIR")
    tar -C "$SRC" --exclude='./.*' --exclude=./build --exclude=./dist --exclude=./var \
        --exclude=./tests --exclude=./bench --exclude='*.egg-info' --exclude=__pycache__ \
        -cf - . | tar -C "$BUILD_DIR" -xf -
    # pip always reinstalls a project given as a directory, so a re-run upgrades the
    # updater; dependencies already satisfied are left alone.
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        "${PIP_ARGV[@]}" "$BUILD_DIR$EXTRAS"
fi
"$UPDATER" --help >/dev/null || die "$UPDATER does not run"
touch "$VENV/$SLOT_MARK"
# current -> this slot (previous -> the one current named before), each by rename(2):
# the link is never missing. A self-update's probation is over: this is an install.
OLD_SLOT="$(readlink "$PREFIX/current" 2>/dev/null || true)"
if [[ -n "$OLD_SLOT" && "$OLD_SLOT" != "versions/$SLOT_VERSION" ]]; then
    ln -sfn "$OLD_SLOT" "$PREFIX/.previous.tmp"
    mv -Tf "$PREFIX/.previous.tmp" "$PREFIX/previous"
fi
ln -sfn "versions/$SLOT_VERSION" "$PREFIX/.current.tmp"
mv -Tf "$PREFIX/.current.tmp" "$PREFIX/current"
rm -f "$PREFIX/probation" "$PREFIX/probation.starts"
sync
echo "    $PREFIX/current -> versions/$SLOT_VERSION"
cp -f "$SRC/systemd/updater-guard.sh" "$PREFIX/updater-guard.sh"
chmod 0755 "$PREFIX/updater-guard.sh"
cp -f "$SRC/systemd/uninstall.sh" "$PREFIX/uninstall.sh"
cp -f "$SRC/systemd/busy-probe-moonraker.sh" "$PREFIX/busy-probe-moonraker.sh"
mkdir -p "$PREFIX/docs"
cp -f "$SRC"/docs/*.md "$PREFIX/docs/" 2>/dev/null || true

# --- 2. the versions/ layout and the factory snapshot ----------------------------------
step "layout $ROOT"
if [[ -n "$VERSION" ]]; then
    # A no-op when the root already has this factory version; refuses another one.
    init_args=(init --root "$ROOT" --version "$VERSION")
    if [[ -n "$FROM" ]]; then init_args+=(--from "$FROM"); fi
    "$UPDATER" "${init_args[@]}"
elif [[ ! -L "$ROOT/versions/factory" ]]; then
    die "$ROOT has no factory version yet: give --version (and --from)"
fi
mkdir -p "$STATE_DIR"
chmod 0750 "$STATE_DIR"

# --- 3. links <bin-links>/<bin> -> <root>/versions/current/bin/<bin> --------------------
step "links in $BIN_LINKS"
mkdir -p "$BIN_LINKS"
LINKS_FILE="$PREFIX/installed-links"
: >"$LINKS_FILE.tmp"
if [[ -d "$ROOT/versions/current/bin" ]]; then
    for path in "$ROOT"/versions/current/bin/*; do
        [[ -e "$path" ]] || continue
        name="$(basename "$path")"
        link="$BIN_LINKS/$name"
        target="$ROOT/versions/current/bin/$name"
        if [[ -e "$link" && ! -L "$link" ]]; then
            die "$link exists and is not a link; move it away first"
        fi
        ln -sfn "$target" "$link.tope-tmp"
        mv -Tf "$link.tope-tmp" "$link"  # rename(2): the link is never missing
        echo "$link" >>"$LINKS_FILE.tmp"
        echo "    $link -> $target"
    done
fi
if [[ -f "$LINKS_FILE" ]]; then  # keep remembering links made by an earlier run
    sort -u "$LINKS_FILE" "$LINKS_FILE.tmp" >"$LINKS_FILE.new" && rm -f "$LINKS_FILE.tmp"
    mv -f "$LINKS_FILE.new" "$LINKS_FILE"
else
    mv -f "$LINKS_FILE.tmp" "$LINKS_FILE"
fi

# --- 4. config.toml (never overwritten: it is the device's configuration) --------------
mkdir -p "$CONFIG_DIR"
if [[ ! -e "$CONFIG" ]]; then
    step "config $CONFIG (new)"
    {
        echo "# tope-updater configuration; every key is listed in docs/DEPLOYMENT.md."
        echo "# Environment variables TOPE_UPDATER_<KEY> override these values."
        echo "root = \"$ROOT\""
        echo "state_dir = \"$STATE_DIR\""
        echo "host = \"${HOST:-127.0.0.1}\""
        echo "port = ${PORT:-12315}"
        echo "device_api_url = \"$DEVICE_API_URL\""
        toml_list extra_roots "${EXTRA_ROOTS[@]}"
        echo "# Where a file:// package may come from (a USB stick's mount point):"
        toml_list local_package_dirs "${USB_MOUNTS[@]}"
        echo "# Restarted (in this order) by a manual rollback when the journal names no units:"
        toml_list units "${UNITS[@]}"
        echo "# allow_downgrade = false   # refuse installing versions older than the running one"
        echo "# api_token = \"…\"          # require Authorization: Bearer <token> to mutate"
        echo "# allowed_hosts = [\"printer.local\"]   # Host names accepted besides loopback"
        echo "# trusted_key = \"/etc/tope-updater/package-signing.pub\""
        echo "# Never stop the printer mid-print (exit 0 = free); see docs/DEPLOYMENT.md:"
        echo "# busy_probe = \"$PREFIX/busy-probe-moonraker.sh http://127.0.0.1:7125\""
        if [[ $SCREEN -eq 1 ]]; then
            echo "# The progress display at the printer, started when an install begins:"
            echo "screen_unit = \"$SCREEN_UNIT\""
        fi
        echo "log_level = \"info\""
    } >"$CONFIG.tmp"
    chmod 0640 "$CONFIG.tmp"
    mv -f "$CONFIG.tmp" "$CONFIG"
else
    step "config $CONFIG (kept)"
    if [[ ${#USB_MOUNTS[@]} -gt 0 ]]; then
        echo "    --usb-mount: make sure $CONFIG lists the mount point(s) in local_package_dirs"
        echo "    and sets trusted_key: $(toml_list local_package_dirs "${USB_MOUNTS[@]}")"
    fi
fi

# --- 5. the unit files, with this install's paths --------------------------------------
# The socket listens where the config says the API is (host, port; defaults as the
# updater's), so that clients reading the config find it.
mapfile -t LISTEN < <("$VENV/bin/python" - "$CONFIG" <<'PY'
import sys, tomllib
with open(sys.argv[1], "rb") as fh:
    config = tomllib.load(fh)
print(config.get("host", "127.0.0.1"))
print(config.get("port", 12315))
PY
) || die "cannot read host and port from $CONFIG"
[[ ${#LISTEN[@]} -eq 2 && "${LISTEN[0]}" =~ ^[0-9A-Fa-f.:]+$ && "${LISTEN[1]}" =~ ^[0-9]+$ ]] \
    || die "$CONFIG: host must be an IP address and port a number for $SOCKET_UNIT"
if [[ -n "$PORT$HOST" && "${HOST:-${LISTEN[0]}}:${PORT:-${LISTEN[1]}}" != "${LISTEN[0]}:${LISTEN[1]}" ]]; then
    echo "    note: $CONFIG (kept) says ${LISTEN[0]}:${LISTEN[1]}; --host/--port ignored"
fi
case "${LISTEN[0]}" in
    *:*) LISTEN_STREAM="[${LISTEN[0]}]:${LISTEN[1]}" ;;
    *) LISTEN_STREAM="${LISTEN[0]}:${LISTEN[1]}" ;;
esac
step "socket $UNIT_DIR/$SOCKET_UNIT (ListenStream=$LISTEN_STREAM)"
mkdir -p "$UNIT_DIR"
sed -e "s|^ListenStream=.*|ListenStream=$LISTEN_STREAM|" \
    -e "s|^Documentation=.*|Documentation=file://$PREFIX/docs/DEPLOYMENT.md|" \
    "$SRC/systemd/$SOCKET_UNIT" >"$UNIT_DIR/.$SOCKET_UNIT.tmp"
chmod 0644 "$UNIT_DIR/.$SOCKET_UNIT.tmp"
SOCKET_CHANGED=1
if cmp -s "$UNIT_DIR/.$SOCKET_UNIT.tmp" "$UNIT_DIR/$SOCKET_UNIT"; then SOCKET_CHANGED=0; fi
mv -f "$UNIT_DIR/.$SOCKET_UNIT.tmp" "$UNIT_DIR/$SOCKET_UNIT"
step "unit $UNIT_DIR/$UNIT"
# <prefix> too: a self-update writes a new slot there and moves `current`.
RW_PATHS="$ROOT $PREFIX"
case "$STATE_DIR/" in "$ROOT"/*) ;; *) RW_PATHS+=" $STATE_DIR" ;; esac
# "-": an extra root that does not exist yet must not keep the service from starting.
for extra in "${EXTRA_ROOTS[@]}"; do RW_PATHS+=" -$extra"; done
mkdir -p "$UNIT_DIR"
sed -e "s|^ExecStart=.*|ExecStart=$CURRENT_UPDATER serve --config $CONFIG|" \
    -e "s|^ExecStartPre=.*|ExecStartPre=+$PREFIX/updater-guard.sh $PREFIX $UNIT|" \
    -e "s|^ReadWritePaths=.*|ReadWritePaths=$RW_PATHS|" \
    -e "s|^Documentation=.*|Documentation=file://$PREFIX/docs/DEPLOYMENT.md|" \
    "$SRC/systemd/tope-updater.service" >"$UNIT_DIR/.$UNIT.tmp"
chmod 0644 "$UNIT_DIR/.$UNIT.tmp"
mv -f "$UNIT_DIR/.$UNIT.tmp" "$UNIT_DIR/$UNIT"
# The display's unit: never enabled, tope-updater starts it (screen_unit).
sed -e "s|^ExecStart=.*|ExecStart=$CURRENT_UPDATER screen --config $CONFIG|" \
    -e "s|^Documentation=.*|Documentation=file://$PREFIX/docs/SCREEN.md|" \
    "$SRC/systemd/$SCREEN_UNIT" >"$UNIT_DIR/.$SCREEN_UNIT.tmp"
chmod 0644 "$UNIT_DIR/.$SCREEN_UNIT.tmp"
mv -f "$UNIT_DIR/.$SCREEN_UNIT.tmp" "$UNIT_DIR/$SCREEN_UNIT"
# The USB stick's template: always installed, enabled only for --usb-mount directories.
sed -e "s|^ExecStart=.*|ExecStart=$CURRENT_UPDATER usb-install --config $CONFIG %f|" \
    -e "s|^Documentation=.*|Documentation=file://$PREFIX/docs/DEPLOYMENT.md|" \
    "$SRC/systemd/$USB_UNIT" >"$UNIT_DIR/.$USB_UNIT.tmp"
chmod 0644 "$UNIT_DIR/.$USB_UNIT.tmp"
mv -f "$UNIT_DIR/.$USB_UNIT.tmp" "$UNIT_DIR/$USB_UNIT"

# --- 6. systemd --------------------------------------------------------------------------
"${SYSTEMCTL_ARGV[@]}" daemon-reload
if [[ $ENABLE -eq 1 ]]; then
    # Both: the socket holds the port from boot on; the service still starts at boot (a
    # journaled job resumes, reports are delivered), then exits when idle (idle_exit_s).
    step "enable $SOCKET_UNIT $UNIT"
    "${SYSTEMCTL_ARGV[@]}" enable "$SOCKET_UNIT" "$UNIT"
    for mount in "${USB_MOUNTS[@]}"; do
        instance="tope-updater-usb@$(systemd-escape --path "$mount").service"
        step "enable $instance (a stick mounted at $mount installs its signed package)"
        "${SYSTEMCTL_ARGV[@]}" enable "$instance"
    done
fi
if [[ $START -eq 1 ]]; then
    # restart, not start: a re-install must run the new code. The updater resumes any job
    # from its journal. Type=notify: this returns once the API listens (or fails).
    # The socket first. A new or changed one (or one not listening: an install from before
    # the socket, whose updater bound the port itself) needs the port free: the service
    # stops before. An unchanged, listening socket stays: connections wait in its queue
    # while the service restarts.
    socket_state="$("${SYSTEMCTL_ARGV[@]}" is-active "$SOCKET_UNIT" 2>/dev/null || true)"
    if [[ $SOCKET_CHANGED -eq 1 || "$socket_state" != active ]]; then
        step "(re)start $SOCKET_UNIT"
        "${SYSTEMCTL_ARGV[@]}" stop "$UNIT" 2>/dev/null || true
        "${SYSTEMCTL_ARGV[@]}" reset-failed "$SOCKET_UNIT" 2>/dev/null || true
        if ! "${SYSTEMCTL_ARGV[@]}" restart "$SOCKET_UNIT"; then
            "${SYSTEMCTL_ARGV[@]}" --no-pager status "$SOCKET_UNIT" >&2 || true
            die "$SOCKET_UNIT did not start (is $LISTEN_STREAM in use by another process?)"
        fi
    fi
    step "(re)start $UNIT"
    "${SYSTEMCTL_ARGV[@]}" reset-failed "$UNIT" 2>/dev/null || true
    if ! "${SYSTEMCTL_ARGV[@]}" restart "$UNIT"; then
        "${SYSTEMCTL_ARGV[@]}" --no-pager status "$UNIT" >&2 || true
        die "$UNIT did not start; logs: $STATE_DIR/logs/updater.log and journalctl -u $UNIT"
    fi
fi

# --- 7. check --------------------------------------------------------------------------
step "verify-setup"
"$UPDATER" verify-setup --config "$CONFIG" || die "verify-setup found problems (above)"
# An install from before the slots had one venv at <prefix>/venv: nothing runs it now.
if [[ -d "$PREFIX/venv" && $START -eq 1 ]]; then
    rm -rf "$PREFIX/venv"
    echo "    removed the single venv of an older install, $PREFIX/venv"
fi
echo "tope-updater installed: $CURRENT_UPDATER -> $UPDATER (config $CONFIG, units $UNIT_DIR/$SOCKET_UNIT $UNIT_DIR/$UNIT)"
