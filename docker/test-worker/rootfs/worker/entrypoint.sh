#!/bin/sh
# Test worker entrypoint (runs as PID 1). Starts busybox httpd serving the CGI
# endpoints under /www/cgi-bin, a background loop that records the "idle" event
# when a drain finishes, and handles SIGTERM. Behaviour per variant (the file
# /worker/VARIANT baked into the image):
#   good      health 200
#   broken    health 500 forever, process stays up
#   crash     no HTTP; exits 1 CRASH_AFTER seconds (default 1) after start
#   slowstop  ignores SIGTERM (logs it), so the engine must SIGKILL
#   hc-good, hc-bad   like good (the images add a Docker HEALTHCHECK)
# See docker/test-worker/README.md for the whole contract.
set -u
# shellcheck source=docker/test-worker/rootfs/worker/lib.sh
. /worker/lib.sh

PORT="${PORT:-8080}"
BIND_ADDR="${BIND_ADDR:-127.0.0.1}"
INFLIGHT_JOBS="${INFLIGHT_JOBS:-0}"
JOB_SECONDS="${JOB_SECONDS:-1}"
CRASH_AFTER="${CRASH_AFTER:-1}"
EVENTS_FILE="${EVENTS_FILE:-}"

case $INFLIGHT_JOBS in '' | *[!0-9]*)
    echo "test-worker: INFLIGHT_JOBS must be a whole number, got '$INFLIGHT_JOBS'" >&2
    exit 2
    ;;
esac
JOB_MS=$(awk -v s="$JOB_SECONDS" 'BEGIN { v = int(s * 1000); if (v < 1) v = 1; print v }')

# Fresh state at every start (a restarted container starts over).
mkdir -p "$STATE"
rm -f "$STATE"/*
# quote VALUE: single-quoted for sh.
quote() { printf "'%s'" "$(printf '%s' "$1" | sed "s/'/'\\\\''/g")"; }
{
    echo "EVENTS_FILE=$(quote "$EVENTS_FILE")"
    echo "JOB_MS=$JOB_MS"
    echo "DIGEST=$(quote "${GPU_AGENT_DIGEST:-}")"
    echo "AGENT_ID=$(quote "${GPU_AGENT_ID:-}")"
    echo "DRAIN_DELETE=$(quote "${DRAIN_DELETE:-}")"
} >"$STATE/env"
# shellcheck source=/dev/null
. "$STATE/env"
write_file "$STATE/inflight" "$INFLIGHT_JOBS"

HTTPD_PID=
TICK_PID=

# SIGTERM: record it; then exit at once, except for the slowstop variant, which
# keeps running until the engine sends SIGKILL. (A shell PID 1 would otherwise
# ignore SIGTERM.)
on_term() {
    event sigterm
    [ "$VARIANT" = slowstop ] && return 0
    [ -n "$HTTPD_PID" ] && kill "$HTTPD_PID" 2>/dev/null
    [ -n "$TICK_PID" ] && kill "$TICK_PID" 2>/dev/null
    exit 0
}
trap on_term TERM INT

event start

if [ "$VARIANT" = crash ]; then
    sleep "$CRASH_AFTER" &
    wait $!
    event crash
    exit 1
fi

# tick_loop: every 50 ms, while draining, records "idle" (with the exact time the
# last job finished) once per drain reference.
tick_loop() {
    trap - TERM INT
    while :; do
        if [ -r "$STATE/draining" ] && read -r ref n <"$STATE/draining" &&
            [ "$(cat "$STATE/idle" 2>/dev/null)" != "$ref $n" ]; then
            done_at=$((ref + n * JOB_MS))
            if [ "$(now_ms)" -ge "$done_at" ]; then
                write_file "$STATE/idle" "$ref $n"
                event_at "$done_at" idle
            fi
        fi
        sleep 0.05
    done
}

httpd -f -p "$BIND_ADDR:$PORT" -h /www &
HTTPD_PID=$!
tick_loop &
TICK_PID=$!

# Registration with the hub, when HUB_URL is set: what a real worker does once
# it can take jobs, under GPU_AGENT_ID with GPU_AGENT_DIGEST (POST
# $HUB_URL/v1/workers/<id>/register, the mock hub's registration call). Tried
# for up to 30 s; "registered" or "register-refused" goes to the events.
register_loop() {
    trap - TERM INT
    _url="${HUB_URL%/}/v1/workers/$AGENT_ID/register"
    _i=0
    while [ "$_i" -lt 60 ]; do
        if wget -q -O /dev/null --post-data "digest=$DIGEST" "$_url" 2>/dev/null; then
            event registered
            return 0
        fi
        _i=$((_i + 1))
        sleep 0.5
    done
    event register-refused
}
if [ -n "${HUB_URL:-}" ] && [ -n "$AGENT_ID" ]; then
    register_loop &
fi

# Wait for httpd; a trapped signal interrupts `wait`, so wait again while it lives.
while :; do
    wait "$HTTPD_PID"
    rc=$?
    kill -0 "$HTTPD_PID" 2>/dev/null && continue
    echo "test-worker: httpd exited with status $rc (port $BIND_ADDR:$PORT in use?)" >&2
    kill "$TICK_PID" 2>/dev/null
    exit 1
done
