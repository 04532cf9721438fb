# shellcheck shell=sh
# shellcheck disable=SC2034 # VARIANT and friends are used by the sourcing scripts
# Helpers shared by the entrypoint and the CGI scripts (busybox ash).
# Source it; it reads the variant's identity and the settings the entrypoint saved.

STATE=/tmp/worker            # runtime state, reset at every start
read -r VERSION </worker/VERSION
read -r VARIANT </worker/VARIANT
# Settings saved by the entrypoint (CGI scripts do not get the container's env).
# shellcheck source=/dev/null
[ -r "$STATE/env" ] && . "$STATE/env"

# now_ms: unix time in milliseconds. Busybox `date` has no %N; adjtimex (read-only
# query, allowed by Docker's default seccomp profile) gives the microseconds.
now_ms() {
    adjtimex 2>/dev/null | awk '
        /tv_sec/  { s = $2 }
        /tv_usec/ { u = $2 }
        END { if (s == "") exit 1; printf "%d%03d\n", s, int(u / 1000) }' ||
        echo "$(date +%s)000"
}

# event_at MS NAME: records an event that happened at MS (unix ms):
# one line "<ms> <VERSION> <NAME>" on the container's log (PID 1's stdout) and,
# when EVENTS_FILE is set, appended to that file.
event_at() {
    _line="$1 $VERSION $2"
    echo "$_line" >/proc/1/fd/1 2>/dev/null || echo "$_line"
    if [ -n "${EVENTS_FILE:-}" ]; then
        echo "$_line" >>"$EVENTS_FILE" 2>/dev/null ||
            echo "test-worker: cannot append to EVENTS_FILE=$EVENTS_FILE" >/proc/1/fd/2
    fi
    return 0
}

# event NAME: records an event that happens now.
event() {
    event_at "$(now_ms)" "$1"
}

# write_file FILE TEXT: replaces FILE atomically.
write_file() {
    echo "$2" >"$1.$$" && mv -f "$1.$$" "$1"
}

# current_inflight: prints the number of in-flight jobs now. While draining
# ($STATE/draining holds "<ref ms> <count at ref>"), one job finishes every
# JOB_MS milliseconds after the reference time; otherwise the count stays put.
current_inflight() {
    if [ -r "$STATE/draining" ] && read -r _ref _n <"$STATE/draining"; then
        _done=$((($(now_ms) - _ref) / JOB_MS))
        _left=$((_n - _done))
        [ "$_left" -lt 0 ] && _left=0
        echo "$_left"
    else
        cat "$STATE/inflight" 2>/dev/null || echo 0
    fi
}

is_draining() {
    [ -e "$STATE/draining" ]
}

# respond STATUS JSON: writes a complete HTTP response (busybox httpd passes a
# CGI's output through unchanged when it starts with "HTTP/").
respond() {
    printf 'HTTP/1.0 %s\r\nContent-Type: application/json\r\nCache-Control: no-store\r\nContent-Length: %d\r\n\r\n%s\n' \
        "$1" $((${#2} + 1)) "$2"
}

# query_param NAME: prints the value of NAME in QUERY_STRING (a=1&b=2).
query_param() {
    _oldifs=$IFS
    IFS='&'
    for _kv in ${QUERY_STRING:-}; do
        case $_kv in "$1="*)
            IFS=$_oldifs
            echo "${_kv#*=}"
            return 0
            ;;
        esac
    done
    IFS=$_oldifs
    return 1
}

# drain_json: the drain state as JSON.
drain_json() {
    if is_draining; then _d=true; else _d=false; fi
    echo "{\"in_flight\":$(current_inflight),\"draining\":$_d}"
}
