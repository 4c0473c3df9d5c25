//! The one way a test sets up a daemon: [`Setup`] names it, adds config and
//! API users, and starts it against the sandbox Asterisk, a scripted
//! [`FakeAmi`] or any AMI address (a tap in front of the sandbox). What it
//! leaves is a [`Home`] - the temp dir, config file, database and users,
//! which outlives any one daemon, so a test can kill and restart it - and
//! the running [`Daemon`], which places seed calls as the first user.
//!
//! Everything a test starts is its own: ports are 0 (any free one), the
//! folder is per process and per setup, and numbers on the shared sandbox
//! come from [`super::sandbox::unique_number`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use super::daemon::{Daemon, TempDir, add_user, cli, write_config, write_config_servers};
use super::fake_ami::{FakeAmi, FakeScript};
use super::postgres::TestDatabase;
use super::sandbox::Sandbox;

/// The password of the API users a [`Setup`] adds, unless told otherwise.
pub const PASSWORD: &str = "correct-horse-9";

/// Config for tests that look at the order of FastAGI commands, not their
/// pacing: the pauses of the call flow cut to 10 ms.
pub const FAST_FLOW: &str = "[call]\nanswer_pause_ms = 10\ndigit_pause_ms = 10\nreading_pause_ms = 10\n";

/// Config for tests that call one number more often than its quotas allow
/// (the quotas are tests/abuse_limits.rs's subject).
pub const NO_NUMBER_QUOTAS: &str = "[limits]\nnumber_calls_per_window = 0\nnumber_calls_per_day = 0\n";

/// How long a fake-AMI setup waits for the daemon's first Login.
const LOGIN_WAIT: Duration = Duration::from_secs(10);

/// What a test's daemon is to be: a name for its folder, config added to
/// the test defaults of [`write_config`], and its API users.
#[derive(Debug, Clone)]
pub struct Setup {
    name: String,
    http_keys: String,
    agi_keys: String,
    extra: String,
    users: Vec<(String, String)>,
    postgres: Option<String>,
    /// `[[asterisk]]` entries (TOML keys each); empty: the `[ami]` form.
    servers: Vec<String>,
}

impl Setup {
    /// A daemon in folder `name` with one API user, `acme1` / [`PASSWORD`].
    pub fn new(name: &str) -> Setup {
        Setup {
            name: name.to_owned(),
            http_keys: String::new(),
            agi_keys: String::new(),
            extra: String::new(),
            users: vec![("acme1".to_owned(), PASSWORD.to_owned())],
            postgres: None,
            servers: Vec::new(),
        }
    }

    /// On the PostgreSQL database `db` instead of a SQLite file.
    pub fn postgres(mut self, db: &TestDatabase) -> Setup {
        self.postgres = Some(db.url.clone());
        self
    }

    /// Appends TOML sections (none of `[http]`, `[agi]`, `[database]`,
    /// `[auth]`, `[ami]`, nor one given before: TOML forbids repeats).
    pub fn config(mut self, toml: &str) -> Setup {
        self.extra.push_str(toml);
        self.extra.push('\n');
        self
    }

    /// Adds `keys` (lines) to the `[http]` section.
    pub fn http_keys(mut self, keys: &str) -> Setup {
        self.http_keys.push_str(keys);
        self.http_keys.push('\n');
        self
    }

    /// Adds `keys` (lines) to the `[agi]` section.
    pub fn agi_keys(mut self, keys: &str) -> Setup {
        self.agi_keys.push_str(keys);
        self.agi_keys.push('\n');
        self
    }

    /// Adds API user `name` (or changes its password); the first user is
    /// the one the daemon's seed calls are placed as.
    pub fn user(mut self, name: &str, password: &str) -> Setup {
        match self.users.iter_mut().find(|(n, _)| n == name) {
            Some(user) => user.1 = password.to_owned(),
            None => self.users.push((name.to_owned(), password.to_owned())),
        }
        self
    }

    /// No API users at all (a daemon that only serves `/healthz`).
    pub fn no_users(mut self) -> Setup {
        self.users.clear();
        self
    }

    /// Adds an `[[asterisk]]` entry named `name` at `ami` with `keys`
    /// (lines) added; with any, the config has no `[ami]` section and the
    /// address given to [`Setup::home`] is not used.
    pub fn server(mut self, name: &str, ami: SocketAddr, keys: &str) -> Setup {
        self.servers.push(format!("name = \"{name}\"\nhost = \"{}\"\nport = {}\n{keys}", ami.ip(), ami.port()));
        self
    }

    /// Starts the daemon on the `[[asterisk]]` entries given with
    /// [`Setup::server`].
    pub fn start_servers(self) -> (Home, Daemon) {
        assert!(!self.servers.is_empty(), "no [[asterisk]] entries");
        let unused = SocketAddr::from(([127, 0, 0, 1], 0));
        self.start(unused)
    }

    /// Writes the config for AMI at `ami` (or the [`Setup::server`]
    /// entries) and adds the users; starts nothing.
    pub fn home(self, ami: SocketAddr) -> Home {
        let dir = TempDir::new(&self.name);
        let config = if self.servers.is_empty() {
            write_config(&dir.0, ami, &self.http_keys, &self.agi_keys, &self.extra, self.postgres.as_deref())
        } else {
            write_config_servers(
                &dir.0,
                &self.servers,
                &self.http_keys,
                &self.agi_keys,
                &self.extra,
                self.postgres.as_deref(),
            )
        };
        let users = self
            .users
            .into_iter()
            .map(|(name, password)| {
                let webhook_secret = add_user(&config, &name, &password);
                User { name, password, webhook_secret }
            })
            .collect();
        Home { dir, config, users, postgres: self.postgres }
    }

    /// [`Setup::home`], then the daemon started.
    pub fn start(self, ami: SocketAddr) -> (Home, Daemon) {
        let home = self.home(ami);
        let daemon = home.start();
        (home, daemon)
    }

    /// Against the sandbox Asterisk (its default credentials are the
    /// daemon's defaults).
    pub fn sandbox(self, sandbox: &Sandbox) -> (Home, Daemon) {
        self.start(sandbox.ami)
    }

    /// Against a fake AMI playing `script` ([`FakeScript::for_daemon`] for
    /// one that lets the daemon in); returns once the daemon has sent its
    /// first Login, accepted or not.
    pub async fn fake(self, script: FakeScript) -> (Home, FakeAmi, Daemon) {
        let fake = FakeAmi::start(script).await;
        let (home, daemon) = self.start(fake.addr());
        assert!(fake.wait_for_count("Login", 1, LOGIN_WAIT).await, "daemon never logged in to AMI\n{}", daemon.logs());
        (home, fake, daemon)
    }
}

/// Waits until every call `daemon` stored has ended, then asserts that each
/// was originated on `fake` exactly once and nothing else was; returns the
/// stored ids in the order they were stored. Judged once no call is live, nothing can still
/// be on its way: no sleep needed.
pub fn assert_each_dialled_once(daemon: &Daemon, fake: &FakeAmi) -> Vec<String> {
    let stored = daemon.settle(Duration::from_secs(30));
    let mut originated = fake.originated();
    originated.sort();
    let mut expected = stored.clone();
    expected.sort();
    assert_eq!(originated, expected, "Originates vs stored calls; actions: {:?}", fake.actions());
    stored
}

/// An API user a [`Setup`] added.
#[derive(Debug, Clone)]
pub struct User {
    /// Its name.
    pub name: String,
    /// Its password.
    pub password: String,
    /// Its webhook signing secret, as `user add` showed it.
    pub webhook_secret: String,
}

/// A test daemon's folder, config, database and users; removed when dropped.
pub struct Home {
    /// The folder (config, `test.db`).
    pub dir: TempDir,
    /// The config file.
    pub config: PathBuf,
    /// The API users, in the order they were added.
    pub users: Vec<User>,
    /// The PostgreSQL database's URL, when not on SQLite.
    pub postgres: Option<String>,
}

impl Home {
    /// Starts a daemon on this home, placing seed calls as the first user.
    pub fn start(&self) -> Daemon {
        let daemon = Daemon::start(&self.config).on_postgres(self.postgres.as_deref());
        match self.users.first() {
            Some(user) => daemon.calling_as(&user.name, &user.password),
            None => daemon,
        }
    }

    /// The user named `name`.
    pub fn user(&self, name: &str) -> &User {
        self.users.iter().find(|u| u.name == name).unwrap_or_else(|| panic!("no user {name} in this setup"))
    }

    /// The database file.
    pub fn db(&self) -> PathBuf {
        self.dir.0.join("test.db")
    }

    /// Runs the CLI on this home's config, asserting success; returns stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let (ok, out, err) = cli(&self.config, args, "");
        assert!(ok, "voice-otp {args:?} failed: {out} {err}");
        out
    }
}
