"""Reference FastAGI OTP server on panoramisk, for scripts/bench.

Runs the same flow as voice-otp's FastAGI side, command for command: look
the call up in SQLite (WAL) by agi_uniqueid, mark it answered, pause, intro,
the digits with pauses, "I repeat", the digits again, goodbye, record the
end (code erased), HANGUP. It is what a small Python service would do with
panoramisk; the benchmark drives it with the same load generator as ours.

Usage: panoramisk_otp.py DB IDS_FILE   (prints "ready agi=HOST:PORT")
"""

import asyncio
import sqlite3
import sys
import time

from panoramisk import fast_agi

ANSWER_PAUSE_MS, DIGIT_PAUSE_MS, READING_PAUSE_MS, READINGS = 1000, 400, 600, 2
CODE = "482915"


def now_ms():
    return int(time.time() * 1000)


def open_db(path, ids):
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    db.execute(
        "CREATE TABLE IF NOT EXISTS calls (id TEXT PRIMARY KEY, code TEXT, status TEXT NOT NULL,"
        " readings INTEGER NOT NULL DEFAULT 0, answered_at INTEGER, ended_at INTEGER, updated_at INTEGER)"
    )
    db.execute("BEGIN")
    db.executemany(
        "INSERT OR REPLACE INTO calls (id, code, status, updated_at) VALUES (?, ?, 'dialing', ?)",
        [(i, CODE, now_ms()) for i in ids],
    )
    db.execute("COMMIT")
    return db


class HungUp(Exception):
    pass


def make_handler(db):
    async def run(request, command):
        reply = await request.send_command(command)
        if reply.get("status_code") != 200 or "error" in reply:
            raise HungUp()
        return reply

    async def pause(request, ms):
        if ms > 0:
            await run(request, "WAIT FOR DIGIT %d" % ms)

    async def stream(request, sound):
        await run(request, 'STREAM FILE %s ""' % sound)

    async def otp(request):
        call_id = request.headers.get("agi_uniqueid", "")
        row = db.execute(
            "SELECT code FROM calls WHERE id = ? AND status IN ('queued', 'dialing', 'answered')", (call_id,)
        ).fetchone()
        if row is None or row[0] is None:
            await request.send_command("HANGUP")
            return
        code = row[0]
        db.execute(
            "UPDATE calls SET status = 'answered', answered_at = ?, updated_at = ? WHERE id = ? AND status IN ('queued', 'dialing')",
            (now_ms(), now_ms(), call_id),
        )
        readings = 0
        try:
            await pause(request, ANSWER_PAUSE_MS)
            await stream(request, "voice-otp/intro")
            for round_ in range(READINGS):
                if round_ > 0:
                    await pause(request, READING_PAUSE_MS)
                    await stream(request, "voice-otp/repeat")
                for digit in code:
                    await pause(request, DIGIT_PAUSE_MS)
                    await stream(request, "digits/" + digit)
                readings += 1
            await pause(request, READING_PAUSE_MS)
            await stream(request, "voice-otp/goodbye")
        except HungUp:
            pass
        status = "completed" if readings else "failed"
        db.execute(
            "UPDATE calls SET status = ?, readings = ?, code = NULL, ended_at = ?, updated_at = ? WHERE id = ?",
            (status, readings, now_ms(), now_ms(), call_id),
        )
        await request.send_command("HANGUP")

    return otp


async def main():
    db_path, ids_path = sys.argv[1], sys.argv[2]
    with open(ids_path) as f:
        ids = [line.strip() for line in f if line.strip()]
    db = open_db(db_path, ids)
    app = fast_agi.Application()
    app.add_route("otp", make_handler(db))
    server = await asyncio.start_server(app.handler, "127.0.0.1", 0)
    host, port = server.sockets[0].getsockname()[:2]
    print("ready agi=%s:%d" % (host, port), flush=True)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
