#!/bin/sh
# tope-updater busy probe for Klipper printers, through Moonraker's HTTP API.
# (docs/DEPLOYMENT.md, "Never interrupting a print: the busy gate")
#
#   busy_probe = "/opt/tope-updater/busy-probe-moonraker.sh"
#   busy_probe = "/opt/tope-updater/busy-probe-moonraker.sh http://127.0.0.1:7125"
#
# Asks GET <moonraker>/printer/objects/query?print_stats=state,filename&virtual_sdcard=progress
# and reads result.status.print_stats.state:
#   printing, paused                        -> busy, exit 1: "printing benchy.gcode, 43 %"
#   standby, complete, cancelled, error     -> free, exit 0: "printer standby"
#   Moonraker down or slow, an HTTP error, an answer that is not the JSON above, a state
#   this script does not know                -> cannot tell, exit 2 (busy for the updater:
#                                               it fails safe), with the reason on line 1
# The first line of standard output is what /progress shows. Needs curl and python3.
#
# Environment (optional): MOONRAKER_URL (default http://127.0.0.1:7125, the first argument
# wins), MOONRAKER_API_KEY (sent as X-Api-Key when Moonraker does not trust the updater's
# address), MOONRAKER_MAX_TIME (seconds for the whole request, default 5; keep it below
# the updater's busy_probe_timeout_s).

set -u

url="${1:-${MOONRAKER_URL:-http://127.0.0.1:7125}}"
url="${url%/}"
max_time="${MOONRAKER_MAX_TIME:-5}"
query="$url/printer/objects/query?print_stats=state,filename&virtual_sdcard=progress"

# -sS: quiet, but errors go to stderr (captured: curl prints nothing else on success).
# --fail: an HTTP error status (Klippy not connected: 503 …) is a failure, not a body.
# --max-filesize: the answer is a few hundred bytes; a huge one is not Moonraker's.
if [ -n "${MOONRAKER_API_KEY:-}" ]; then
    body=$(curl -sS --fail --connect-timeout 2 --max-time "$max_time" --max-filesize 65536 \
        -H "X-Api-Key: $MOONRAKER_API_KEY" "$query" 2>&1)
else
    body=$(curl -sS --fail --connect-timeout 2 --max-time "$max_time" --max-filesize 65536 \
        "$query" 2>&1)
fi
status=$?
if [ "$status" -ne 0 ]; then
    detail=$(printf '%s\n' "$body" | head -n 1)
    printf 'cannot ask Moonraker at %s (curl exit %s): %s\n' "$url" "$status" "${detail:-no detail}"
    exit 2
fi

printf '%s' "$body" | python3 -c '
import json
import sys


def clean(text):
    """One printable line (a file name could hold anything)."""
    return "".join(c if c.isprintable() else "?" for c in str(text))[:120]


try:
    answer = json.load(sys.stdin)
except ValueError:
    print("Moonraker answered something that is not JSON; treating the printer as busy")
    sys.exit(2)
try:
    status = answer["result"]["status"]
    stats = status["print_stats"]
    state = stats["state"]
    if not isinstance(state, str):
        raise TypeError("state is not a string")
except Exception as exc:
    print("Moonraker answered without result.status.print_stats.state (%s);"
          " treating the printer as busy" % clean(exc.__class__.__name__))
    sys.exit(2)

if state in ("printing", "paused"):
    name = clean(stats.get("filename") or "an unnamed file")
    progress = (status.get("virtual_sdcard") or {}).get("progress")
    if isinstance(progress, (int, float)) and not isinstance(progress, bool):
        percent = int(max(0.0, min(1.0, float(progress))) * 100)
        print("%s %s, %d %%" % (state, name, percent))
    else:
        print("%s %s" % (state, name))
    sys.exit(1)
if state in ("standby", "complete", "cancelled", "error"):
    print("printer %s" % state)
    sys.exit(0)
print("unknown print state %r from Moonraker; treating the printer as busy" % clean(state))
sys.exit(2)
'
