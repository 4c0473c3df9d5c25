#!/bin/sh
# Places a call through voice-otp's JSON API (POST /v1/calls) with curl and
# follows it (GET /v1/calls/{id}) until it ends.
#
#   VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
#       sh examples/call.sh 03001234567 482915 [read|enter]
#
# Prints call_id=<id> once the call is accepted, status=<status> at every
# change, then reason=<reason>. Exits 0 when the call completed, 2 when it
# ended otherwise (busy, no answer, ...), 1 when the request was refused.
# VOICE_OTP_TIMEOUT (default 600) bounds the wait in seconds. The user and
# password go to curl on its standard input (-K -), not on its command
# line, which other local users can read; so does the body with the code.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: sh $0 NUMBER CODE [read|enter]" >&2
    exit 1
fi
: "${VOICE_OTP_USER:?set VOICE_OTP_USER}" "${VOICE_OTP_PASSWORD:?set VOICE_OTP_PASSWORD}"
url="${VOICE_OTP_URL:-http://127.0.0.1:8080}"
number=$1 code=$2 mode=${3:-read}
timeout=${VOICE_OTP_TIMEOUT:-600}
# Only what the API accepts anyway, so the JSON below needs no escaping.
case $number in '' | *[!0-9+]*) echo "error: NUMBER must be digits, optionally after +" >&2; exit 1 ;; esac
case $code in '' | *[!0-9]*) echo "error: CODE must be digits" >&2; exit 1 ;; esac
case $mode in read | enter) ;; *) echo "error: the mode is read or enter" >&2; exit 1 ;; esac

body=$(mktemp)
trap 'rm -f "$body"' EXIT

# curl's config on stdin: the credentials (quoted for curl's config syntax)
# and any data, so neither shows in the process list.
api() {
    method=$1 path=$2 data=${3:-}
    {
        printf 'user = "%s"\n' "$(printf '%s:%s' "$VOICE_OTP_USER" "$VOICE_OTP_PASSWORD" | sed 's/[\\"]/\\&/g')"
        if [ -n "$data" ]; then
            printf 'header = "Content-Type: application/json"\n'
            printf 'data = "%s"\n' "$(printf '%s' "$data" | sed 's/[\\"]/\\&/g')"
        fi
    } | curl -sS -K - -X "$method" -o "$body" -w '%{http_code}' "$url$path"
}

# A field of the one-line JSON answer: a string's value, or a bare value
# (null, true, a number). Enough for these answers without jq.
field() {
    sed -n -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" -e "t" -e "s/.*\"$1\":\([^,}\"]*\).*/\1/p" "$body"
}

status=$(api POST /v1/calls "{\"number\":\"$number\",\"code\":\"$code\",\"mode\":\"$mode\"}") \
    || { echo "error: cannot reach $url" >&2; exit 1; }
if [ "$status" != 202 ]; then
    echo "refused: $status $(field detail)" >&2
    exit 1
fi
id=$(field id)
echo "call_id=$id"

seen=""
start=$(date +%s)
answered=202 # $body holds the call as the POST answered it
while :; do
    if [ "$answered" = 200 ] || [ "$answered" = 202 ]; then
        now=$(field status)
        if [ "$now" != "$seen" ]; then
            seen=$now
            echo "status=$seen"
        fi
        case $seen in completed | failed | expired | canceled) break ;; esac
    fi
    if [ $(($(date +%s) - start)) -gt "$timeout" ]; then
        echo "error: call $id still $seen after $timeout s" >&2
        exit 1
    fi
    sleep 1
    # A restart of the daemon, say: the call is stored, ask again.
    answered=$(api GET "/v1/calls/$id") || answered=000
    [ "$answered" = 200 ] || echo "warning: GET /v1/calls/$id answered $answered; asking again" >&2
done

reason=$(field reason)
[ "$reason" = null ] && reason=""
echo "reason=$reason"
if [ "$seen" = completed ]; then exit 0; fi
exit 2
