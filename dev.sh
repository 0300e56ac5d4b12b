#!/usr/bin/env bash
# tope-updater developer entry point. Needs only python3 (>= 3.11) with venv and pip.
#
#   ./dev.sh run    set up .venv if needed, then run the updater on a local sandbox root
#                   (./var: factory v1.0.0 seeded on first run; API on 127.0.0.1:12315;
#                   no root privileges, no systemd)
#   ./dev.sh test   set up .venv with the test tools, then lint, type-check, check the
#                   import contracts and run the whole test suite but the `arm` tier
#                   (.ci/run, CI, runs this, then `./dev.sh arm`)
#   ./dev.sh arm    the `arm` tier only (tests/e2e/test_arm*.py): the offline bundle and a
#                   whole update cycle on emulated aarch64 and armv7l and natively on
#                   x86_64, the screen on emulated armv7l (Debian's python3-pygame), on
#                   two cores; root, qemu-user-static, mmdebstrap,
#                   gcc-arm-linux-gnueabihf, PyPI and Debian's mirror (~10 minutes)
#   ./dev.sh fast   the same checks, then only the fast tier: no systemd, hawkBit, crash
#                   harness, `serve` subprocess or slow test (tests/conftest.py marks them),
#                   on all cores, with fewer hypothesis examples (profile dev); a few minutes
#   ./dev.sh demo   set up, then run a complete visible OTA cycle (download, install
#                   once a simulated print is over, broken update, automatic rollback)
#                   on a throwaway sandbox
#
# Extra arguments are passed on: `./dev.sh run --port 8080`, `./dev.sh test -k journal`,
# `./dev.sh fast tests/ops`.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
VENV=.venv

setup() {
    local extras=$1 stamp="$VENV/.installed-$1"
    if [ ! -x "$VENV/bin/python" ]; then
        "$PY" -c 'import sys; assert sys.version_info >= (3, 11), "Python >= 3.11 needed"'
        "$PY" -m venv "$VENV"
    fi
    # Reinstall only when the dependency list changed.
    if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
        "$VENV/bin/python" -m pip install --quiet --upgrade pip
        if [ "$extras" = test ]; then
            "$VENV/bin/python" -m pip install --quiet -e '.[test,screen]'
        else
            "$VENV/bin/python" -m pip install --quiet -e .
        fi
        touch "$stamp"
    fi
}

# The tiers the fast run leaves out (markers registered in pyproject.toml).
FAST_TIER="not (systemd or fleet_server or crash or e2e or slow or arm)"

checks() {
    "$VENV/bin/ruff" check .
    "$VENV/bin/ruff" format --check .
    "$VENV/bin/mypy"
    "$VENV/bin/lint-imports" --no-cache --no-logo  # the architecture's import contracts (pyproject.toml)
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
    run)
        setup runtime
        exec "$VENV/bin/tope-updater" serve --sandbox var "$@"
        ;;
    demo)
        setup runtime
        exec "$VENV/bin/tope-updater" demo "$@"
        ;;
    test)
        setup test
        checks
        # On all cores (pytest-xdist); the tests sharing a session fixture (hawkBit, the
        # release bundles) stay in one worker each (tests/conftest.py XDIST_GROUP_OF_FIXTURE).
        exec "$VENV/bin/pytest" -n auto --dist loadgroup -m "not arm" "$@"
        ;;
    arm)
        setup test
        # Two workers, by xdist_group: armv7l's cycle (which also cross-compiles two
        # wheels) alone on one; aarch64, x86_64 and the armv7l screen (Debian's pygame)
        # on the other; -rP prints each one's figures.
        exec "$VENV/bin/pytest" -n 2 --dist loadgroup -m arm -rP \
            tests/e2e/test_arm.py tests/e2e/test_arm_screen.py "$@"
        ;;
    fast)
        setup test
        checks
        # pytest-xdist spreads the tier over the cores (-n auto).
        HYPOTHESIS_PROFILE=${HYPOTHESIS_PROFILE:-dev} \
            exec "$VENV/bin/pytest" -n auto -m "$FAST_TIER" "$@"
        ;;
    *)
        sed -n '2,23p' "$0" | sed 's/^# \{0,1\}//'
        exit 2
        ;;
esac
