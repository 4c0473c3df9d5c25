#!/usr/bin/env python3
"""Verifies a phone number with voice-otp's verifications API, standard
library only: the daemon makes the code and calls the number to read it;
your user types what they heard into your app; you ask the daemon whether
it is right.

    VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
        python3 examples/verify.py start 03001234567 [--code-length 6] [--language ur]
                                         [--idempotency-key KEY]
    ... python3 examples/verify.py check VERIFICATION_ID CODE

`start` prints `verification_id=`, `call_id=`, `status=` and `expires_at=`
(a second `start` for the same number while one is pending calls again with
the same code: the same verification_id). Pass `--idempotency-key` to make a
retried request safe: the same key gets the first answer again and no
second call. `check` prints `status=` (`approved`, `pending`,
`max_attempts_reached`, `expired`, `canceled`) and `attempts_left=`.
Exit status: 0 for a started or approved verification, 2 for a check that
did not approve, 1 when the request was refused or the daemon could not be
asked. The password comes from the environment, not the command line.
"""

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request


def request(method: str, path: str, body=None, headers=None):
    base = os.environ.get("VOICE_OTP_URL", "http://127.0.0.1:8080").rstrip("/")
    token = base64.b64encode(f"{os.environ['VOICE_OTP_USER']}:{os.environ['VOICE_OTP_PASSWORD']}".encode()).decode()
    all_headers = {"Authorization": f"Basic {token}", "Accept": "application/json", **(headers or {})}
    data = None
    if body is not None:
        data = json.dumps(body).encode()
        all_headers["Content-Type"] = "application/json"
    req = urllib.request.Request(base + path, data=data, headers=all_headers, method=method)
    with urllib.request.urlopen(req, timeout=30) as response:
        return json.load(response)


def refused(error: urllib.error.HTTPError) -> int:
    try:
        body = json.load(error)
    except ValueError:
        body = {}
    text = f"{error.code} {body.get('detail') or body.get('title', '')}"
    if body.get("field"):
        text += f" (field {body['field']})"
    if error.headers.get("Retry-After"):
        text += f" (retry after {error.headers['Retry-After']} s)"
    print(f"error: {text}", file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description="Verify a phone number by a call that reads a code.")
    commands = parser.add_subparsers(dest="command", required=True)
    start = commands.add_parser("start", help="make a code and call the number to read it")
    start.add_argument("number")
    start.add_argument("--code-length", type=int)
    start.add_argument("--language")
    start.add_argument("--idempotency-key")
    check = commands.add_parser("check", help="ask whether the code your user typed is right")
    check.add_argument("verification_id")
    check.add_argument("code")
    args = parser.parse_args()
    if "VOICE_OTP_USER" not in os.environ or "VOICE_OTP_PASSWORD" not in os.environ:
        print("error: set VOICE_OTP_USER and VOICE_OTP_PASSWORD", file=sys.stderr)
        return 1
    try:
        if args.command == "start":
            order = {"number": args.number}
            if args.code_length:
                order["code_length"] = args.code_length
            if args.language:
                order["language"] = args.language
            headers = {"Idempotency-Key": args.idempotency_key} if args.idempotency_key else None
            v = request("POST", "/v1/verifications", order, headers)
            for key in ("id", "call_id", "status", "expires_at"):
                print(f"{'verification_id' if key == 'id' else key}={v[key]}")
            return 0
        v = request("POST", f"/v1/verifications/{args.verification_id}/check", {"code": args.code})
        print(f"status={v['status']}")
        print(f"attempts_left={v['attempts_left']}")
        return 0 if v["status"] == "approved" else 2
    except urllib.error.HTTPError as error:
        return refused(error)
    except (urllib.error.URLError, OSError) as error:
        print(f"error: cannot reach voice-otp: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
