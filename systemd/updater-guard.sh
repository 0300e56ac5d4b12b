#!/bin/sh
# The updater's guard: puts a new updater that does not start back to the old one.
#
#   ExecStartPre=+<prefix>/updater-guard.sh <prefix> tope-updater.service
#   updater-guard.sh --deadline <prefix> tope-updater.service     (a transient timer)
#
# Runs before every start of the updater (with full privileges: "+"), and depends on
# nothing of the updater's code, only on POSIX sh, readlink, ln, mv, date and systemctl.
# In the spirit of boot counting:
#
# * A self-update writes <prefix>/probation before it points <prefix>/current at the new
#   slot ("version=", "previous=", "deadline=" UNIX seconds, "max_starts=", one per line).
#   The new updater deletes it once it has proved itself (read the journal, answered
#   /healthz with its version, reached a settled state).
# * While <prefix>/probation exists, each start is counted in <prefix>/probation.starts.
#   The start after `max_starts` starts (so `max_starts` failed ones: Restart=on-failure), or
#   any start after `deadline`, switches `current` back to `previous` (symlink + rename),
#   writes <prefix>/updater-rollback ("version=", "previous=", "reason=") and removes the
#   probation; this very start then runs the old updater, which reports
#   "UPDATER_ROLLBACK: <version> failed to start (<reason>)" once and deletes the record.
# * A probation whose `current` is not the new slot any more (an operator re-ran
#   install.sh) is stale and removed.
#
# * `--deadline`: run by a transient timer the old updater starts when it switches
#   (`systemd-run --on-active=<updater_probation_s + 5 s>`): if the probation is still there
#   and its deadline has passed, restart the unit, so that the start above puts the old
#   updater back. It catches a new updater that runs but never proves itself (and keeps
#   pinging the watchdog) without relying on any of its code.
#
# It never fails the start: every problem is written to stderr (the unit's journal) and
# the updater starts with whatever `current` names.
set -u

MODE=start
if [ "${1:-}" = "--deadline" ]; then
    MODE=deadline
    shift
fi

PREFIX=${1:?usage: updater-guard.sh PREFIX [UNIT]}
UNIT=${2:-tope-updater.service}
PROBATION="$PREFIX/probation"
STARTS="$PREFIX/probation.starts"
RECORD="$PREFIX/updater-rollback"

say() { echo "updater-guard: $*" >&2; }

[ -f "$PROBATION" ] || exit 0

version="" previous="" deadline=0 max_starts=3
while IFS='=' read -r key value; do
    case "$key" in
        version) version=$value ;;
        previous) previous=$value ;;
        deadline) deadline=$value ;;
        max_starts) max_starts=$value ;;
    esac
done <"$PROBATION"
case "$version$previous" in
    *[!A-Za-z0-9.+!-]* | "" | .* | *.. ) say "unreadable $PROBATION, ignored"; rm -f "$PROBATION" "$STARTS"; exit 0 ;;
esac
case "$deadline$max_starts" in
    *[!0-9]*) say "unreadable $PROBATION, ignored"; rm -f "$PROBATION" "$STARTS"; exit 0 ;;
esac

if [ "$MODE" = deadline ]; then
    if [ "$(date +%s)" -gt "$deadline" ]; then
        say "updater $version still on probation past its deadline: restarting $UNIT"
        systemctl restart --no-block "$UNIT" || say "systemctl restart $UNIT failed"
    fi
    exit 0
fi

current=$(readlink "$PREFIX/current" 2>/dev/null || true)
if [ "$current" != "versions/$version" ]; then
    say "current is '$current', not the slot on probation ($version): probation dropped"
    rm -f "$PROBATION" "$STARTS"
    exit 0
fi

starts=0
if [ -f "$STARTS" ]; then
    read -r starts <"$STARTS" || starts=0
    case "$starts" in *[!0-9]* | "") starts=0 ;; esac
fi
starts=$((starts + 1))
echo "$starts" >"$STARTS.tmp" && mv -f "$STARTS.tmp" "$STARTS"
now=$(date +%s)

if [ "$starts" -le "$max_starts" ] && [ "$now" -le "$deadline" ]; then
    say "updater $version on probation: start $starts of $max_starts"
    exit 0
fi

failed=$((starts - 1))
if [ "$starts" -gt "$max_starts" ]; then
    reason="exited $failed times during probation"
else
    reason="not confirmed before its probation deadline ($failed starts)"
fi
# The last exit of the failed updater, when systemd still knows it.
status=$(systemctl show -P ExecMainStatus "$UNIT" 2>/dev/null || true)
case "$status" in
    "" | 0 | *[!0-9]*) ;;
    *) reason="$reason; last exit status $status" ;;
esac

if [ ! -e "$PREFIX/versions/$previous/bin/tope-updater" ]; then
    say "updater $version failed ($reason) but the previous slot $previous is gone: kept"
    exit 0
fi
say "updater $version failed ($reason): back to $previous"
printf 'version=%s\nprevious=%s\nreason=%s\n' "$version" "$previous" "$reason" >"$RECORD.tmp"
sync
mv -f "$RECORD.tmp" "$RECORD"
ln -sfn "versions/$previous" "$PREFIX/.current.tmp"
mv -Tf "$PREFIX/.current.tmp" "$PREFIX/current"
rm -f "$PROBATION" "$STARTS"
sync
exit 0
