#!/bin/sh
# Verifies a phone number with voice-otp's verifications API and curl: the
# daemon makes the code and calls the number to read it; your user types
# what they heard into your app; you ask the daemon whether it is right.
#
#   VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
#       sh examples/verify.sh start 03001234567 [IDEMPOTENCY_KEY]
#   ... sh examples/verify.sh check VERIFICATION_ID CODE
#
# start prints verification_id=, call_id= and status=; a retry with the same
# IDEMPOTENCY_KEY gets the first answer again and places no second call.
# check prints status= (approved, pending, max_attempts_reached, expired,
# canceled) and attempts_left=. Exits 0 for a started or approved
# verification, 2 for a check that did not approve, 1 when refused. The user
# and password go to curl on its standard input (-K -), not on its command
# line, which other local users can read.
set -eu

: "${VOICE_OTP_USER:?set VOICE_OTP_USER}" "${VOICE_OTP_PASSWORD:?set VOICE_OTP_PASSWORD}"
url="${VOICE_OTP_URL:-http://127.0.0.1:8080}"
usage() {
    echo "usage: sh $0 start NUMBER [IDEMPOTENCY_KEY] | check VERIFICATION_ID CODE" >&2
    exit 1
}
[ $# -ge 2 ] || usage

body=$(mktemp)
trap 'rm -f "$body"' EXIT

# curl's config on stdin: the credentials, any header and the data.
api() {
    path=$1 data=$2 key=${3:-}
    {
        printf 'user = "%s"\n' "$(printf '%s:%s' "$VOICE_OTP_USER" "$VOICE_OTP_PASSWORD" | sed 's/[\\"]/\\&/g')"
        printf 'header = "Content-Type: application/json"\n'
        [ -z "$key" ] || printf 'header = "Idempotency-Key: %s"\n' "$key"
        printf 'data = "%s"\n' "$(printf '%s' "$data" | sed 's/[\\"]/\\&/g')"
    } | curl -sS -K - -X POST -o "$body" -w '%{http_code}' "$url$path"
}

# A field of the one-line JSON answer: a string's value, or a bare value.
field() {
    sed -n -e "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" -e "t" -e "s/.*\"$1\":\([^,}\"]*\).*/\1/p" "$body"
}

case $1 in
start)
    number=$2 key=${3:-}
    case $number in *[!0-9+]*) echo "error: NUMBER must be digits, optionally after +" >&2; exit 1 ;; esac
    case $key in *[!A-Za-z0-9._-]*) echo "error: IDEMPOTENCY_KEY: letters, digits, . _ - only" >&2; exit 1 ;; esac
    status=$(api /v1/verifications "{\"number\":\"$number\"}" "$key") || { echo "error: cannot reach $url" >&2; exit 1; }
    case $status in
    200 | 201) ;;
    *) echo "refused: $status $(field detail)" >&2; exit 1 ;;
    esac
    echo "verification_id=$(field id)"
    echo "call_id=$(field call_id)"
    echo "status=$(field status)"
    ;;
check)
    [ $# -eq 3 ] || usage
    id=$2 code=$3
    case $id in *[!0-9a-f]*) echo "error: VERIFICATION_ID is hex" >&2; exit 1 ;; esac
    case $code in '' | *[!0-9]*) echo "error: CODE must be digits" >&2; exit 1 ;; esac
    status=$(api "/v1/verifications/$id/check" "{\"code\":\"$code\"}") || { echo "error: cannot reach $url" >&2; exit 1; }
    if [ "$status" != 200 ]; then
        echo "refused: $status $(field detail)" >&2
        exit 1
    fi
    verdict=$(field status)
    echo "status=$verdict"
    echo "attempts_left=$(field attempts_left)"
    [ "$verdict" = approved ] || exit 2
    ;;
*) usage ;;
esac
