//! SQLite storage: users, calls and the webhook outbox, through one
//! connection in WAL mode.
//!
//! Everything here is synchronous; async code reaches it through [`Db`],
//! which runs each operation on tokio's blocking pool so the runtime never
//! waits on disk. Schema changes are versioned migrations (`migrations.rs`)
//! tracked in `PRAGMA user_version`.

mod calls;
mod migrations;
mod queue;
mod user_defaults;
mod users;
mod webhooks;

use std::path::Path;
use std::sync::{Arc, Mutex};

use rusqlite::Connection;

pub use calls::{CallCursor, CallEnd, NewCall, NewCallLifecycle, NumberCalls};
pub use user_defaults::UserDefaultsChange;
pub use webhooks::{Attempt, AttemptVerdict, Delivery, DeliveryRecord};
pub use queue::InFlight;
pub use users::User;

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
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        migrations::migrate(&mut conn)?;
        Ok(Store { conn })
    }
}

/// Creates the file with owner-only permissions before SQLite touches it:
/// it holds password hashes and, while calls are live, codes.
fn create_private(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)?;
        }
    }
    match std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// The async handle: a shared [`Store`] whose operations run on the
/// blocking pool, one at a time.
#[derive(Clone)]
pub struct Db {
    store: Arc<Mutex<Store>>,
}

impl Db {
    /// Wraps an opened store.
    pub fn new(store: Store) -> Db {
        Db { store: Arc::new(Mutex::new(store)) }
    }

    /// Runs `f` on the store on a blocking thread.
    pub async fn run<R, F>(&self, f: F) -> Result<R, StoreError>
    where
        F: FnOnce(&mut Store) -> Result<R, StoreError> + Send + 'static,
        R: Send + 'static,
    {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            // A panic inside an earlier operation poisons the lock; the
            // connection itself is still consistent (SQLite transactions), so
            // keep serving.
            let mut guard = store.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut guard)
        })
        .await
        .map_err(|e| StoreError::Task(e.to_string()))?
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
}
