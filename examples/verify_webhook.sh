#!/bin/sh
# Checks one voice-otp webhook's signature with openssl (README "Webhooks"),
# e.g. from a CGI script or on a delivery saved for inspection.
#
#   VOICE_OTP_WEBHOOK_SECRET=... sh examples/verify_webhook.sh "$SIGNATURE_HEADER" "$DELIVERY" "$EVENT" BODY_FILE
#
# SIGNATURE_HEADER is the X-Voice-OTP-Signature value (t=...,v1=...,v2=...),
# DELIVERY and EVENT the X-Voice-OTP-Delivery and X-Voice-OTP-Event values,
# BODY_FILE the raw body as received (- for standard input). Exits 0 and
# prints "valid" when v2 is HMAC-SHA256(secret, "<t>\n<delivery>\n<event>\n<body>")
# and t is at most VOICE_OTP_TOLERANCE seconds (300) from now; else prints
# why on stderr and exits 1. Careful: openssl takes the secret on its command line, where
# other local users can see it while it runs; on a shared machine prefer
# webhook_receiver.py.
set -eu

if [ $# -ne 4 ]; then
    echo "usage: sh $0 SIGNATURE_HEADER DELIVERY EVENT BODY_FILE" >&2
    exit 1
fi
: "${VOICE_OTP_WEBHOOK_SECRET:?set VOICE_OTP_WEBHOOK_SECRET}"
header=$1 delivery=$2 event=$3 file=$4
tolerance=${VOICE_OTP_TOLERANCE:-300}

t=$(printf '%s\n' "$header" | tr ',' '\n' | sed -n 's/^ *t=//p' | head -n 1)
v2=$(printf '%s\n' "$header" | tr ',' '\n' | sed -n 's/^ *v2=//p' | head -n 1)
case $t in '' | *[!0-9]*) echo "invalid: malformed signature header" >&2; exit 1 ;; esac
case $v2 in '' | *[!0-9a-f]*) echo "invalid: malformed signature header" >&2; exit 1 ;; esac
age=$(($(date +%s) - t))
if [ "$age" -gt "$tolerance" ] || [ "$age" -lt "-$tolerance" ]; then
    echo "invalid: timestamp outside the tolerance (a replay?)" >&2
    exit 1
fi

body=$(mktemp)
trap 'rm -f "$body"' EXIT
cat -- "$file" >"$body"

hmac() {
    openssl dgst -sha256 -hmac "$VOICE_OTP_WEBHOOK_SECRET" | sed 's/^.*= //'
}
expected=$({ printf '%s\n%s\n%s\n' "$t" "$delivery" "$event"; cat "$body"; } | hmac)
# A shell cannot compare in constant time; comparing HMACs of both values
# instead tells a timing attacker nothing about the expected one.
if [ "$(printf '%s' "$expected" | hmac)" != "$(printf '%s' "$v2" | hmac)" ]; then
    echo "invalid: signature does not match" >&2
    exit 1
fi
echo valid
