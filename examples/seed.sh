#!/bin/sh
# Places a call through voice-otp's seed API (POST /outbound.cgi) with curl.
#
#   VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
#       sh examples/seed.sh 03001234567 482915 [EXTRA_FORM_FIELDS...]
#
# EXTRA_FORM_FIELDS are name=value pairs such as language=ur,
# require_keypress=1 or mode=enter. Prints call_id=<id> and exits 0 once the
# call is stored; on a refusal prints the status and the daemon's detail on
# stderr and exits 1. The password goes to curl on its standard input (not
# on its command line, which other local users can read) and in the POST
# body, never in a URL.
set -eu

if [ $# -lt 2 ]; then
    echo "usage: sh $0 NUMBER CODE [name=value...]" >&2
    exit 1
fi
: "${VOICE_OTP_USER:?set VOICE_OTP_USER}" "${VOICE_OTP_PASSWORD:?set VOICE_OTP_PASSWORD}"
url="${VOICE_OTP_URL:-http://127.0.0.1:8080}"
number=$1 code=$2
shift 2
extra=""
for field in "$@"; do
    extra="$extra --data-urlencode $field"
done

body=$(mktemp)
trap 'rm -f "$body"' EXIT
# shellcheck disable=SC2086 # $extra is a list of curl options
status=$(printf '%s' "$VOICE_OTP_PASSWORD" | curl -sS -o "$body" -w '%{http_code}' \
    --data-urlencode "number=$number" --data-urlencode "code=$code" \
    --data-urlencode "username=$VOICE_OTP_USER" --data-urlencode "password@-" $extra \
    "$url/outbound.cgi") || { echo "error: cannot reach $url" >&2; exit 1; }

# The answer is one line of JSON; a field of it, without needing jq.
field() {
    sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p" "$body"
}

if [ "$status" != 200 ]; then
    echo "refused: $status $(field detail)" >&2
    exit 1
fi
echo "call_id=$(field call_id)"
