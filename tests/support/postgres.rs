//! A database of its own on the test PostgreSQL for each test that runs
//! the daemon there, dropped with it.
//!
//! The server is named by `VOICE_OTP_TEST_POSTGRES` (`scripts/test` exports
//! it from `scripts/postgres up`). Without it a PostgreSQL test passes after
//! saying on stderr that it did not run (a plain `cargo test`); with it, a
//! server that cannot be reached fails the test.
//!
//! The client here is the blocking `postgres` crate: every call runs on a
//! thread of its own, so tokio tests use it as they are.

/// The variable naming the test server.
pub const ENV: &str = "VOICE_OTP_TEST_POSTGRES";

/// A fresh database on the test server; dropped (connections and all)
/// when this goes.
pub struct TestDatabase {
    admin_url: String,
    name: String,
    /// `[database] url` for it.
    pub url: String,
}

/// Runs `f` on a thread of its own (the blocking client must not run on a
/// runtime thread) and passes its panic on.
fn off_runtime<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::spawn(f).join().unwrap_or_else(|e| std::panic::resume_unwind(e))
}

fn connect(url: &str) -> postgres::Client {
    postgres::Client::connect(url, postgres::NoTls)
        .unwrap_or_else(|e| panic!("{ENV} is set but its server cannot be reached: {e}"))
}

impl TestDatabase {
    /// A fresh database named after `tag`, or `None` (said on stderr) when
    /// no server is given.
    pub fn create(tag: &str) -> Option<TestDatabase> {
        let Some(admin_url) = std::env::var(ENV).ok().filter(|u| !u.is_empty()) else {
            // Straight to stderr, past the test harness's capture, once.
            static SAID: std::sync::Once = std::sync::Once::new();
            SAID.call_once(|| {
                use std::io::Write;
                let _ = writeln!(
                    std::io::stderr(),
                    "{ENV} is not set: the PostgreSQL tests did not run (scripts/test sets it)"
                );
            });
            return None;
        };
        let name = format!(
            "vot_{}_{}_{}",
            tag.replace(|c: char| !c.is_ascii_alphanumeric(), "_"),
            std::process::id(),
            rand_suffix()
        );
        let url = with_database(&admin_url, &name);
        let (admin, db) = (admin_url.clone(), name.clone());
        off_runtime(move || connect(&admin).batch_execute(&format!("CREATE DATABASE {db}")).expect("CREATE DATABASE"));
        Some(TestDatabase { admin_url, name, url })
    }

    /// Every row of `sql` on this database, each column read as text
    /// (`sql` casts what is not text).
    pub fn rows(&self, sql: &str) -> Vec<Vec<Option<String>>> {
        let (url, sql) = (self.url.clone(), sql.to_owned());
        off_runtime(move || {
            let rows = connect(&url).query(&sql, &[]).unwrap_or_else(|e| panic!("{sql}: {e}"));
            rows.iter().map(|r| (0..r.len()).map(|i| r.get::<_, Option<String>>(i)).collect()).collect()
        })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        off_runtime(move || {
            if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                let _ = c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
            }
        });
    }
}

/// `url` with its database (the path) replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let authority_end = base.find("://").map_or(0, |i| i + 3);
    let base = match base[authority_end..].find('/') {
        Some(slash) => &base[..authority_end + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

fn rand_suffix() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos());
    format!("{:012x}", h.finish() & 0xffff_ffff_ffff)
}
