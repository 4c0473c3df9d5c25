//! The store's tests on both databases: [`backends!`] makes each test a
//! `sqlite` and a `postgres` case, and [`Backend`] opens a fresh store of
//! either kind.
//!
//! SQLite stores are in memory. PostgreSQL's are on the server named by
//! `VOICE_OTP_TEST_POSTGRES` (`scripts/test` exports it, from
//! `scripts/postgres up`), each in a schema of its own that is dropped when
//! the last store on it goes: parallel tests never see each other's rows.
//! Without the variable the PostgreSQL cases pass after saying, on stderr,
//! that they did not run; with it, a server that is not there fails them.

use std::sync::{Arc, Once};

use super::{Db, Store};
use crate::secret::Secret;

/// The variable naming the test server.
pub(crate) const ENV: &str = "VOICE_OTP_TEST_POSTGRES";

/// Which database a test case runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    /// In-memory SQLite.
    Sqlite,
    /// A fresh schema on the test PostgreSQL.
    Postgres,
}

/// A test's schema on the server, dropped with its last store.
pub(crate) struct Schema {
    admin_url: String,
    name: String,
}

impl Drop for Schema {
    fn drop(&mut self) {
        let (url, name) = (self.admin_url.clone(), self.name.clone());
        // On a thread of its own: the last store may go inside an async
        // test, where the blocking client must not run.
        let _ = std::thread::spawn(move || {
            if let Ok(mut c) = postgres::Client::connect(&url, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        })
        .join();
    }
}

/// The test server's URL; `None` (after saying so once) when not given.
pub(crate) fn postgres_url() -> Option<String> {
    static SAID: Once = Once::new();
    match std::env::var(ENV) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            // Straight to stderr, past the test harness's capture: a plain
            // `cargo test` shows that half the suite did not run.
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(std::io::stderr(), "{ENV} is not set: the store tests' PostgreSQL cases did not run");
            });
            None
        }
    }
}

/// Makes a fresh schema and returns it with a URL whose connections use it.
fn fresh_schema(url: &str) -> (Arc<Schema>, Secret) {
    let url = url.to_owned();
    std::thread::spawn(move || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls)
            .unwrap_or_else(|e| panic!("{ENV} is set but its server cannot be reached: {e}"));
        sweep_abandoned(&mut admin);
        let name = format!("vot_{}_{}", crate::time::now_ms() / 1000, hex::encode(rand::random::<[u8; 6]>()));
        admin.batch_execute(&format!("CREATE SCHEMA {name}")).expect("CREATE SCHEMA");
        let sep = if url.contains('?') { '&' } else { '?' };
        let with_schema = format!("{url}{sep}options=-c%20search_path%3D{name}");
        (Arc::new(Schema { admin_url: url, name }), Secret::new(with_schema))
    })
    .join()
    .unwrap_or_else(|e| std::panic::resume_unwind(e))
}

/// Drops schemas that test runs left behind (a run killed before its
/// stores went) once they are an hour old; once per test process.
fn sweep_abandoned(admin: &mut postgres::Client) {
    static SWEPT: Once = Once::new();
    SWEPT.call_once(|| {
        let cutoff = crate::time::now_ms() / 1000 - 3600;
        let Ok(rows) = admin.query("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'vot\\_%'", &[]) else {
            return;
        };
        for row in rows {
            let name: String = row.get(0);
            let born = name.split('_').nth(1).and_then(|t| t.parse::<i64>().ok());
            if born.is_some_and(|t| t < cutoff) {
                let _ = admin.batch_execute(&format!("DROP SCHEMA IF EXISTS {name} CASCADE"));
            }
        }
    });
}

impl Backend {
    /// A fresh, migrated store. Call it outside the async runtime (plain
    /// `#[test]`s); async tests use [`Backend::db`].
    pub(crate) fn open(self) -> Store {
        match self {
            Backend::Sqlite => Store::open_in_memory().expect("in-memory SQLite"),
            Backend::Postgres => {
                let url = postgres_url().expect("a PostgreSQL case runs only with the server");
                let (schema, url) = fresh_schema(&url);
                let mut store = Store::open_postgres(&url).expect("open the test schema");
                store._schema = Some(schema);
                store
            }
        }
    }

    /// A fresh store shaped by `setup`, behind a [`Db`]: one thread for
    /// SQLite, a pool of `pool` connections (on one schema) for PostgreSQL.
    /// Safe to call from an async test.
    pub(crate) fn db(self, pool: usize, setup: impl FnOnce(&mut Store) + Send + 'static) -> Db {
        self.db_of(None, pool, setup)
    }

    /// [`Backend::db`] working for daemon `owner` (if given) on every
    /// connection, for tests of several daemons on one database.
    pub(crate) fn db_of(self, owner: Option<&str>, pool: usize, setup: impl FnOnce(&mut Store) + Send + 'static) -> Db {
        let owner = owner.map(str::to_owned);
        let as_owner = move |store: Store| match &owner {
            Some(id) => store.working_for(id, 60_000),
            None => store,
        };
        std::thread::spawn(move || match self {
            Backend::Sqlite => {
                let mut store = self.open();
                setup(&mut store);
                Db::new(as_owner(store))
            }
            Backend::Postgres => {
                let mut first = self.open();
                setup(&mut first);
                let schema = first._schema.clone();
                let url = first_url(&schema);
                let mut stores = vec![as_owner(first)];
                for _ in 1..pool {
                    let mut more = Store::open_postgres(&url).expect("open the test schema");
                    more._schema = schema.clone();
                    stores.push(as_owner(more));
                }
                Db::pool(stores, Some(url))
            }
        })
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

/// The URL of a schema's connections.
fn first_url(schema: &Option<Arc<Schema>>) -> Secret {
    let schema = schema.as_ref().expect("a PostgreSQL store has its schema");
    let sep = if schema.admin_url.contains('?') { '&' } else { '?' };
    Secret::new(format!("{}{sep}options=-c%20search_path%3D{}", schema.admin_url, schema.name))
}

/// Makes each test function a module with a `sqlite` and a `postgres` test
/// that run its body with `$backend` set to each. The PostgreSQL case
/// returns at once, passing, when the server is not given.
macro_rules! backends {
    ($($(#[$meta:meta])* fn $name:ident($backend:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            #[allow(clippy::unused_unit)]
            fn case($backend: $crate::store::testing::Backend) $body

            #[test]
            fn sqlite() {
                case($crate::store::testing::Backend::Sqlite)
            }

            #[test]
            fn postgres() {
                if $crate::store::testing::postgres_url().is_some() {
                    case($crate::store::testing::Backend::Postgres)
                }
            }
        }
    )*};
}
pub(crate) use backends;

/// [`backends!`] for async tests (`#[tokio::test]`).
macro_rules! async_backends {
    ($($(#[$meta:meta])* async fn $name:ident($backend:ident) $body:block)*) => {$(
        $(#[$meta])*
        mod $name {
            #[allow(unused_imports)]
            use super::*;

            async fn case($backend: $crate::store::testing::Backend) $body

            #[tokio::test]
            async fn sqlite() {
                case($crate::store::testing::Backend::Sqlite).await
            }

            #[tokio::test]
            async fn postgres() {
                if $crate::store::testing::postgres_url().is_some() {
                    case($crate::store::testing::Backend::Postgres).await
                }
            }
        }
    )*};
}
pub(crate) use async_backends;
