//! Storage: users, calls, verifications and the webhook outbox, in SQLite
//! (one file, one connection in WAL mode: the default) or PostgreSQL
//! (`[database] url`: a pool of connections, several daemons on one
//! database).
//!
//! Everything here is synchronous; async code reaches it through [`Db`],
//! which runs each operation on a database thread that owns a connection,
//! so the runtime never waits on disk. The statements are written once for
//! both databases (`backend.rs`). Schema changes are versioned migrations
//! (`migrations.rs`), tracked in `PRAGMA user_version` (SQLite) or the
//! `schema_version` table (PostgreSQL).

mod backend;
mod calls;
mod daemons;
mod idempotency;
mod logins;
mod migrations;
mod pg_url;
mod queue;
mod servers;
mod stats;
#[cfg(test)]
pub(crate) mod testing;
mod user_defaults;
mod users;
mod verifications;
mod webhooks;

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;

use crate::secret::Secret;
pub(crate) use backend::Value;
#[cfg(test)]
pub(crate) use backend::args;
use backend::{Conn, PgConn, TxKind};

pub use calls::{CallCursor, CallEnd, NewCall, NewCallLifecycle, NumberCalls, PURGE_BATCH, TokenCheck};
pub use idempotency::{KeyClaim, StoredAnswer};
pub use logins::{LoginEvent, LoginEventKind};
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
    /// PostgreSQL said no, or could not be reached. Its text carries the
    /// server's message, never the connection URL or its password.
    #[error("database error: {}", postgres_message(.0))]
    Postgres(#[from] postgres::Error),
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
    /// A `[database] url` we cannot use.
    #[error("database url: {0}")]
    Url(String),
}

/// The synchronous store: one connection, to SQLite or PostgreSQL.
pub struct Store {
    conn: Conn,
    /// How many transactions (the outer one and savepoints) are open.
    depth: std::cell::Cell<u32>,
    /// The daemon this store works for, on a database several daemons
    /// share: the calls it dials are its own, and it takes over those of
    /// daemons whose lease ran out. `None` (SQLite, the CLI): every call.
    owner: Option<Owner>,
    /// A test's own PostgreSQL schema, dropped after the last store on it
    /// (declared after `conn`, so the connection closes first).
    #[cfg(test)]
    _schema: Option<Arc<testing::Schema>>,
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

    fn wrap(conn: Conn) -> Store {
        Store {
            conn,
            depth: std::cell::Cell::new(0),
            owner: None,
            #[cfg(test)]
            _schema: None,
        }
    }

    fn init(conn: Connection) -> Result<Store, StoreError> {
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
        // SQLite's default page cache is 2 MiB: with a month of history it
        // held neither the indexes' hot pages nor, once a few thousand
        // calls were stored, the calls in flight, and every miss is a read
        // from the file. The cache grows to this only as pages are used.
        conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        let mut store = Store::wrap(Conn::Sqlite(conn));
        migrations::migrate(&mut store)?;
        Ok(store)
    }

    /// Connects to the PostgreSQL server at `url` and migrates its schema
    /// (under a lock, so daemons starting together migrate once). Blocks:
    /// call it from a thread of its own, never from the async runtime.
    pub fn open_postgres(url: &Secret) -> Result<Store, StoreError> {
        let mut target = pg_url::parse(url.expose()).map_err(StoreError::Url)?;
        let config = &mut target.config;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(std::time::Duration::from_secs(10));
        }
        if config.get_application_name().is_none() {
            config.application_name("voice-otp");
        }
        // The server's NOTICEs (a table that exists already, ...) are no
        // news to an operator.
        config.notice_callback(|notice| tracing::debug!("PostgreSQL: {}", notice.message()));
        let client = target.connect()?;
        let mut store = Store::wrap(Conn::Postgres(Box::new(std::cell::RefCell::new(PgConn::new(client)))));
        migrations::migrate(&mut store)?;
        Ok(store)
    }

    /// The raw SQLite connection, for tests of SQLite's own behaviour.
    #[cfg(test)]
    pub(crate) fn sqlite_for_tests(&self) -> &Connection {
        match &self.conn {
            Conn::Sqlite(c) => c,
            Conn::Postgres(_) => panic!("a SQLite-only test ran on PostgreSQL"),
        }
    }

    /// Runs one statement (SQLite spelling, `?N`) on either database, for
    /// tests that shape rows by hand.
    #[cfg(test)]
    pub(crate) fn execute_for_tests(&self, sql: &str, args: &[Value<'_>]) -> usize {
        self.execute(sql, args).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// One integer a query returns, for tests that count rows by hand.
    #[cfg(test)]
    pub(crate) fn count_for_tests(&self, sql: &str, args: &[Value<'_>]) -> i64 {
        self.query_one(sql, args, |r| r.get(0)).unwrap_or_else(|e| panic!("{sql}: {e}"))
    }
}

/// A daemon sharing its database with others: its id and how long its
/// lease lasts without a renewal.
#[derive(Debug, Clone)]
pub(crate) struct Owner {
    /// Random, made at start; recorded on the calls it dials.
    pub(crate) id: String,
    /// A daemon not seen for this long is taken for dead.
    pub(crate) lease_ms: i64,
}

/// What went wrong with PostgreSQL, in words: the server's message and
/// SQLSTATE, or the client's error and its cause. Never the server's
/// DETAIL, which may quote a row (a code, say).
fn postgres_message(e: &postgres::Error) -> String {
    use std::error::Error as _;
    if let Some(db) = e.as_db_error() {
        return format!("{} ({})", db.message(), db.code().code());
    }
    match e.source() {
        Some(cause) => format!("{e}: {cause}"),
        None => e.to_string(),
    }
}

/// Whether `url` is a `[database] url` the store can use; the error says
/// why not without repeating the URL.
pub fn check_postgres_url(url: &str) -> Result<(), String> {
    pg_url::parse(url).map(|_| ())
}

/// `PostgreSQL HOST:PORT/DATABASE` for `url`: where it points, for errors
/// and logs, without the user or password.
pub fn postgres_target(url: &str) -> String {
    let Ok(pg_url::Target { config, .. }) = pg_url::parse(url) else { return "PostgreSQL (an unusable url)".into() };
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(host)) => host.clone(),
        Some(postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => String::new(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("PostgreSQL {host}:{port}/{}", config.get_dbname().unwrap_or_default())
}

impl Store {
    /// Runs `f` as one transaction: what it writes commits together, or -
    /// on an error - not at all; and no other such transaction runs
    /// meanwhile (SQLite's `BEGIN IMMEDIATE`; on PostgreSQL an advisory
    /// lock every daemon on the database shares), so what `f` checked
    /// (quotas, the queue's size) still holds when it commits. Operations
    /// that make transactions of their own (the status transitions) become
    /// savepoints inside it.
    pub fn atomically<R>(&mut self, f: impl FnOnce(&mut Store) -> Result<R, StoreError>) -> Result<R, StoreError> {
        let depth = self.tx_begin(TxKind::Exclusive)?;
        let result = f(self);
        self.tx_end(depth, result)
    }
}

/// Bytes the WAL file is cut back to whenever a checkpoint resets it.
const WAL_SIZE_LIMIT: i64 = 1024 * 1024;

/// The page cache of a SQLite connection, KiB (PostgreSQL has its own,
/// `shared_buffers`, set on the server).
const CACHE_KIB: i64 = 64 * 1024;

impl Store {
    /// Checkpoints the WAL into the database and truncates it to nothing,
    /// so no old page image - a code since erased, say - stays in it. Run
    /// by the daemon's housekeeping every minute; waits for readers (the
    /// CLI) through the busy timeout.
    ///
    /// On PostgreSQL there is no such file to scrub: an erased code stays
    /// in dead row versions until VACUUM reuses their space, and in the
    /// server's WAL (and any archive or replica of it). See the README.
    pub fn scrub(&mut self) -> Result<(), StoreError> {
        let Conn::Sqlite(conn) = &self.conn else { return Ok(()) };
        let busy: i64 = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
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
pub(crate) fn query_plan(store: &Store, sql: &str, params: impl rusqlite::Params) -> Vec<String> {
    let mut stmt =
        store.sqlite_for_tests().prepare(&format!("EXPLAIN QUERY PLAN {sql}")).expect("statement to explain");
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

/// The async handle: database threads, each owning a [`Store`], that run
/// the operations sent to them. SQLite has one thread, so its operations run
/// one at a time, in order; PostgreSQL has `[database] pool_size`, each with
/// a connection of its own, and an operation goes to whichever is free (the
/// server keeps them apart: transactions, row locks, conditional updates).
///
/// Why not tokio's blocking pool: a call makes about ten short database
/// operations, and on the pool each woke a thread that then queued on the
/// store's mutex behind the others - under load most of the daemon's time
/// went to threads waking and sleeping. A thread that owns its connection
/// drains the queue without sleeping while there is work.
#[derive(Clone)]
pub struct Db {
    jobs: mpsc::Sender<Job>,
    postgres: bool,
    /// Held by every handle: the lease thread renews while one lives.
    alive: Arc<()>,
    /// The daemon's id on a shared database.
    daemon: Option<String>,
}

type Job = Box<dyn FnOnce(&mut Store) + Send>;

/// The queue the database threads take jobs from.
type Queue = Arc<Mutex<mpsc::Receiver<Job>>>;

impl Db {
    /// Starts the store's thread; it ends when the last handle is dropped.
    pub fn new(store: Store) -> Db {
        Db::pool(vec![store], None)
    }

    /// Connects `pool_size` database threads to the PostgreSQL server at
    /// `url` (migrating it first); fails if any cannot connect. Each thread
    /// opens a new connection when its own breaks (a server restart), so
    /// the daemon outlives a database outage: operations fail meanwhile.
    /// Blocks until connected; safe to call from the async runtime (the
    /// connecting happens on the new threads).
    ///
    /// Other daemons may share the database: this one registers under a
    /// random id, renews its lease every `lease / 6` on a connection of its
    /// own (for as long as a handle lives), and is taken for dead by the
    /// others once `lease` passes without a renewal (see [`Store::in_flight`]).
    pub fn postgres(url: &Secret, pool_size: usize, lease: std::time::Duration) -> Result<Db, StoreError> {
        let owner = Owner { id: hex::encode(rand::random::<[u8; 8]>()), lease_ms: lease.as_millis() as i64 };
        let (done, connected) = mpsc::channel();
        // One more connection than the pool: the lease's own.
        for _ in 0..=pool_size.max(1) {
            let (url, done, owner) = (url.clone(), done.clone(), owner.clone());
            std::thread::Builder::new()
                .name("voice-otp-db-connect".into())
                .spawn(move || {
                    let _ = done.send(Store::open_postgres(&url).map(|s| Store { owner: Some(owner), ..s }));
                })
                .map_err(StoreError::Io)?;
        }
        drop(done);
        let mut stores = connected.iter().collect::<Result<Vec<_>, _>>()?;
        let heartbeat = stores.pop().expect("at least two connections");
        heartbeat.renew_lease(true)?;
        let db = Db::pool(stores, Some(url.clone()));
        tracing::info!(daemon = %owner.id, "on PostgreSQL; this daemon's id, recorded on the calls it dials");
        let alive = Arc::downgrade(&db.alive);
        let every = (lease / 6).max(std::time::Duration::from_millis(200));
        std::thread::Builder::new()
            .name("voice-otp-db-lease".into())
            .spawn({
                let url = url.clone();
                move || keep_lease(heartbeat, &url, every, &alive)
            })
            .map_err(StoreError::Io)?;
        Ok(db)
    }

    /// This daemon's id on a shared database.
    pub fn daemon_id(&self) -> Option<&str> {
        self.daemon.as_deref()
    }

    /// One database thread per store, sharing one queue. `reopen`: the URL
    /// to reconnect to when a PostgreSQL connection breaks.
    pub(crate) fn pool(stores: Vec<Store>, reopen: Option<Secret>) -> Db {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue: Queue = Arc::new(Mutex::new(queue));
        let postgres = stores.first().is_some_and(Store::is_postgres);
        let daemon = stores.first().and_then(|s| s.owner.as_ref()).map(|o| o.id.clone());
        for store in stores {
            let (queue, reopen) = (queue.clone(), reopen.clone());
            std::thread::Builder::new()
                .name("voice-otp-db".into())
                .spawn(move || serve_jobs(&queue, store, reopen))
                .expect("cannot start a database thread");
        }
        Db { jobs, postgres, alive: Arc::new(()), daemon }
    }

    /// Whether the store is PostgreSQL (shared with other daemons, maybe).
    pub fn is_postgres(&self) -> bool {
        self.postgres
    }

    /// Runs `f` on a database thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let (reply, answer) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move |store| {
            // A panic in one operation must not take the thread (and every
            // later request) with it; the database's transactions keep the
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

/// The lease thread: renews this daemon's lease every `every` until the
/// last [`Db`] handle is gone, reconnecting as the pool's threads do.
fn keep_lease(mut store: Store, url: &Secret, every: std::time::Duration, alive: &std::sync::Weak<()>) {
    while alive.upgrade().is_some() {
        if store.is_broken() {
            match Store::open_postgres(url) {
                Ok(fresh) => store = Store { owner: store.owner.take(), ..fresh },
                Err(e) => tracing::error!("the lease's PostgreSQL connection cannot be reopened: {e}"),
            }
        }
        if let Err(e) = store.renew_lease(false) {
            tracing::error!("could not renew this daemon's lease: {e}");
        }
        std::thread::sleep(every);
    }
}

/// A database thread: takes jobs until every [`Db`] handle is gone.
fn serve_jobs(queue: &Queue, mut store: Store, reopen: Option<Secret>) {
    loop {
        // The lock is held only while waiting for a job, so an idle thread
        // waits its turn at the queue and a busy one never blocks the rest.
        let job = match queue.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).recv() {
            Ok(job) => job,
            Err(_) => return,
        };
        if store.is_broken()
            && let Some(url) = &reopen
        {
            match Store::open_postgres(url) {
                Ok(fresh) => {
                    #[cfg(test)]
                    let fresh = Store { _schema: store._schema.take(), ..fresh };
                    let fresh = Store { owner: store.owner.take(), ..fresh };
                    tracing::warn!("the PostgreSQL connection was lost; reconnected");
                    store = fresh;
                }
                Err(e) => tracing::error!("the PostgreSQL connection was lost and cannot be reopened: {e}"),
            }
        }
        job(&mut store);
        // A job that panicked inside a transaction left it open: undo it,
        // or every later job would run inside it.
        store.abandon_open_transaction();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::{self, async_backends};
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
        let version: i64 = store.sqlite_for_tests().pragma_query_value(None, "user_version", |r| r.get(0)).unwrap();
        assert_eq!(version, migrations::LATEST);
        let cache: i64 = store.sqlite_for_tests().pragma_query_value(None, "cache_size", |r| r.get(0)).unwrap();
        assert_eq!(cache, -CACHE_KIB, "a 64 MiB page cache, not SQLite's 2 MiB");
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

    /// PostgreSQL restarted, a failover, a cut: the operation that hits
    /// the dead connection fails, and the next runs on a new one.
    #[tokio::test]
    async fn a_lost_postgres_connection_is_reopened() {
        if testing::postgres_url().is_none() {
            return;
        }
        let db = testing::Backend::Postgres.db(1, |s| {
            s.add_user("acme1", "h").unwrap();
        });
        let killed = db.run(|s| s.batch("SELECT pg_terminate_backend(pg_backend_pid())")).await;
        assert!(matches!(killed, Err(StoreError::Postgres(_))), "{killed:?}");
        assert!(db.run(|s| s.user("acme1")).await.unwrap().is_some(), "served on a new connection");
    }

    /// Over TLS (`scripts/postgres` serves it with a test CA): the session
    /// is encrypted, and without that CA the certificate is refused.
    #[test]
    fn postgres_over_verified_tls() {
        let Some(url) = std::env::var("VOICE_OTP_TEST_POSTGRES_TLS").ok().filter(|u| !u.is_empty()) else {
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "VOICE_OTP_TEST_POSTGRES_TLS is not set: the TLS connection test did not run"
            );
            return;
        };
        let s = Store::open_postgres(&Secret::new(url.clone())).expect("a TLS connection with the test CA");
        let encrypted: bool =
            s.query_one("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()", &[], |r| r.get(0)).unwrap();
        assert!(encrypted);
        let without_ca = url.split('?').next().unwrap().to_owned() + "?sslmode=require";
        let refused = Store::open_postgres(&Secret::new(without_ca)).err().expect("an unknown CA is refused");
        assert!(refused.to_string().contains("certificate"), "{refused}");
        assert!(!refused.to_string().contains("voice-otp-test"), "no password in {refused}");
    }

    async_backends! {
        async fn a_panicking_operation_leaves_the_store_serving(b) {
            let db = b.db(1, |_| ());
            let failed = db.run(|_| -> Result<(), StoreError> { panic!("boom") }).await;
            assert!(matches!(failed, Err(StoreError::Task(_))));
            // One that panics inside a transaction leaves no transaction open.
            let failed = db
                .run(|s| {
                    s.atomically(|s| {
                        s.add_user("ghost", "h")?;
                        panic!("boom inside")
                    })
                })
                .await;
            assert!(matches!(failed, Err::<(), _>(StoreError::Task(_))));
            db.run(|s| s.add_user("acme1", "h").map(|_| ())).await.unwrap();
            assert!(db.run(|s| s.user("acme1")).await.unwrap().is_some());
            assert!(db.run(|s| s.user("ghost")).await.unwrap().is_none(), "the panicked transaction was undone");
        }

        /// Checks made inside `atomically` hold when it commits, however
        /// many connections run it at once: a quota of 3 calls to a number,
        /// 12 requests racing on a pool of 4, exactly 3 calls stored.
        async fn racing_exclusive_transactions_keep_a_quota(b) {
            use crate::call::options::{CallMode, CallOptions};
            use crate::call::{CallId, now_ms};
            let db = b.db(4, |s| {
                s.add_user("acme1", "h").unwrap();
            });
            let tasks: Vec<_> = (0..12)
                .map(|_| {
                    let db = db.clone();
                    tokio::spawn(async move {
                        db.run(|s| {
                            let user = s.user("acme1")?.expect("the user").id;
                            s.atomically(|s| {
                                if s.number_calls_since("+923001234567", 0, 0)?.since >= 3 {
                                    return Ok(false);
                                }
                                // Time for the others to look at the count too.
                                std::thread::sleep(std::time::Duration::from_millis(20));
                                let options =
                                    CallOptions { language: "en".into(), require_keypress: false, mode: CallMode::Read };
                                let id = CallId::generate();
                                s.insert_call(&NewCall { id: &id, user_id: user, number: "+923001234567", code: "1234", options: &options })?;
                                Ok(true)
                            })
                        })
                        .await
                        .unwrap()
                    })
                })
                .collect();
            let mut stored = 0;
            for t in tasks {
                stored += usize::from(t.await.unwrap());
            }
            assert_eq!(stored, 3);
            let counted = db.run(move |s| s.number_calls_since("+923001234567", 0, now_ms() + 1)).await.unwrap();
            assert_eq!(counted.since, 3);
        }

        /// Wrong codes checked at once on several connections each count:
        /// five racing checks of a verification allowing five end it.
        async fn racing_checks_each_count(b) {
            use crate::verify::{CodeLength, VerificationId, VerificationStatus, VerifyKey};
            let id = VerificationId::generate();
            let id2 = id.clone();
            let db = b.db(4, move |s| {
                let user = s.add_user("acme1", "h").unwrap().id;
                let new = NewVerification {
                    id: &id2,
                    user_id: user,
                    number: "+923001234567",
                    code_length: CodeLength::DEFAULT,
                    salt: [7; 16],
                    language: &crate::call::language::Language::from("en"),
                    callback_url: None,
                    expires_at: crate::call::now_ms() + 600_000,
                };
                s.insert_verification(&new).unwrap();
            });
            let tasks: Vec<_> = (0..5)
                .map(|_| {
                    let (db, id) = (db.clone(), id.clone());
                    tokio::spawn(async move {
                        db.run(move |s| {
                            let user = s.user("acme1")?.expect("the user").id;
                            let key = VerifyKey::from_bytes([3; 32]);
                            s.check_verification(&id, user, &key, "not-a-code", 5, crate::call::now_ms())
                        })
                        .await
                        .unwrap()
                    })
                })
                .collect();
            for t in tasks {
                t.await.unwrap();
            }
            let v = db.run(move |s| s.verification(&id)).await.unwrap().unwrap();
            assert_eq!((v.failed_checks, v.status), (5, VerificationStatus::MaxAttemptsReached));
        }
    }
}
