//! SQLite storage: users, calls and the webhook outbox, through one
//! connection in WAL mode.
//!
//! Everything here is synchronous; async code reaches it through [`Db`],
//! which runs each operation on one thread of its own that owns the
//! connection, so the runtime never waits on disk. Schema changes are versioned migrations (`migrations.rs`)
//! tracked in `PRAGMA user_version`.

mod calls;
mod idempotency;
mod migrations;
mod queue;
mod servers;
mod stats;
mod user_defaults;
mod users;
mod verifications;
mod webhooks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::mpsc;

use rusqlite::Connection;

pub use calls::{CallCursor, CallEnd, NewCall, NewCallLifecycle, NumberCalls, TokenCheck};
pub use idempotency::{KeyClaim, StoredAnswer};
pub use queue::InFlight;
pub use stats::{ScrapeCounts, UserDay};
pub use user_defaults::UserDefaultsChange;
pub use users::User;
pub use verifications::{CheckOutcome, NewVerification};
pub use webhooks::{
    Attempt, AttemptVerdict, Delivery, DeliveryRecord, DueRef, DueScope, OutboxPosition, destination_host,
};

/// A storage failure. Callers map it to a 5xx; the text names no secret.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite said no.
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Creating or securing the file failed.
    #[error("database file: {0}")]
    Io(#[from] std::io::Error),
    /// A name that already exists.
    #[error("user `{0}` already exists")]
    UserExists(String),
    /// A name that does not exist.
    #[error("no user named `{0}`")]
    NoSuchUser(String),
    /// A stored value we cannot read back (a bug or a hand-edited file).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// The blocking task running the operation died.
    #[error("database task failed: {0}")]
    Task(String),
}

/// The synchronous store: one SQLite connection.
pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed, mode 0600) and migrates the database.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        create_private(path)?;
        let conn = Connection::open(path)?;
        Store::init(conn)
    }

    /// An in-memory database, for tests.
    pub fn open_in_memory() -> Result<Store, StoreError> {
        Store::init(Connection::open_in_memory()?)
    }

    /// The raw connection, for tests that need to shape rows by hand.
    #[cfg(test)]
    pub(crate) fn conn_for_tests(&self) -> &Connection {
        &self.conn
    }

    fn init(mut conn: Connection) -> Result<Store, StoreError> {
        // WAL lets the CLI read and write while the daemon runs; the busy
        // timeout makes the two wait for each other instead of failing.
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Codes and password hashes must not linger on disk once gone:
        // deleted and overwritten content is zeroed in the database file,
        // and the WAL (which keeps old page images until overwritten) is
        // cut back after checkpoints and emptied by `Store::scrub`.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.pragma_update(None, "journal_size_limit", WAL_SIZE_LIMIT)?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Store { conn })
    }
}

impl Store {
    /// Runs `f` as one transaction: what it writes commits together, or -
    /// on an error - not at all. `f` must not start a transaction of its
    /// own (the status transitions do: call them outside).
    pub fn atomically<R>(&mut self, f: impl FnOnce(&mut Store) -> Result<R, StoreError>) -> Result<R, StoreError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match f(self) {
            Ok(r) => {
                self.conn.execute_batch("COMMIT")?;
                Ok(r)
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }
}

/// A language is stored as its name; a row naming something that is not a
/// language (a hand edit) reads as an error, never as a name that could
/// reach a path or an AGI command.
impl rusqlite::types::ToSql for crate::call::language::Language {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        Ok(rusqlite::types::ToSqlOutput::from(self.as_str()))
    }
}

impl rusqlite::types::FromSql for crate::call::language::Language {
    fn column_result(value: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let name = value.as_str()?;
        crate::call::language::Language::parse(name)
            .ok_or_else(|| rusqlite::types::FromSqlError::Other(format!("{name:?} is not a language name").into()))
    }
}

/// Bytes the WAL file is cut back to whenever a checkpoint resets it.
const WAL_SIZE_LIMIT: i64 = 1024 * 1024;

impl Store {
    /// Checkpoints the WAL into the database and truncates it to nothing,
    /// so no old page image - a code since erased, say - stays in it. Run
    /// by the daemon's housekeeping every minute; waits for readers (the
    /// CLI) through the busy timeout.
    pub fn scrub(&mut self) -> Result<(), StoreError> {
        let busy: i64 = self.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            tracing::debug!("WAL checkpoint could not complete: a reader held it; next round");
        }
        Ok(())
    }
}

/// What SQLite will do for `sql` with `params` bound: the `detail` column of
/// each `EXPLAIN QUERY PLAN` row. Plan tests pass the statements the code
/// runs (constants beside it), never a copy that could drift.
#[cfg(test)]
pub(crate) fn query_plan(conn: &Connection, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
    let mut stmt = conn.prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("statement to explain");
    stmt.query_map(params, |r| r.get::<_, String>(3)).expect("query plan").collect::<Result<_, _>>().expect("plan row")
}

/// Creates the file with owner-only permissions before SQLite touches it:
/// it holds password hashes and, while calls are live, codes.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The async handle: a [`Store`] owned by a thread of its own that runs
/// the operations sent to it, one at a time, in order.
///
/// Why not tokio's blocking pool: a call makes about ten short SQLite
/// operations, and on the pool each woke a thread that then queued on the
/// store's mutex behind the others - under load most of the daemon's time
/// went to threads waking and sleeping. One thread that owns the connection
/// drains its queue without sleeping while there is work.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

impl Db {
    /// Starts the store's thread; it ends when the last handle is dropped.
    pub fn new(store: Store) -> Db {
        let (jobs, queue) = mpsc::channel::<Job>();
        let mut store = store;
        std::thread::Builder::new()
            .name("voice-otp-db".into())
            .spawn(move || {
                while let Ok(job) = queue.recv() {
                    job(&mut store);
                    // A job that panicked inside `Store::atomically` left its
                    // transaction open: undo it, or every later job would
                    // run inside it.
                    if !store.conn.is_autocommit() {
                        tracing::error!("a database operation left a transaction open; rolled back");
                        let _ = store.conn.execute_batch("ROLLBACK");
                    }
                }
            })
            .expect("cannot start the database thread");
        Db { jobs }
    }

    /// Runs `f` on the store's thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            // A panic in one operation must not take the thread (and every
            // later request) with it; SQLite's transactions keep the
            // connection consistent, so keep serving.
            let _ = reply.send(catch_unwind(AssertUnwindSafe(|| f(store))));
        });
        self.jobs.send(job).map_err(|_| StoreError::Task("the database thread has stopped".into()))?;
        match answer.await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(StoreError::Task("a database operation panicked".into())),
            Err(_) => Err(StoreError::Task("the database thread has stopped".into())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn file_is_private_and_reopenable() {
        let dir = std::env::temp_dir().join(format!("voice-otp-store-{}", std::process::id()));
        let path = dir.join("sub/test.db");
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&path).unwrap();
        drop(store);
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let store = Store::open(&path).unwrap();
        let version: i64 = store.conn.pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, migrations::LATEST);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    /// Review item 12: once a call is final and housekeeping has run, its
    /// code is nowhere on disk - not in the database file's free space,
    /// not in an old WAL frame.
    #[test]
    fn an_erased_code_leaves_no_trace_on_disk() {
        use crate::call::options::{CallMode, CallOptions};
        use crate::call::{CallId, CallStatus};
        use crate::store::{CallEnd, NewCall};
        let dir = std::env::temp_dir().join(format!("voice-otp-scrub-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("scrub.db");
        let code = "97531864209753186420";
        let mut s = Store::open(&path).unwrap();
        let u = s.add_user("acme1", "h").unwrap();
        let options = CallOptions { language: "en".into(), require_keypress: false, mode: CallMode::Read };
        let ids: Vec<CallId> = (0..50).map(|_| CallId::generate()).collect();
        for id in &ids {
            s.insert_call(&NewCall { id, user_id: u.id, number: "+923001234567", code, options: &options }).unwrap();
        }
        let on_disk = |name: &str| {
            let bytes = std::fs::read(dir.join(name)).unwrap_or_default();
            bytes.windows(code.len()).any(|w| w == code.as_bytes())
        };
        assert!(on_disk("scrub.db-wal") || on_disk("scrub.db"), "the test must see the live code on disk");
        for id in &ids {
            s.mark_dialing(id).unwrap();
            let end = CallEnd { status: CallStatus::Completed, reason: None, detail: None, readings: Some(2) };
            s.finish_call(id, &end).unwrap();
        }
        s.scrub().unwrap();
        assert!(!on_disk("scrub.db"), "the database file keeps an erased code");
        assert!(!on_disk("scrub.db-wal"), "the WAL keeps an erased code");
        drop(s);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn a_panicking_operation_leaves_the_store_serving() {
        let db = Db::new(Store::open_in_memory().unwrap());
        let failed = db.run(|_| -> Result<(), StoreError> { panic!("boom") }).await;
        assert!(matches!(failed, Err(StoreError::Task(_))));
        db.run(|s| s.add_user("acme1", "h").map(|_| ())).await.unwrap();
        assert!(db.run(|s| s.user("acme1")).await.unwrap().is_some());
    }
}
