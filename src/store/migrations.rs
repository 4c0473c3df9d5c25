//! Versioned schema migrations, one list per database. Each entry moves
//! the schema from version `i` to `i + 1` inside one transaction; SQLite's
//! `PRAGMA user_version`, or PostgreSQL's `schema_version` table, records
//! where a database stands. A version means the same schema on both: a new
//! migration is appended to both lists (a test holds them level). Never
//! edit a released migration: append a new one.

use rusqlite::Connection;

use super::backend::{Conn, TxKind, args};
use super::{Store, StoreError};

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
    // 16: several daemons on one database (PostgreSQL). Each daemon's
    // lease, renewed every few seconds (`daemons`); the daemon that dialled
    // a call and follows it to its end (`calls.owner`: others take it over
    // once that daemon's lease has run out); the claim a daemon holds on a
    // webhook delivery while it sends it, so no two send it at once; and the
    // failed (and forgiving) logins each daemon saw, which the others add
    // to their counts (`login_events`, kept a day). A single daemon
    // (SQLite) leaves them empty.
    "CREATE TABLE daemons (id TEXT PRIMARY KEY, started_at INTEGER NOT NULL, seen_at INTEGER NOT NULL);
    ALTER TABLE calls ADD COLUMN owner TEXT;
    ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
    ALTER TABLE webhook_deliveries ADD COLUMN claimed_until INTEGER;
    CREATE TABLE login_events (
        id     INTEGER PRIMARY KEY,
        daemon TEXT NOT NULL,
        at     INTEGER NOT NULL,
        kind   TEXT NOT NULL,
        name   TEXT NOT NULL,
        ip     TEXT NOT NULL
    );
    CREATE INDEX login_events_by_age ON login_events(at);",
    // 17: the per-number quotas count a table of the last day's calls per
    // number, kept by a trigger, instead of the index calls_by_number over
    // every call on record. That index was keyed by number, so each day's
    // calls were scattered over all its pages: with a month of history
    // (1,000,000 calls) a quota check cost 1.5-1.8 times what it cost
    // without, and purging a day rewrote nearly every page of it. Rows
    // older than 25 hours (a day, and an hour for a clock set back) are no
    // longer read; each stored call deletes at most 4 of them, so the table
    // stays about a day long whatever the history, and no insert ever
    // deletes more (not even the first after a week without calls).
    "CREATE TABLE number_calls (number TEXT NOT NULL, created_at INTEGER NOT NULL);
    CREATE INDEX number_calls_by_number ON number_calls(number, created_at);
    CREATE INDEX number_calls_by_age ON number_calls(created_at);
    INSERT INTO number_calls (number, created_at)
        SELECT number, created_at FROM calls
        WHERE created_at > CAST(strftime('%s', 'now') AS INTEGER) * 1000 - 90000000;
    CREATE TRIGGER number_calls_insert AFTER INSERT ON calls
    BEGIN
        INSERT INTO number_calls (number, created_at) VALUES (new.number, new.created_at);
        DELETE FROM number_calls WHERE rowid IN (
            SELECT rowid FROM number_calls WHERE created_at <= new.created_at - 90000000 ORDER BY created_at LIMIT 4);
    END;
    DROP INDEX calls_by_number;",
];

/// PostgreSQL's migrations: `(version, SQL)`. PostgreSQL support came with
/// schema 14, so its first entry makes that whole schema at once: the same
/// tables, columns and indexes, in PostgreSQL's types (`BIGINT` for every
/// integer and Unix-ms time, `BOOLEAN` for flags, `BYTEA` for bytes,
/// identity columns for SQLite's `INTEGER PRIMARY KEY`), and the counts
/// SQLite's triggers keep kept by PL/pgSQL trigger functions. `calls.seq`
/// stands for SQLite's `rowid`: the order calls were stored in.
const PG_MIGRATIONS: &[(i64, &str)] = &[
    (
        14,
        "CREATE TABLE users (
        id               BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        name             TEXT NOT NULL UNIQUE,
        password_hash    TEXT NOT NULL,
        enabled          BOOLEAN NOT NULL DEFAULT TRUE,
        created_at       BIGINT NOT NULL,
        language         TEXT,
        require_keypress BOOLEAN,
        webhook_url      TEXT,
        webhook_secret   TEXT,
        mode             TEXT
    );
    CREATE TABLE calls (
        id               TEXT PRIMARY KEY,
        seq              BIGINT GENERATED ALWAYS AS IDENTITY,
        user_id          BIGINT REFERENCES users(id) ON DELETE SET NULL,
        number           TEXT NOT NULL,
        code             TEXT,
        status           TEXT NOT NULL,
        reason           TEXT,
        detail           TEXT,
        cause            BIGINT,
        cause_text       TEXT,
        readings         BIGINT NOT NULL DEFAULT 0,
        created_at       BIGINT NOT NULL,
        updated_at       BIGINT NOT NULL,
        dialed_at        BIGINT,
        answered_at      BIGINT,
        ended_at         BIGINT,
        language         TEXT NOT NULL DEFAULT 'en',
        require_keypress BOOLEAN NOT NULL DEFAULT FALSE,
        keys             TEXT NOT NULL DEFAULT '',
        ringing_at       BIGINT,
        deadline_at      BIGINT,
        callback_url     TEXT,
        agi_token_hash   BYTEA,
        verification_id  TEXT,
        mode             TEXT NOT NULL DEFAULT 'read',
        verified         BOOLEAN NOT NULL DEFAULT FALSE,
        attempts         BIGINT NOT NULL DEFAULT 0
    );
    CREATE INDEX calls_by_user ON calls(user_id, created_at);
    CREATE INDEX calls_by_number ON calls(number, created_at);
    CREATE INDEX calls_by_end ON calls(ended_at);
    CREATE INDEX calls_by_user_status ON calls(user_id, status, created_at);
    CREATE INDEX calls_queue ON calls(status, created_at, seq);
    CREATE TABLE webhook_deliveries (
        id              BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        call_id         TEXT NOT NULL REFERENCES calls(id) ON DELETE CASCADE,
        user_id         BIGINT REFERENCES users(id) ON DELETE CASCADE,
        url             TEXT NOT NULL,
        status          TEXT NOT NULL,
        body            TEXT NOT NULL,
        created_at      BIGINT NOT NULL,
        attempts        BIGINT NOT NULL DEFAULT 0,
        next_attempt_at BIGINT NOT NULL,
        delivered_at    BIGINT,
        gave_up_at      BIGINT,
        host            TEXT,
        event           TEXT
    );
    CREATE INDEX webhook_deliveries_pending ON webhook_deliveries(next_attempt_at, id)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE INDEX webhook_deliveries_by_call ON webhook_deliveries(call_id, id);
    CREATE INDEX webhook_deliveries_pending_by_user ON webhook_deliveries(user_id, next_attempt_at, id)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE INDEX webhook_deliveries_pending_by_host ON webhook_deliveries(host, next_attempt_at, id)
        WHERE delivered_at IS NULL AND gave_up_at IS NULL;
    CREATE TABLE webhook_attempts (
        id          BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
        delivery_id BIGINT NOT NULL REFERENCES webhook_deliveries(id) ON DELETE CASCADE,
        at          BIGINT NOT NULL,
        http_status BIGINT,
        error       TEXT,
        duration_ms BIGINT NOT NULL
    );
    CREATE INDEX webhook_attempts_by_delivery ON webhook_attempts(delivery_id);
    CREATE TABLE health_probe (id BIGINT PRIMARY KEY CHECK (id = 1), at BIGINT NOT NULL);
    CREATE TABLE verifications (
        id            TEXT PRIMARY KEY,
        user_id       BIGINT REFERENCES users(id) ON DELETE SET NULL,
        number        TEXT NOT NULL,
        code_length   BIGINT NOT NULL,
        salt          BYTEA,
        status        TEXT NOT NULL,
        failed_checks BIGINT NOT NULL DEFAULT 0,
        sends         BIGINT NOT NULL DEFAULT 0,
        language      TEXT NOT NULL,
        callback_url  TEXT,
        last_call_id  TEXT,
        created_at    BIGINT NOT NULL,
        updated_at    BIGINT NOT NULL,
        expires_at    BIGINT NOT NULL,
        ended_at      BIGINT
    );
    CREATE INDEX verifications_pending ON verifications(user_id, number, status, created_at);
    CREATE INDEX verifications_expiry ON verifications(status, expires_at);
    CREATE INDEX verifications_by_end ON verifications(ended_at);
    CREATE TABLE idempotency_keys (
        user_id      BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        key          TEXT NOT NULL,
        request_hash BYTEA NOT NULL,
        status       BIGINT,
        body         TEXT,
        location     TEXT,
        created_at   BIGINT NOT NULL,
        PRIMARY KEY (user_id, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);

    -- The queue's size (SQLite's migration 7).
    CREATE TABLE queue_size (id BIGINT PRIMARY KEY CHECK (id = 1), queued BIGINT NOT NULL);
    INSERT INTO queue_size (id, queued) VALUES (1, 0);
    CREATE FUNCTION queue_size_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        change BIGINT := 0;
    BEGIN
        IF TG_OP <> 'DELETE' THEN
            IF NEW.status = 'queued' THEN change := change + 1; END IF;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            IF OLD.status = 'queued' THEN change := change - 1; END IF;
        END IF;
        IF change <> 0 THEN
            UPDATE queue_size SET queued = queued + change WHERE id = 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER queue_size_insert AFTER INSERT ON calls
        FOR EACH ROW WHEN (NEW.status = 'queued') EXECUTE FUNCTION queue_size_keep();
    CREATE TRIGGER queue_size_delete AFTER DELETE ON calls
        FOR EACH ROW WHEN (OLD.status = 'queued') EXECUTE FUNCTION queue_size_keep();
    CREATE TRIGGER queue_size_update AFTER UPDATE OF status ON calls
        FOR EACH ROW WHEN ((OLD.status = 'queued') <> (NEW.status = 'queued')) EXECUTE FUNCTION queue_size_keep();

    -- Calls per (status, reason) (SQLite's migration 12).
    CREATE TABLE call_counts (
        status TEXT NOT NULL,
        reason TEXT NOT NULL,
        n      BIGINT NOT NULL,
        PRIMARY KEY (status, reason)
    );
    CREATE FUNCTION call_counts_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        gone_status TEXT;
        gone_reason TEXT;
    BEGIN
        IF TG_OP = 'INSERT' THEN
            INSERT INTO call_counts (status, reason, n) VALUES (NEW.status, COALESCE(NEW.reason, ''), 1)
                ON CONFLICT (status, reason) DO UPDATE SET n = call_counts.n + 1;
            RETURN NULL;
        END IF;
        gone_status := OLD.status;
        gone_reason := COALESCE(OLD.reason, '');
        IF TG_OP = 'DELETE' THEN
            UPDATE call_counts SET n = n - 1 WHERE status = gone_status AND reason = gone_reason;
            RETURN NULL;
        END IF;
        -- Both rows in one order whichever way a call moves, so two
        -- transactions moving calls opposite ways cannot deadlock on them.
        IF (gone_status, gone_reason) < (NEW.status, COALESCE(NEW.reason, '')) THEN
            UPDATE call_counts SET n = n - 1 WHERE status = gone_status AND reason = gone_reason;
            INSERT INTO call_counts (status, reason, n) VALUES (NEW.status, COALESCE(NEW.reason, ''), 1)
                ON CONFLICT (status, reason) DO UPDATE SET n = call_counts.n + 1;
        ELSE
            INSERT INTO call_counts (status, reason, n) VALUES (NEW.status, COALESCE(NEW.reason, ''), 1)
                ON CONFLICT (status, reason) DO UPDATE SET n = call_counts.n + 1;
            UPDATE call_counts SET n = n - 1 WHERE status = gone_status AND reason = gone_reason;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER call_counts_insert AFTER INSERT ON calls
        FOR EACH ROW EXECUTE FUNCTION call_counts_keep();
    CREATE TRIGGER call_counts_delete AFTER DELETE ON calls
        FOR EACH ROW EXECUTE FUNCTION call_counts_keep();
    CREATE TRIGGER call_counts_update AFTER UPDATE OF status, reason ON calls
        FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.reason IS DISTINCT FROM NEW.reason)
        EXECUTE FUNCTION call_counts_keep();

    -- Webhook deliveries pending (SQLite's migration 12).
    CREATE TABLE webhook_backlog (id BIGINT PRIMARY KEY CHECK (id = 1), pending BIGINT NOT NULL);
    INSERT INTO webhook_backlog (id, pending) VALUES (1, 0);
    CREATE FUNCTION webhook_backlog_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    DECLARE
        change BIGINT := 0;
    BEGIN
        IF TG_OP <> 'DELETE' THEN
            IF NEW.delivered_at IS NULL AND NEW.gave_up_at IS NULL THEN change := change + 1; END IF;
        END IF;
        IF TG_OP <> 'INSERT' THEN
            IF OLD.delivered_at IS NULL AND OLD.gave_up_at IS NULL THEN change := change - 1; END IF;
        END IF;
        IF change <> 0 THEN
            UPDATE webhook_backlog SET pending = pending + change WHERE id = 1;
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER webhook_backlog_insert AFTER INSERT ON webhook_deliveries
        FOR EACH ROW WHEN (NEW.delivered_at IS NULL AND NEW.gave_up_at IS NULL)
        EXECUTE FUNCTION webhook_backlog_keep();
    CREATE TRIGGER webhook_backlog_delete AFTER DELETE ON webhook_deliveries
        FOR EACH ROW WHEN (OLD.delivered_at IS NULL AND OLD.gave_up_at IS NULL)
        EXECUTE FUNCTION webhook_backlog_keep();
    CREATE TRIGGER webhook_backlog_update AFTER UPDATE OF delivered_at, gave_up_at ON webhook_deliveries
        FOR EACH ROW WHEN ((OLD.delivered_at IS NULL AND OLD.gave_up_at IS NULL)
                           <> (NEW.delivered_at IS NULL AND NEW.gave_up_at IS NULL))
        EXECUTE FUNCTION webhook_backlog_keep();

    -- Each user's calls per hour of creation (SQLite's migration 12).
    CREATE TABLE user_call_hours (
        user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
        hour    BIGINT NOT NULL,
        n       BIGINT NOT NULL,
        PRIMARY KEY (user_id, hour)
    );
    CREATE FUNCTION user_call_hours_keep() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        INSERT INTO user_call_hours (user_id, hour, n) VALUES (NEW.user_id, NEW.created_at / 3600000, 1)
            ON CONFLICT (user_id, hour) DO UPDATE SET n = user_call_hours.n + 1;
        DELETE FROM user_call_hours WHERE user_id = NEW.user_id AND hour <= NEW.created_at / 3600000 - 24;
        RETURN NULL;
    END $$;
    CREATE TRIGGER user_call_hours_insert AFTER INSERT ON calls
        FOR EACH ROW WHEN (NEW.user_id IS NOT NULL) EXECUTE FUNCTION user_call_hours_keep();",
    ),
    (
        15,
        "ALTER TABLE calls ADD COLUMN asterisk TEXT;
        CREATE INDEX calls_in_flight_by_asterisk ON calls(asterisk)
            WHERE status IN ('dialing', 'ringing', 'answered');",
    ),
    (
        16,
        "CREATE TABLE daemons (id TEXT PRIMARY KEY, started_at BIGINT NOT NULL, seen_at BIGINT NOT NULL);
        ALTER TABLE calls ADD COLUMN owner TEXT;
        ALTER TABLE webhook_deliveries ADD COLUMN claimed_by TEXT;
        ALTER TABLE webhook_deliveries ADD COLUMN claimed_until BIGINT;
        CREATE TABLE login_events (
            id     BIGINT GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
            daemon TEXT NOT NULL,
            at     BIGINT NOT NULL,
            kind   TEXT NOT NULL,
            name   TEXT NOT NULL,
            ip     TEXT NOT NULL
        );
        CREATE INDEX login_events_by_age ON login_events(at);",
    ),
    (
        17,
        // SQLite's 17. The trim skips rows another insert is deleting
        // (SKIP LOCKED): two inserts never wait for each other over the
        // old rows, nor deadlock taking them in different orders.
        "CREATE TABLE number_calls (number TEXT NOT NULL, created_at BIGINT NOT NULL);
        CREATE INDEX number_calls_by_number ON number_calls(number, created_at);
        CREATE INDEX number_calls_by_age ON number_calls(created_at);
        INSERT INTO number_calls (number, created_at)
            SELECT number, created_at FROM calls
            WHERE created_at > CAST(EXTRACT(EPOCH FROM now()) * 1000 AS BIGINT) - 90000000;
        CREATE FUNCTION number_calls_keep() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            INSERT INTO number_calls (number, created_at) VALUES (NEW.number, NEW.created_at);
            DELETE FROM number_calls WHERE ctid = ANY (ARRAY(
                SELECT ctid FROM number_calls WHERE created_at <= NEW.created_at - 90000000
                ORDER BY created_at LIMIT 4 FOR UPDATE SKIP LOCKED));
            RETURN NULL;
        END $$;
        CREATE TRIGGER number_calls_insert AFTER INSERT ON calls
            FOR EACH ROW EXECUTE FUNCTION number_calls_keep();
        DROP INDEX calls_by_number;",
    ),
];

/// The schema version this build writes.
pub const LATEST: i64 = MIGRATIONS.len() as i64;

/// The advisory lock daemons take to migrate a PostgreSQL database one at
/// a time (`voice-otp` + 1, beside the exclusive transactions' key).
const PG_MIGRATE_LOCK: i64 = 0x766f_6963_652d_6f75;

/// Brings the store's database to [`LATEST`]. Refuses a database from a
/// newer build.
pub fn migrate(store: &mut Store) -> Result<(), StoreError> {
    match &mut store.conn {
        Conn::Sqlite(conn) => migrate_to(conn, LATEST),
        Conn::Postgres(_) => {
            store.batch(&format!("SELECT pg_advisory_lock({PG_MIGRATE_LOCK})"))?;
            let migrated = migrate_postgres(store);
            let unlocked = store.batch(&format!("SELECT pg_advisory_unlock({PG_MIGRATE_LOCK})"));
            migrated.and(unlocked)
        }
    }
}

/// Runs PostgreSQL's migrations past the recorded version; the caller holds
/// the migration lock.
fn migrate_postgres(store: &Store) -> Result<(), StoreError> {
    let exists: bool = store.query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[], |r| r.get(0))?;
    if !exists {
        store.batch("CREATE TABLE schema_version (id BIGINT PRIMARY KEY CHECK (id = 1), version BIGINT NOT NULL)")?;
    }
    let current: i64 =
        store.query_opt("SELECT version FROM schema_version WHERE id = 1", &[], |r| r.get(0))?.unwrap_or(0);
    if current > LATEST {
        return Err(StoreError::Corrupt(format!(
            "database schema version {current} is newer than this build knows ({LATEST})"
        )));
    }
    for &(version, sql) in PG_MIGRATIONS.iter().filter(|(v, _)| *v > current) {
        store.tx(TxKind::Deferred, |s| {
            s.batch(sql)?;
            s.execute(
                "INSERT INTO schema_version (id, version) VALUES (1, ?1) ON CONFLICT (id) DO UPDATE SET version = ?1",
                args![version],
            )?;
            Ok(())
        })?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::Backend;

    /// A version means one schema on both databases: the lists end level,
    /// in order, so a migration appended to one alone fails here.
    #[test]
    fn both_lists_reach_the_same_version() {
        let versions: Vec<i64> = PG_MIGRATIONS.iter().map(|(v, _)| *v).collect();
        assert!(versions.windows(2).all(|w| w[1] == w[0] + 1), "PostgreSQL's versions follow each other: {versions:?}");
        assert_eq!(versions.last().copied(), Some(LATEST), "every SQLite migration needs its PostgreSQL twin");
    }

    /// The schema, as both databases describe it: (table, column) pairs,
    /// the indexes and the triggers we name.
    fn schema_of(s: &Store) -> (Vec<String>, Vec<String>, Vec<String>) {
        let sorted = |mut v: Vec<String>| {
            v.sort();
            v
        };
        if s.is_postgres() {
            let cols = s
                .query(
                    "SELECT table_name || '.' || column_name FROM information_schema.columns
                     WHERE table_schema = current_schema()",
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            let indexes = s
                .query(
                    "SELECT indexname FROM pg_indexes WHERE schemaname = current_schema()
                       AND indexname NOT LIKE '%\\_pkey' AND indexname NOT LIKE '%\\_key'",
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            let triggers = s
                .query(
                    "SELECT DISTINCT trigger_name FROM information_schema.triggers
                     WHERE trigger_schema = current_schema()",
                    &[],
                    |r| r.get(0),
                )
                .unwrap();
            (sorted(cols), sorted(indexes), sorted(triggers))
        } else {
            let tables: Vec<String> =
                s.query("SELECT name FROM sqlite_master WHERE type = 'table'", &[], |r| r.get(0)).unwrap();
            let mut cols = Vec::new();
            for t in tables {
                let names: Vec<String> =
                    s.query(&format!("SELECT name FROM pragma_table_info('{t}')"), &[], |r| r.get(0)).unwrap();
                cols.extend(names.into_iter().map(|c| format!("{t}.{c}")));
            }
            let named = |kind: &str| {
                s.query(
                    &format!("SELECT name FROM sqlite_master WHERE type = '{kind}' AND sql IS NOT NULL"),
                    &[],
                    |r| r.get(0),
                )
                .unwrap()
            };
            (sorted(cols), sorted(named("index")), sorted(named("trigger")))
        }
    }

    /// One schema on both: the same tables and columns (PostgreSQL adds its
    /// version table and `calls.seq`, SQLite's `rowid`), indexes and
    /// triggers.
    #[test]
    fn postgres_has_sqlites_schema() {
        if crate::store::testing::postgres_url().is_none() {
            return;
        }
        let (lite_cols, lite_indexes, lite_triggers) = schema_of(&Backend::Sqlite.open());
        let (mut pg_cols, pg_indexes, pg_triggers) = schema_of(&Backend::Postgres.open());
        pg_cols.retain(|c| c != "calls.seq" && !c.starts_with("schema_version."));
        assert_eq!(pg_cols, lite_cols);
        assert_eq!(pg_indexes, lite_indexes);
        assert_eq!(pg_triggers, lite_triggers);
    }
}
