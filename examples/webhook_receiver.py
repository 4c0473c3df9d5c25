#!/usr/bin/env python3
"""Receives voice-otp's webhooks and checks their signatures, standard
library only (README "Webhooks").

    VOICE_OTP_WEBHOOK_SECRET=... python3 examples/webhook_receiver.py [--host 127.0.0.1] [--port 8000]

Prints `listening on http://HOST:PORT/` (port 0 picks a free one), then one
line per POST: `accepted event=call.<status> call=<id> status=<status>
delivery=<id>` when the signature is right, answering 200; `duplicate ...`
for a delivery already accepted (the daemon retries when it gets no 2xx in
time: dedupe on X-Voice-OTP-Delivery), also 200; `rejected: <why>` with 401
when the signature is missing, malformed, wrong or too old.

The check: `X-Voice-OTP-Signature: t=<unix seconds>,v1=<hex>,v2=<hex>` where
v2 is HMAC-SHA256 under the user's webhook secret (`voice-otp user add`
prints it) of `"<t>\\n<X-Voice-OTP-Delivery>\\n<X-Voice-OTP-Event>\\n<raw body>"`
(line breaks: no header value holds one),
compared in constant time, with `t` at most --tolerance seconds (300) from
now against old replays. v2 covers the delivery id and the event too, so a
copy replayed within the tolerance under a new delivery id is refused, not
taken for a new delivery. Check the raw bytes: parse the JSON only after.
"""

import argparse
import hashlib
import hmac
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MAX_BODY = 1 << 20


def verify(secret: bytes, header: str, delivery: str, event: str, body: bytes, tolerance: int, now: float) -> str:
    """An empty string when `header` signs `body` as this delivery and event, else why not."""
    parts = {}
    for part in header.split(","):
        key, sep, value = part.strip().partition("=")
        if sep:
            parts.setdefault(key, value)
    t, v2 = parts.get("t", ""), parts.get("v2", "")
    if not t.isdigit() or not v2:
        return "malformed signature header"
    if abs(now - int(t)) > tolerance:
        return "timestamp outside the tolerance (a replay?)"
    signed = b"\n".join([t.encode(), delivery.encode(), event.encode(), body])
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, v2):
        return "signature does not match"
    return ""


class Receiver(BaseHTTPRequestHandler):
    secret = b""
    tolerance = 300
    seen = set()
    lock = threading.Lock()

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length > MAX_BODY:
            return self.answer(413, "rejected: body too large")
        body = self.rfile.read(length)
        header = self.headers.get("X-Voice-OTP-Signature")
        if header is None:
            return self.answer(401, "rejected: no X-Voice-OTP-Signature header")
        delivery = self.headers.get("X-Voice-OTP-Delivery", "")
        event = self.headers.get("X-Voice-OTP-Event", "")
        why = verify(self.secret, header, delivery, event, body, self.tolerance, time.time())
        if why:
            return self.answer(401, f"rejected: {why}")
        call = json.loads(body)
        with self.lock:
            first = delivery not in self.seen
            self.seen.add(delivery)
        word = "accepted" if first else "duplicate"
        # Here a real receiver would act on the call: mark the user's phone
        # verified on call.completed (in enter mode: "verified": true), offer
        # an SMS on call.failed, ...
        self.answer(200, f"{word} event={event} call={call['id']} status={call['status']} delivery={delivery}")

    def answer(self, status: int, line: str):
        print(line, flush=True)
        payload = (line + "\n").encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format, *args):
        # One line per webhook on stdout is enough; no access log.
        pass


def main() -> int:
    parser = argparse.ArgumentParser(description="Receive and check voice-otp webhooks.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--tolerance", type=int, default=300, help="seconds a signature's t may be off (default 300)")
    args = parser.parse_args()
    secret = os.environ.get("VOICE_OTP_WEBHOOK_SECRET")
    if not secret:
        print("error: set VOICE_OTP_WEBHOOK_SECRET (voice-otp user add prints it)", file=sys.stderr)
        return 1
    Receiver.secret = secret.encode()
    Receiver.tolerance = args.tolerance
    server = ThreadingHTTPServer((args.host, args.port), Receiver)
    host, port = server.server_address[:2]
    print(f"listening on http://{host}:{port}/", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
