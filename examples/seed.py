#!/usr/bin/env python3
"""Places a call through voice-otp's seed API (POST /outbound.cgi), standard
library only.

    VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
        python3 examples/seed.py 03001234567 482915 [--language ur] [--require-keypress] [--mode enter]

Prints `call_id=<id>` and exits 0 once the call is stored and queued; on a
refusal prints the status and the daemon's `detail` on stderr and exits 1.
The password comes from the environment, not the command line (which other
local users can read), and goes in the POST body, never in a URL.
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request


def main() -> int:
    parser = argparse.ArgumentParser(description="Place a voice OTP call through the seed API.")
    parser.add_argument("number", help="the phone to call, e.g. 03001234567 or +923001234567")
    parser.add_argument("code", help="the code to read, 4 to 20 digits")
    parser.add_argument("--language", help="one of the daemon's [call] languages (en, ur, ...)")
    parser.add_argument("--require-keypress", action="store_true", help="voicemail-safe mode")
    parser.add_argument("--mode", choices=["read", "enter"], help="read the code, or have the callee type it")
    args = parser.parse_args()

    base = os.environ.get("VOICE_OTP_URL", "http://127.0.0.1:8080").rstrip("/")
    try:
        user, password = os.environ["VOICE_OTP_USER"], os.environ["VOICE_OTP_PASSWORD"]
    except KeyError as missing:
        print(f"error: set {missing.args[0]}", file=sys.stderr)
        return 1
    form = {"number": args.number, "code": args.code, "username": user, "password": password}
    if args.language:
        form["language"] = args.language
    if args.require_keypress:
        form["require_keypress"] = "1"
    if args.mode:
        form["mode"] = args.mode
    request = urllib.request.Request(
        base + "/outbound.cgi",
        data=urllib.parse.urlencode(form).encode(),
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            answer = json.load(response)
    except urllib.error.HTTPError as refused:
        # Every answer is JSON; `detail` says what went wrong, `field` which
        # parameter, and a 429 or 503 says when to try again.
        try:
            answer = json.load(refused)
        except ValueError:
            answer = {}
        retry = refused.headers.get("Retry-After")
        print(
            f"refused: {refused.code} {answer.get('detail') or answer.get('response_description', '')}"
            + (f" (retry after {retry} s)" if retry else ""),
            file=sys.stderr,
        )
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot reach {base}: {e}", file=sys.stderr)
        return 1
    print(f"call_id={answer['call_id']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
