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
    // 9: verifications (verify/): the code is derived from the salt and the
    // daemon's key file, never stored; the salt is erased with the final
    // status. A call placed for a verification names it.
    "CREATE TABLE verifications (
        id            TEXT PRIMARY KEY,
        user_id       INTEGER REFERENCES users(id) ON DELETE SET NULL,
        number        TEXT NOT NULL,
        code_length   INTEGER NOT NULL,
        salt          BLOB,
        status        TEXT NOT NULL,
        failed_checks INTEGER NOT NULL DEFAULT 0,
        sends         INTEGER NOT NULL DEFAULT 0,
        language      TEXT NOT NULL,
        callback_url  TEXT,
        last_call_id  TEXT,
        created_at    INTEGER NOT NULL,
        updated_at    INTEGER NOT NULL,
        expires_at    INTEGER NOT NULL,
        ended_at      INTEGER
    );
    CREATE INDEX verifications_pending ON verifications(user_id, number, status, created_at);
    CREATE INDEX verifications_expiry ON verifications(status, expires_at);
    CREATE INDEX verifications_by_end ON verifications(ended_at);
    ALTER TABLE calls ADD COLUMN verification_id TEXT;",
    // 10: deliveries run side by side, with caps per destination host and per
    // user. When a slot of a host or user frees, the outbox looks up that
    // host's or user's due deliveries directly instead of walking everyone's
    // (a hung receiver's backlog would make that walk grow). Rows from before
    // have no host; the worker fills it in at start.
    "ALTER TABLE webhook_deliveries ADD COLUMN host TEXT;
    CREATE INDEX webhook_deliveries_pending_by_user ON webhook_deliveries(user_id, next_attempt_at)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE INDEX webhook_deliveries_pending_by_host ON webhook_deliveries(host, next_attempt_at)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;",
    // 11: Idempotency-Key: per user, the request's fingerprint and, once
    // answered, the answer to send again (status NULL: in progress).
    "CREATE TABLE idempotency_keys (
        user_id      INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        key          TEXT NOT NULL,
        request_hash BLOB NOT NULL,
        status       INTEGER,
        body         TEXT,
        location     TEXT,
        created_at   INTEGER NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);",
    // 12: counts kept by triggers, so that a /metrics scrape reads a handful
    // of rows whatever the history: it used to GROUP BY every call on record
    // (2.2 s with a month of calls, on the one database thread) and count
    // the pending webhooks. Each trigger fires only on the change it counts;
    // `reason` is '' for none (a primary key column cannot be NULL), and
    // rows that drop to 0 stay (there are few status/reason pairs). And each
    // user's calls per hour of creation, for `limits.user_calls_per_day`
    // (at most 24 rows read per request); a user's hours older than a day go
    // when their next call is stored.
    "CREATE TABLE call_counts (
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        n      INTEGER NOT NULL,
        PRIMARY KEY (status, reason)
    ) WITHOUT ROWID;
    INSERT INTO call_counts (status, reason, n) SELECT status, COALESCE(reason, ''), COUNT(*) FROM calls GROUP BY 1, 2;
    CREATE TRIGGER call_counts_insert AFTER INSERT ON calls
    BEGIN
        INSERT INTO call_counts (status, reason, n) VALUES (new.status, COALESCE(new.reason, ''), 1)
            ON CONFLICT (status, reason) DO UPDATE SET n = n + 1;
    END;
    CREATE TRIGGER call_counts_delete AFTER DELETE ON calls
    BEGIN
        UPDATE call_counts SET n = n - 1 WHERE status = old.status AND reason = COALESCE(old.reason, '');
    END;
    CREATE TRIGGER call_counts_update AFTER UPDATE OF status, reason ON calls
        WHEN old.status IS NOT new.status OR old.reason IS NOT new.reason
    BEGIN
        UPDATE call_counts SET n = n - 1 WHERE status = old.status AND reason = COALESCE(old.reason, '');
        INSERT INTO call_counts (status, reason, n) VALUES (new.status, COALESCE(new.reason, ''), 1)
            ON CONFLICT (status, reason) DO UPDATE SET n = n + 1;
    END;
    CREATE TABLE webhook_backlog (id INTEGER PRIMARY KEY CHECK (id = 1), pending INTEGER NOT NULL);
    INSERT INTO webhook_backlog (id, pending)
        SELECT 1, COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE TRIGGER webhook_backlog_insert AFTER INSERT ON webhook_deliveries
        WHEN new.delivered_at IS NULL AND new.gave_up_at IS NULL
    BEGIN UPDATE webhook_backlog SET pending = pending + 1 WHERE id = 1; END;
    CREATE TRIGGER webhook_backlog_delete AFTER DELETE ON webhook_deliveries
        WHEN old.delivered_at IS NULL AND old.gave_up_at IS NULL
    BEGIN UPDATE webhook_backlog SET pending = pending - 1 WHERE id = 1; END;
    CREATE TRIGGER webhook_backlog_update AFTER UPDATE OF delivered_at, gave_up_at ON webhook_deliveries
        WHEN (old.delivered_at IS NULL AND old.gave_up_at IS NULL) <> (new.delivered_at IS NULL AND new.gave_up_at IS NULL)
    BEGIN
        UPDATE webhook_backlog
            SET pending = pending + (new.delivered_at IS NULL AND new.gave_up_at IS NULL)
                                  - (old.delivered_at IS NULL AND old.gave_up_at IS NULL)
            WHERE id = 1;
    END;
    CREATE TABLE user_call_hours (
        user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hour    INTEGER NOT NULL,
        n       INTEGER NOT NULL,
        PRIMARY KEY (user_id, hour)
    ) WITHOUT ROWID;
    INSERT INTO user_call_hours (user_id, hour, n)
        SELECT user_id, created_at / 3600000, COUNT(*) FROM calls
        WHERE user_id IS NOT NULL AND created_at / 3600000 > CAST(strftime('%s', 'now') AS INTEGER) / 3600 - 25
        GROUP BY 1, 2;
    CREATE TRIGGER user_call_hours_insert AFTER INSERT ON calls WHEN new.user_id IS NOT NULL
    BEGIN
        INSERT INTO user_call_hours (user_id, hour, n) VALUES (new.user_id, new.created_at / 3600000, 1)
            ON CONFLICT (user_id, hour) DO UPDATE SET n = n + 1;
        DELETE FROM user_call_hours WHERE user_id = new.user_id AND hour <= new.created_at / 3600000 - 24;
    END;",
    // 13: keypad entry. A call's mode (`read`, as every earlier call was,
    // or `enter`), whether the callee typed its code right, how many codes
    // they typed (never the digits themselves), and users' default mode
    // (NULL = the config's).
    "ALTER TABLE calls ADD COLUMN mode TEXT NOT NULL DEFAULT 'read';
    ALTER TABLE calls ADD COLUMN verified INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE calls ADD COLUMN attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN mode TEXT;",
    // 14: webhooks of verifications ride the outbox too: `event` names what
    // a delivery announces (`verification.approved`, ...); NULL is a call's
    // change (`call.<status>`). A verification's delivery is filed under its
    // latest call, so it goes out after that call's own changes.
    "ALTER TABLE webhook_deliveries ADD COLUMN event TEXT;",
    // 15: several Asterisk servers. `asterisk` names the `[[asterisk]]`
    // entry a call was originated on (NULL until dialled, and for calls
    // dialled before there were several): its events, its reconciliation
    // and its hang-up go to that server alone. The partial index holds only
    // calls in flight, so counting one server's busy slots reads at most
    // its `max_concurrent_calls` entries, however long the history.
    "ALTER TABLE calls ADD COLUMN asterisk TEXT;
    CREATE INDEX calls_in_flight_by_asterisk ON calls(asterisk)
        WHERE status IN ('dialing', 'ringing', 'answered');",
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// Brings `conn` to [`LATEST`]. Refuses a database from a newer build.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    migrate_to(conn, LATEST)
}

/// The version right after the migration whose SQL contains `marker`: for
/// tests that build a database as it was before a later migration.
#[cfg(test)]
pub(crate) fn version_of(marker: &str) -> i64 {
    MIGRATIONS.iter().position(|sql| sql.contains(marker)).expect("a migration with that marker") as i64 + 1
}

/// Brings `conn` to version `target` (at most [`LATEST`]).
pub(crate) fn migrate_to(conn: &mut Connection, target: i64) -> Result<(), StoreError> {
    let current: i64 = conn.pragma_query_value(None, "user_version", |r| r.get(0))?;
    if current > LATEST {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build knows ({LATEST})"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().take(target as usize).skip(current as usize) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}
