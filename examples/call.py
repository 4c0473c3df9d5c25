#!/usr/bin/env python3
"""Places a call through voice-otp's JSON API (POST /v1/calls) and follows
it (GET /v1/calls/{id}) until it ends, standard library only.

    VOICE_OTP_URL=http://127.0.0.1:8080 VOICE_OTP_USER=acme1 VOICE_OTP_PASSWORD=... \
        python3 examples/call.py 03001234567 482915 [--mode enter] [--language ur]
                [--require-keypress] [--callback-url https://...] [--timeout 600]

Prints `call_id=<id>` as soon as the call is accepted, `status=<status>` at
every change, and at the end the final `status=`, `reason=` and, for an
enter-mode call, `verified=`. Exits 0 when the call completed (the code was
read in full, or typed right), 2 when it ended otherwise (busy, no answer,
...), 1 when the request was refused or the daemon could not be asked.
The password comes from the environment, not the command line.
"""

import argparse
import base64
import json
import os
import sys
import time
import urllib.error
import urllib.request

FINAL = {"completed", "failed", "expired", "canceled"}


class Api:
    """HTTP Basic auth and JSON in and out; errors are RFC 9457 problems."""

    def __init__(self, base: str, user: str, password: str):
        self.base = base.rstrip("/")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        self.headers = {"Authorization": f"Basic {token}", "Accept": "application/json"}

    def request(self, method: str, path: str, body=None):
        data = None if body is None else json.dumps(body).encode()
        headers = dict(self.headers)
        if data is not None:
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            return json.load(response)


def problem(refused: urllib.error.HTTPError) -> str:
    try:
        body = json.load(refused)
    except ValueError:
        body = {}
    text = f"{refused.code} {body.get('detail') or body.get('title', '')}"
    if body.get("field"):
        text += f" (field {body['field']})"
    if refused.headers.get("Retry-After"):
        text += f" (retry after {refused.headers['Retry-After']} s)"
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description="Place a voice OTP call and wait for its outcome.")
    parser.add_argument("number")
    parser.add_argument("code")
    parser.add_argument("--mode", choices=["read", "enter"])
    parser.add_argument("--language")
    parser.add_argument("--require-keypress", action="store_true")
    parser.add_argument("--callback-url", help="where the daemon POSTs this call's status changes")
    parser.add_argument("--timeout", type=float, default=600, help="seconds to wait for the end (default 600)")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between looks (default 1)")
    args = parser.parse_args()

    try:
        api = Api(os.environ.get("VOICE_OTP_URL", "http://127.0.0.1:8080"),
                  os.environ["VOICE_OTP_USER"], os.environ["VOICE_OTP_PASSWORD"])
    except KeyError as missing:
        print(f"error: set {missing.args[0]}", file=sys.stderr)
        return 1
    order = {"number": args.number, "code": args.code}
    if args.mode:
        order["mode"] = args.mode
    if args.language:
        order["language"] = args.language
    if args.require_keypress:
        order["require_keypress"] = True
    if args.callback_url:
        order["callback_url"] = args.callback_url
    try:
        call = api.request("POST", "/v1/calls", order)
    except urllib.error.HTTPError as refused:
        print(f"refused: {problem(refused)}", file=sys.stderr)
        return 1
    except (urllib.error.URLError, OSError) as e:
        print(f"error: cannot reach {api.base}: {e}", file=sys.stderr)
        return 1
    print(f"call_id={call['id']}", flush=True)

    # Polling is the simple way; a callback_url (see webhook_receiver.py)
    # tells you the same without asking.
    seen = None
    deadline = time.monotonic() + args.timeout
    while True:
        if call["status"] != seen:
            seen = call["status"]
            print(f"status={seen}", flush=True)
        if seen in FINAL:
            break
        if time.monotonic() > deadline:
            print(f"error: call {call['id']} still {seen} after {args.timeout:g} s", file=sys.stderr)
            return 1
        time.sleep(args.poll)
        try:
            call = api.request("GET", f"/v1/calls/{call['id']}")
        except urllib.error.HTTPError as refused:
            print(f"error: {problem(refused)}", file=sys.stderr)
            return 1
        except (urllib.error.URLError, OSError) as e:
            # A restart of the daemon, say: the call is stored, ask again.
            print(f"warning: {e}; asking again", file=sys.stderr)

    print(f"reason={call['reason'] or ''}")
    if call["mode"] == "enter":
        print(f"verified={str(call['verified']).lower()} attempts={call['attempts']}")
    return 0 if call["status"] == "completed" else 2


if __name__ == "__main__":
    sys.exit(main())
