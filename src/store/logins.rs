//! Failed logins shared by daemons on one database: each daemon writes the
//! failures (and the successes that forgive them) it sees, and reads the
//! others' into its own counts (`limits`), so guesses spread over several
//! daemons are counted as if one had seen them all. Kept a day, the longest
//! `limits.login_failure_window_secs`.

use std::net::IpAddr;

use super::backend::args;
use super::{Store, StoreError};

/// Events older than this are deleted as new ones come.
const KEEP_MS: i64 = 86_400_000;

/// What a daemon saw of one login.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginEventKind {
    /// A wrong password (or an unknown name). `verified`: a bcrypt verify
    /// ran, so it counts against the name as well as the address.
    Failed {
        /// Whether it counts against the name.
        verified: bool,
    },
    /// The right password: the name's and the (name, address) pair's
    /// failures are forgiven.
    Succeeded,
}

impl LoginEventKind {
    fn as_str(self) -> &'static str {
        match self {
            LoginEventKind::Failed { verified: true } => "failed_verified",
            LoginEventKind::Failed { verified: false } => "failed",
            LoginEventKind::Succeeded => "succeeded",
        }
    }

    fn parse(s: &str) -> Option<LoginEventKind> {
        Some(match s {
            "failed_verified" => LoginEventKind::Failed { verified: true },
            "failed" => LoginEventKind::Failed { verified: false },
            "succeeded" => LoginEventKind::Succeeded,
            _ => return None,
        })
    }
}

/// One login another daemon saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoginEvent {
    /// Its place in the log: read the next ones after it.
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// What happened.
    pub kind: LoginEventKind,
    /// The user name tried.
    pub name: String,
    /// The client address, as the limits count it (an IPv6 /64's first
    /// address).
    pub ip: IpAddr,
}

impl Store {
    /// Writes a login daemon `daemon` saw, and deletes events a day old.
    pub fn record_login_event(
        &mut self,
        daemon: &str,
        kind: LoginEventKind,
        name: &str,
        ip: IpAddr,
        at_ms: i64,
    ) -> Result<(), StoreError> {
        self.execute("DELETE FROM login_events WHERE at < ?1", args![at_ms - KEEP_MS])?;
        self.execute(
            "INSERT INTO login_events (daemon, at, kind, name, ip) VALUES (?1, ?2, ?3, ?4, ?5)",
            args![daemon, at_ms, kind.as_str(), name, ip.to_string()],
        )?;
        Ok(())
    }

    /// Logins other daemons than `daemon` saw, after event `after` (0: from
    /// the oldest kept), oldest first, at most `limit`.
    pub fn login_events_after(&self, daemon: &str, after: i64, limit: u32) -> Result<Vec<LoginEvent>, StoreError> {
        let rows: Vec<(i64, i64, String, String, String)> = self.query(
            "SELECT id, at, kind, name, ip FROM login_events WHERE id > ?1 AND daemon <> ?2 ORDER BY id LIMIT ?3",
            args![after, daemon, limit],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )?;
        rows.into_iter()
            .map(|(id, at_ms, kind, name, ip)| {
                let (Some(kind), Ok(ip)) = (LoginEventKind::parse(&kind), ip.parse()) else {
                    return Err(StoreError::Corrupt(format!("login event {id}: {kind:?} from {ip:?}")));
                };
                Ok(LoginEvent { id, at_ms, kind, name, ip })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::backends;

    backends! {
        fn each_daemon_reads_the_others_events_in_order(b) {
            let mut s = b.open();
            let x: IpAddr = "192.0.2.7".parse().unwrap();
            let now = crate::call::now_ms();
            s.record_login_event("a", LoginEventKind::Failed { verified: true }, "acme1", x, now).unwrap();
            s.record_login_event("b", LoginEventKind::Failed { verified: false }, "acme1", x, now).unwrap();
            s.record_login_event("a", LoginEventKind::Succeeded, "acme1", x, now + 1).unwrap();
            let seen_by_b = s.login_events_after("b", 0, 10).unwrap();
            let kinds: Vec<_> = seen_by_b.iter().map(|e| e.kind).collect();
            assert_eq!(kinds, [LoginEventKind::Failed { verified: true }, LoginEventKind::Succeeded]);
            assert_eq!((seen_by_b[0].name.as_str(), seen_by_b[0].ip), ("acme1", x));
            assert!(s.login_events_after("b", seen_by_b[1].id, 10).unwrap().is_empty());
            assert_eq!(s.login_events_after("a", 0, 10).unwrap().len(), 1);
            // A day later the old ones go as a new one comes.
            s.record_login_event("c", LoginEventKind::Succeeded, "x", x, now + KEEP_MS + 10).unwrap();
            assert_eq!(s.login_events_after("z", 0, 10).unwrap().len(), 1);
        }
    }
}
