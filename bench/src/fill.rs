//! A month of history in seconds: `voice-otp-bench --fill-history DB N`
//! writes `N` final calls spread evenly over the 30 days up to now into a
//! database made by the product's own [`Store::open`] (so the schema, its
//! migrations and its triggers are the product's), in one transaction of
//! plain SQL inserts, the rows shaped like those the store writes. Then
//! it checks that every count the triggers keep equals a scan.
//!
//! What the rows look like, per 1,000 calls: 700 completed, 230 failed (90
//! no answer, 50 busy, 40 hung up before the code, 20 rejected, 10 each
//! invalid number, congestion, system error), 40 expired, 30 canceled.
//! Four users share them: `bench` (the user the benchmark logs in as, made
//! beforehand with `voice-otp user add`) 40%, two others 30% and 25%, and
//! one with a webhook URL 5%, whose calls each carry their delivered
//! webhooks (one per status change after `queued`) with one attempt each.
//! Destinations come from a pool of 200,000 numbers, `+92300` and the
//! benchmark's own seven-digit numbers, so the benchmark's requests land on
//! numbers with history; codes and tokens are erased as for any final
//! call. A fixed seed makes every fill alike.

use std::path::Path;
use std::time::Instant;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rusqlite::{Connection, params};
use voice_otp::call::CallId;
use voice_otp::store::Store;
use voice_otp::time::format_ms;

/// One day, ms.
pub const DAY_MS: i64 = 86_400_000;

/// Distinct destination numbers in the history.
pub const NUMBER_POOL: u64 = 200_000;

/// The destination of the benchmark's `n`th number, E.164: the form the
/// seed API stores for `0300` followed by `n` in seven digits.
pub fn pool_number(n: u64) -> String {
    format!("+92300{:07}", n % 10_000_000)
}

/// The users the history belongs to, with their share of its calls (per
/// 100) and webhook URL.
const USERS: [(&str, u32, Option<&str>); 4] = [
    ("bench", 40, None),
    ("history-a", 30, None),
    ("history-b", 25, None),
    ("history-hooks", 5, Some("https://hooks.example.com/otp")),
];

/// How a history call ended, per 1,000 calls: status, reason, Q.850 cause
/// and its text, and when (ms after creation) it was dialled, rang, was
/// answered and ended.
struct Ending {
    per_mille: u32,
    status: &'static str,
    reason: Option<&'static str>,
    cause: Option<(u16, &'static str)>,
    dialed: Option<i64>,
    ringing: Option<i64>,
    answered: Option<i64>,
    ended: i64,
    readings: u32,
}

const ENDINGS: [Ending; 10] = [
    Ending {
        per_mille: 700,
        status: "completed",
        reason: None,
        cause: Some((16, "Normal Clearing")),
        dialed: Some(20),
        ringing: Some(700),
        answered: Some(4_000),
        ended: 22_000,
        readings: 2,
    },
    Ending {
        per_mille: 90,
        status: "failed",
        reason: Some("no_answer"),
        cause: Some((19, "User alerting, no answer")),
        dialed: Some(20),
        ringing: Some(700),
        answered: None,
        ended: 30_700,
        readings: 0,
    },
    Ending {
        per_mille: 50,
        status: "failed",
        reason: Some("busy"),
        cause: Some((17, "User busy")),
        dialed: Some(20),
        ringing: None,
        answered: None,
        ended: 1_500,
        readings: 0,
    },
    Ending {
        per_mille: 40,
        status: "failed",
        reason: Some("hangup_before_code"),
        cause: Some((16, "Normal Clearing")),
        dialed: Some(20),
        ringing: Some(700),
        answered: Some(4_000),
        ended: 9_000,
        readings: 0,
    },
    Ending {
        per_mille: 20,
        status: "failed",
        reason: Some("rejected"),
        cause: Some((21, "Call Rejected")),
        dialed: Some(20),
        ringing: Some(700),
        answered: None,
        ended: 2_000,
        readings: 0,
    },
    Ending {
        per_mille: 10,
        status: "failed",
        reason: Some("invalid_number"),
        cause: Some((1, "Unallocated (unassigned) number")),
        dialed: Some(20),
        ringing: None,
        answered: None,
        ended: 800,
        readings: 0,
    },
    Ending {
        per_mille: 10,
        status: "failed",
        reason: Some("congestion"),
        cause: Some((34, "Circuit/channel congestion")),
        dialed: Some(20),
        ringing: None,
        answered: None,
        ended: 900,
        readings: 0,
    },
    Ending {
        per_mille: 10,
        status: "failed",
        reason: Some("system_error"),
        cause: None,
        dialed: Some(20),
        ringing: None,
        answered: None,
        ended: 30,
        readings: 0,
    },
    Ending {
        per_mille: 40,
        status: "expired",
        reason: None,
        cause: None,
        dialed: None,
        ringing: None,
        answered: None,
        ended: 300_000,
        readings: 0,
    },
    Ending {
        per_mille: 30,
        status: "canceled",
        reason: None,
        cause: None,
        dialed: Some(20),
        ringing: Some(700),
        answered: None,
        ended: 2_500,
        readings: 0,
    },
];

/// What a fill wrote.
pub struct Filled {
    /// Calls inserted.
    pub calls: u64,
    /// Webhook deliveries inserted.
    pub deliveries: u64,
    /// Wall time of the fill (inserts and commit), seconds.
    pub seconds: f64,
    /// Wall time of the count checks, seconds.
    pub check_seconds: f64,
}

/// Adds `calls` final calls created evenly between `from_ms` and `to_ms`
/// to the database at `db` (created and migrated by the product if
/// needed), then checks the trigger-kept counts. Panics if a count is off.
pub fn fill(db: &Path, calls: u64, from_ms: i64, to_ms: i64) -> Filled {
    drop(Store::open(db).unwrap_or_else(|e| panic!("open {}: {e}", db.display())));
    let mut conn = Connection::open(db).expect("open the database for the fill");
    // One writer, nothing to protect mid-fill: a rollback journal costs
    // only the pages the fill changes (the WAL would hold a copy of all of
    // them), and no syncs. The daemon's `Store::open` puts WAL back.
    conn.execute_batch(
        "PRAGMA journal_mode = DELETE; PRAGMA synchronous = OFF; PRAGMA cache_size = -262144;
         PRAGMA temp_store = MEMORY;
         PRAGMA foreign_keys = ON;",
    )
    .expect("fill pragmas");
    let users = ensure_users(&conn);
    let start = Instant::now();
    let tx = conn.transaction().expect("begin the fill");
    let mut rng = StdRng::seed_from_u64(0x5eed_f157);
    let mut deliveries = 0;
    {
        let mut call = tx
            .prepare(
                "INSERT INTO calls (id, user_id, number, code, status, reason, detail, cause, cause_text, readings,
                                    created_at, updated_at, dialed_at, ringing_at, answered_at, ended_at,
                                    deadline_at, language, require_keypress, keys, mode, verified, attempts)
                 VALUES (?1, ?2, ?3, NULL, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?11, ?15, ?16, ?17, ?18,
                         ?19, ?20, ?21)",
            )
            .expect("prepare the call insert");
        let mut delivery = tx
            .prepare(
                "INSERT INTO webhook_deliveries (call_id, user_id, url, host, status, body, created_at, attempts,
                                                 next_attempt_at, delivered_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, 1, ?7, ?8)",
            )
            .expect("prepare the delivery insert");
        let mut attempt = tx
            .prepare(
                "INSERT INTO webhook_attempts (delivery_id, at, http_status, error, duration_ms)
                 VALUES (?1, ?2, 200, NULL, 150)",
            )
            .expect("prepare the attempt insert");
        let step = (to_ms - from_ms) as f64 / calls.max(1) as f64;
        for i in 0..calls {
            let created = from_ms + (i as f64 * step) as i64 + rng.random_range(0..step.max(1.0) as i64);
            let (user_id, url) = pick_user(&users, rng.random_range(0..100));
            let ending = pick_ending(rng.random_range(0..1000));
            let id = CallId::generate_at(created);
            let number = pool_number(rng.random_range(0..NUMBER_POOL));
            let enter = rng.random_range(0..100) < 5;
            let language = if rng.random_range(0..10) == 0 { "ur" } else { "en" };
            let keys = if !enter && ending.readings > 0 && rng.random_range(0..20) == 0 { "1" } else { "" };
            let detail = (ending.reason == Some("system_error")).then_some("Originate refused by Asterisk: trunk down");
            let (readings, verified, attempts) = match (enter, ending.status) {
                (true, "completed") => (0, true, 1),
                (true, _) => (0, false, u32::from(ending.answered.is_some())),
                (false, _) => (ending.readings, false, 0),
            };
            let at = |offset: Option<i64>| offset.map(|o| created + o);
            call.execute(params![
                id.as_str(),
                user_id,
                number,
                ending.status,
                ending.reason,
                detail,
                ending.cause.map(|c| c.0),
                ending.cause.map(|c| c.1),
                readings,
                created,
                created + ending.ended,
                at(ending.dialed),
                at(ending.ringing),
                at(ending.answered),
                created + 300_000,
                language,
                false,
                keys,
                if enter { "enter" } else { "read" },
                verified,
                attempts,
            ])
            .expect("insert a history call");
            let Some(url) = url else { continue };
            let changes = [
                ("dialing", ending.dialed),
                ("ringing", ending.ringing),
                ("answered", ending.answered),
                (ending.status, Some(ending.ended)),
            ];
            for (status, offset) in changes {
                let Some(offset) = offset else { continue };
                let when = created + offset;
                let body = webhook_body(id.as_str(), &number, status, created, when);
                delivery
                    .execute(params![id.as_str(), user_id, url, "hooks.example.com", status, body, when, when + 150])
                    .expect("insert a history webhook delivery");
                attempt.execute(params![tx.last_insert_rowid(), when + 150]).expect("insert a webhook attempt");
                deliveries += 1;
            }
        }
    }
    tx.commit().expect("commit the fill");
    let seconds = start.elapsed().as_secs_f64();
    conn.execute_batch("PRAGMA journal_mode = WAL;").expect("back to WAL");
    let checked = Instant::now();
    if let Err(why) = check_counts(&conn, to_ms) {
        panic!("after filling {}: {why}", db.display());
    }
    Filled { calls, deliveries, seconds, check_seconds: checked.elapsed().as_secs_f64() }
}

/// The history's users by id, with their share and webhook URL; `bench`
/// must exist, the others are added (with a hash nobody can log in with).
fn ensure_users(conn: &Connection) -> Vec<(i64, u32, Option<&'static str>)> {
    USERS
        .iter()
        .map(|&(name, share, url)| {
            if name != "bench" {
                conn.execute(
                    "INSERT INTO users (name, password_hash, enabled, created_at, webhook_secret, webhook_url)
                     VALUES (?1, '!', 1, 0, lower(hex(randomblob(32))), ?2) ON CONFLICT(name) DO NOTHING",
                    params![name, url],
                )
                .expect("add a history user");
            }
            let id = conn
                .query_row("SELECT id FROM users WHERE name = ?1", [name], |r| r.get(0))
                .unwrap_or_else(|e| panic!("user {name}: {e} (make `bench` with `voice-otp user add` first)"));
            (id, share, url)
        })
        .collect()
}

fn pick_user(users: &[(i64, u32, Option<&'static str>)], mut roll: u32) -> (i64, Option<&'static str>) {
    for &(id, share, url) in users {
        if roll < share {
            return (id, url);
        }
        roll -= share;
    }
    (users[0].0, users[0].2)
}

fn pick_ending(mut roll: u32) -> &'static Ending {
    for ending in &ENDINGS {
        if roll < ending.per_mille {
            return ending;
        }
        roll -= ending.per_mille;
    }
    &ENDINGS[0]
}

/// A webhook body of the size and shape the product sends (the call as
/// `GET /v1/calls/{id}` shows it).
fn webhook_body(id: &str, number: &str, status: &str, created: i64, at: i64) -> String {
    let (created, at) = (format_ms(created), format_ms(at));
    format!(
        r#"{{"id":"{id}","number":"{number}","status":"{status}","reason":null,"detail":null,"cause":null,"cause_text":null,"readings":0,"keys":"","mode":"read","verified":null,"attempts":null,"language":"en","require_keypress":false,"created_at":"{created}","updated_at":"{at}","dialed_at":"{at}","ringing_at":null,"answered_at":null,"ended_at":null,"deadline_at":"{created}","ring_duration_ms":null,"talk_duration_ms":null,"callback_url":null,"links":{{"self":"/v1/calls/{id}","cancel":"/v1/calls/{id}/cancel"}}}}"#
    )
}

/// Every count a trigger keeps, against a scan of what it counts.
pub fn check_counts(conn: &Connection, now_ms: i64) -> Result<(), String> {
    let rows = |sql: &str| -> Vec<(String, String, i64)> {
        let mut stmt = conn.prepare(sql).expect("count query");
        let mut rows: Vec<_> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .expect("count rows")
            .collect::<Result<_, _>>()
            .expect("count row");
        rows.sort();
        rows
    };
    let kept = rows("SELECT status, reason, n FROM call_counts WHERE n <> 0");
    let scanned = rows("SELECT status, COALESCE(reason, ''), COUNT(*) FROM calls GROUP BY 1, 2");
    if kept != scanned {
        return Err(format!("call_counts {kept:?} but the calls say {scanned:?}"));
    }
    let one = |sql: &str| -> i64 { conn.query_row(sql, [], |r| r.get(0)).expect("count") };
    let (queued, scanned) =
        (one("SELECT queued FROM queue_size WHERE id = 1"), one("SELECT COUNT(*) FROM calls WHERE status = 'queued'"));
    if queued != scanned {
        return Err(format!("queue_size {queued} but {scanned} calls are queued"));
    }
    let pending = one("SELECT pending FROM webhook_backlog WHERE id = 1");
    let scanned = one("SELECT COUNT(*) FROM webhook_deliveries WHERE delivered_at IS NULL AND gave_up_at IS NULL");
    if pending != scanned {
        return Err(format!("webhook_backlog {pending} but {scanned} deliveries are pending"));
    }
    // Each user's hours: every kept hour equals its calls, and the last
    // day's hours (what `limits.user_calls_per_day` reads) are all kept.
    let mismatched = one("SELECT COUNT(*) FROM user_call_hours h
         WHERE h.n <> (SELECT COUNT(*) FROM calls c WHERE c.user_id = h.user_id
                         AND c.created_at >= h.hour * 3600000 AND c.created_at < (h.hour + 1) * 3600000)");
    if mismatched != 0 {
        return Err(format!("{mismatched} rows of user_call_hours differ from their calls"));
    }
    let since = now_ms / 3_600_000 - 24;
    let kept: i64 = conn
        .query_row("SELECT COALESCE(SUM(n), 0) FROM user_call_hours WHERE hour > ?1", [since], |r| r.get(0))
        .expect("kept hours");
    let scanned: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM calls WHERE user_id IS NOT NULL AND created_at >= (?1 + 1) * 3600000",
            [since],
            |r| r.get(0),
        )
        .expect("scanned hours");
    if kept != scanned {
        return Err(format!("user_call_hours count {kept} calls in the last day, the calls {scanned}"));
    }
    // The per-number quotas' table (migration 17): the last day's calls,
    // and hardly any older.
    let day_ago = now_ms - DAY_MS;
    let count = |sql: &str| -> i64 { conn.query_row(sql, [day_ago], |r| r.get(0)).expect("count") };
    let (kept, scanned) = (
        count("SELECT COUNT(*) FROM number_calls WHERE created_at > ?1"),
        count("SELECT COUNT(*) FROM calls WHERE created_at > ?1"),
    );
    if kept != scanned {
        return Err(format!("number_calls holds {kept} calls of the last day, the calls {scanned}"));
    }
    let stale = count("SELECT COUNT(*) FROM number_calls WHERE created_at <= ?1 - 3600000");
    if stale > 4 {
        return Err(format!("number_calls keeps {stale} calls older than 25 hours"));
    }
    Ok(())
}
