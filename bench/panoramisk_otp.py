"""Reference FastAGI OTP server on panoramisk, for scripts/bench.

Runs the same flow as voice-otp's FastAGI side with its default [call]
settings, command for command: look the call up in SQLite (WAL) by
agi_uniqueid, check the channel's FastAGI token (GET VARIABLE, a hash
compared with the stored one), mark it answered, set the language, pause, intro, the digits
with pauses, "I repeat", the digits again, "press 1 to hear it again",
goodbye, record the end (code erased), EXEC Hangup 16. It is what a small Python service would do with
panoramisk; the benchmark drives it with the same load generator as ours.

Usage: panoramisk_otp.py DB IDS_FILE   (lines "ID TOKEN"; prints "ready agi=HOST:PORT")
"""

import asyncio
import hashlib
import hmac
import sqlite3
import sys
import time

from panoramisk import fast_agi

ANSWER_PAUSE_MS, DIGIT_PAUSE_MS, READING_PAUSE_MS, READINGS = 1000, 400, 600, 2
MAX_EXTRA_READINGS, REPLAY_WAIT_MS = 3, 5000
ANY_KEY, REPLAY_KEY = "0123456789*#", "1"
CODE = "482915"


def now_ms():
    return int(time.time() * 1000)


def token_hash(token):
    return hashlib.sha256(token.encode()).digest()


def open_db(path, calls):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, code TEXT, status TEXT NOT NULL,"
        " readings INTEGER NOT NULL DEFAULT 0, answered_at INTEGER, ended_at INTEGER, updated_at INTEGER,"
        " token_hash BLOB)"
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT OR REPLACE INTO calls (id, code, status, updated_at, token_hash) VALUES (?, ?, 'dialing', ?, ?)",
        [(i, CODE, now_ms(), token_hash(t)) for i, t in calls],
    )
    db.execute("COMMIT")
    return db


class HungUp(Exception):
    pass


class Flow:
    """voice-otp's default flow: language, pause, intro, the readings
    (interruptible by 1 = "again" while extra readings are left), "press 1
    to hear it again", goodbye."""

    def __init__(self, request, code):
        self.request, self.code = request, code
        self.readings, self.extra_left = 0, MAX_EXTRA_READINGS

    async def run(self, command):
        reply = await self.request.send_command(command)
        if reply.get("status_code") != 200 or "error" in reply:
            raise HungUp()
        return int(reply.get("result", ("0",))[0] or 0)

    async def wait(self, ms):
        result = await self.run("WAIT FOR DIGIT %d" % ms)
        if result == -1:
            raise HungUp()
        return chr(result) if result > 0 else None

    async def pause(self, ms, escape):
        key = await self.wait(ms) if ms > 0 else None
        return key if key and key in escape else None

    async def stream(self, sound, escape):
        result = await self.run('STREAM FILE %s "%s"' % (sound, escape))
        if result == -1:
            if await self.run("WAIT FOR DIGIT 1") == -1:
                raise HungUp()
            return None
        return chr(result) if result > 0 else None

    def escape(self):
        return REPLAY_KEY if self.extra_left > 0 else ""

    def asks_replay(self, key):
        if key == REPLAY_KEY and self.extra_left > 0:
            self.extra_left -= 1
            return True
        return False

    async def read_once(self, lead_in):
        if lead_in:
            if self.asks_replay(await self.pause(READING_PAUSE_MS, self.escape())):
                return False
            if self.asks_replay(await self.stream(lead_in, self.escape())):
                return False
        for digit in self.code:
            if self.asks_replay(await self.pause(DIGIT_PAUSE_MS, self.escape())):
                return False
            if self.asks_replay(await self.stream("digits/" + digit, self.escape())):
                return False
        return True

    async def script(self, language):
        # As voice-otp does: tell the dialplan the session took the call.
        await self.run('SET VARIABLE VOICE_OTP_AGI_REACHED "1"')
        await self.run('SET VARIABLE CHANNEL(language) "%s"' % language)
        await self.pause(ANSWER_PAUSE_MS, "")
        await self.stream("voice-otp/intro", "")
        owed, lead_in = READINGS, None
        while True:
            while self.readings < owed:
                if await self.read_once(lead_in):
                    self.readings += 1
                    lead_in = "voice-otp/repeat"
                else:
                    owed, lead_in = owed + 1, None
            if self.extra_left == 0:
                break
            await self.pause(READING_PAUSE_MS, "")
            key = await self.stream("voice-otp/press1", ANY_KEY)
            if key is None:
                key = await self.wait(REPLAY_WAIT_MS)
            if not self.asks_replay(key):
                break
            owed, lead_in = owed + 1, None
        await self.pause(READING_PAUSE_MS, "")
        await self.stream("voice-otp/goodbye", "")


def make_handler(db):
    async def otp(request):
        call_id = request.headers.get("agi_uniqueid", "")
        reply = await request.send_command("GET VARIABLE VOICE_OTP_TOKEN")
        result = reply.get("result", ("0", ""))
        token = result[1] if len(result) > 1 and result[0] == "1" else ""
        row = db.execute(
            "SELECT code, token_hash FROM calls WHERE id = ? AND status IN ('dialing', 'ringing', 'answered')",
            (call_id,),
        ).fetchone()
        if row is None or row[0] is None or not hmac.compare_digest(row[1] or b"", token_hash(token)):
            await request.send_command('EXEC Hangup "16"')
            return
        db.execute(
            "UPDATE calls SET status = 'answered', answered_at = ?, updated_at = ? WHERE id = ? AND status IN ('dialing', 'ringing')",
            (now_ms(), now_ms(), call_id),
        )
        flow = Flow(request, row[0])
        try:
            await flow.script("en")
        except HungUp:
            pass
        status = "completed" if flow.readings else "failed"
        db.execute(
            "UPDATE calls SET status = ?, readings = ?, code = NULL, ended_at = ?, updated_at = ? WHERE id = ?",
            (status, flow.readings, now_ms(), now_ms(), call_id),
        )
        await request.send_command('EXEC Hangup "16"')

    return otp


async def main():
    db_path, ids_path = sys.argv[1], sys.argv[2]
    with open(ids_path) as f:
        calls = [line.split() for line in f if line.strip()]
    db = open_db(db_path, calls)
    app = fast_agi.Application()
    app.add_route("otp", make_handler(db))
    server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print("ready agi=%s:%d" % (host, port), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
