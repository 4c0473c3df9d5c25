//! Versioned schema migrations. Each entry moves the schema from version
//! `i` to `i + 1` inside one transaction; `PRAGMA user_version` records where
//! a database stands. Never edit a released migration: append a new one.

use rusqlite::Connection;

use super::StoreError;

const MIGRATIONS: &[&str] = &[
    // 1: users and calls.
    "CREATE TABLE users (
        id            INTEGER PRIMARY KEY,
        name          TEXT NOT NULL UNIQUE,
        password_hash TEXT NOT NULL,
        enabled       INTEGER NOT NULL DEFAULT 1,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE calls (
        id          TEXT PRIMARY KEY,
        user_id     INTEGER REFERENCES users(id) ON DELETE SET NULL,
        number      TEXT NOT NULL,
        code        TEXT,
        status      TEXT NOT NULL,
        reason      TEXT,
        detail      TEXT,
        cause       INTEGER,
        cause_text  TEXT,
        readings    INTEGER NOT NULL DEFAULT 0,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        dialed_at   INTEGER,
        answered_at INTEGER,
        ended_at    INTEGER
    );
    CREATE INDEX calls_by_user ON calls(user_id, created_at);
    CREATE INDEX calls_by_status ON calls(status);",
    // 2: per-call language and voicemail-safe mode, the keys the callee
    // pressed, and users' defaults for both options (NULL = the config's).
    "ALTER TABLE calls ADD COLUMN language TEXT NOT NULL DEFAULT 'en';
    ALTER TABLE calls ADD COLUMN require_keypress INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN keys TEXT NOT NULL DEFAULT '';
    ALTER TABLE users ADD COLUMN language TEXT;
    ALTER TABLE users ADD COLUMN require_keypress INTEGER;",
    // 3: the per-destination-number quotas count a number's recent calls.
    "CREATE INDEX calls_by_number ON calls(number, created_at);",
    // 4: call lifecycle (ringing, deadline, callbacks), per-user
    // webhook settings and the webhook outbox with every attempt. Existing
    // users get a random webhook secret (`randomblob` is SQLite's CSPRNG);
    // they see it only after rotating it with the CLI.
    "ALTER TABLE calls ADD COLUMN ringing_at INTEGER;
    ALTER TABLE calls ADD COLUMN deadline_at INTEGER;
    ALTER TABLE calls ADD COLUMN callback_url TEXT;
    ALTER TABLE users ADD COLUMN webhook_url TEXT;
    ALTER TABLE users ADD COLUMN webhook_secret TEXT;
    UPDATE users SET webhook_secret = lower(hex(randomblob(32)));
    CREATE INDEX calls_by_end ON calls(ended_at);
    CREATE INDEX calls_by_user_status ON calls(user_id, status, created_at);
    CREATE TABLE webhook_deliveries (
        id              INTEGER PRIMARY KEY,
        call_id         TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        user_id         INTEGER REFERENCES users(id) ON DELETE CASCADE,
        url             TEXT NOT NULL,
        status          TEXT NOT NULL,
        body            TEXT NOT NULL,
        created_at      INTEGER NOT NULL,
        attempts        INTEGER NOT NULL DEFAULT 0,
        next_attempt_at INTEGER NOT NULL,
        delivered_at    INTEGER,
        gave_up_at      INTEGER
    );
    CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(next_attempt_at)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE INDEX webhook_deliveries_by_call ON webhook_deliveries(call_id, id);
    CREATE TABLE webhook_attempts (
        id          INTEGER PRIMARY KEY,
        delivery_id INTEGER NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
        at          INTEGER NOT NULL,
        http_status INTEGER,
        error       TEXT,
        duration_ms INTEGER NOT NULL
    );
    CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts(delivery_id);
    CREATE TABLE health_probe (id INTEGER PRIMARY KEY CHECK (id = 1), at INTEGER NOT NULL);",
    // 5: the dialler takes the oldest queued call on every turn; with a long
    // queue (Asterisk down, a traffic spike) that must not be a sort.
    "CREATE INDEX calls_queue ON calls(status, created_at);",
    // 6: calls_queue (status, created_at) serves every lookup by status, so
    // calls_by_status only cost a page write on each status change.
    "DROP INDEX calls_by_status;",
    // 7: the number of queued calls, kept by triggers. Every request checks
    // it against `[queue] max_queued`; counting the queue instead grew with
    // the queue, just when it is long (Asterisk down, a traffic spike).
    // Only changes into or out of `queued` touch it.
    "CREATE TABLE queue_size (id INTEGER PRIMARY KEY CHECK (id = 1), queued INTEGER NOT NULL);
    INSERT INTO queue_size (id, queued) SELECT 1, COUNT(*) FROM calls WHERE status = 'queued';
    CREATE TRIGGER queue_size_insert AFTER INSERT ON calls WHEN new.status = 'queued'
    BEGIN UPDATE queue_size SET queued = queued + 1 WHERE id = 1; END;
    CREATE TRIGGER queue_size_delete AFTER DELETE ON calls WHEN old.status = 'queued'
    BEGIN UPDATE queue_size SET queued = queued - 1 WHERE id = 1; END;
    CREATE TRIGGER queue_size_update AFTER UPDATE OF status ON calls
        WHEN (old.status = 'queued') <> (new.status = 'queued')
    BEGIN UPDATE queue_size SET queued = queued + (new.status = 'queued') - (old.status = 'queued') WHERE id = 1; END;",
    // 8: the BLAKE3 hash of the per-dial FastAGI token (call::token). A
    // FastAGI session must present the token to be served; calls dialled
    // before this migration have none and cannot be (they are long over).
    "ALTER TABLE calls ADD COLUMN agi_token_hash BLOB;",
    // 11: keypad entry. A call's mode (`read`, as every earlier call was,
    // or `enter`), whether the callee typed its code right, how many codes
    // they typed (never the digits themselves), and users' default mode
    // (NULL = the config's).
    "ALTER TABLE calls ADD COLUMN mode TEXT NOT NULL DEFAULT 'read';
    ALTER TABLE calls ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN mode TEXT;",
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` to [`LATEST`]. Refuses a database from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > LATEST {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build knows ({LATEST})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
