//! `voice-otp serve`: wires the store, the AMI links, the dispatcher, the
//! FastAGI server and the HTTP front end together, and takes them down
//! again on SIGTERM/SIGINT.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::agi::AgiServer;
use crate::auth::{Authenticator, CredentialCache};
use crate::call::agi_handler::OtpAgi;
use crate::call::dispatcher::{AsteriskServers, Dispatcher, LiveCalls};
use crate::config::Config;
use crate::http::App;
use crate::limits::Limits;
use crate::metrics::{CallEnded, Capacity, Metrics};
use crate::store::{Db, PURGE_BATCH, Store};
use crate::verify::VerifyKey;

/// How long shutdown waits for calls in progress before giving up on them.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Addresses actually bound (ports may have been 0 in the config).
#[derive(Debug, Clone, Copy)]
pub struct Bound {
    /// HTTP API.
    pub http: SocketAddr,
    /// `/healthz` and `/metrics`, when `http.ops_listen` puts them apart.
    pub ops: Option<SocketAddr>,
    /// FastAGI server.
    pub agi: SocketAddr,
}

/// A started daemon.
pub struct Daemon {
    /// Where it listens.
    pub bound: Bound,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

/// A start-up failure, with the part that failed named.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Opening or migrating the database.
    #[error("database {path}: {source}")]
    Database {
        /// The file, or the PostgreSQL server and database.
        path: String,
        /// Why.
        source: crate::store::StoreError,
    },
    /// Binding a listener.
    #[error("cannot listen on {what} {addr}: {source}")]
    Bind {
        /// "HTTP", "HTTP ops" or "FastAGI".
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Building the authenticator.
    #[error("auth: {0}")]
    Auth(String),
    /// Reading or making the verification key.
    #[error(transparent)]
    VerifyKey(#[from] crate::verify::code::KeyError),
}

impl Daemon {
    /// Opens everything and starts serving in the background.
    pub async fn start(config: Config) -> Result<Daemon, StartError> {
        let config = Arc::new(config);
        let path = config.database.path.clone();
        let opened = match &config.database.url {
            Some(url) => {
                let (url, pool) = (url.clone(), config.database.pool_size);
                let lease = Duration::from_secs(config.database.lease_secs);
                tokio::task::spawn_blocking(move || Db::postgres(&url, pool, lease))
                    .await
                    .map_err(|e| crate::store::StoreError::Task(e.to_string()))
                    .and_then(|db| db)
            }
            None => Store::open(&path).map(Db::new),
        };
        let db = opened.map_err(|source| StartError::Database { path: config.database.describe(), source })?;
        let verify_key = VerifyKey::load_or_create(&config.verify.key_path(&config.database.path))?;
        let auth = Authenticator::new(db.clone(), config.auth.bcrypt_cost)
            .map_err(|e| StartError::Auth(e.to_string()))?
            .with_cache(CredentialCache::new(
                Duration::from_secs(config.auth.cache_ttl_secs),
                config.auth.cache_max_users,
            ));

        let http = TcpListener::bind(config.http.listen).await.map_err(|source| StartError::Bind {
            what: "HTTP",
            addr: config.http.listen,
            source,
        })?;
        let ops = match config.http.ops_listen {
            Some(addr) => Some(TcpListener::bind(addr).await.map_err(|source| StartError::Bind {
                what: "HTTP ops",
                addr,
                source,
            })?),
            None => None,
        };
        let agi = AgiServer::bind(config.agi.listen)
            .await
            .map_err(|source| StartError::Bind { what: "FastAGI", addr: config.agi.listen, source })?
            .with_allowed_peers(config.agi.allowed_peers.clone())
            .with_max_sessions(config.agi.max_sessions);
        let bound = Bound {
            http: http.local_addr().unwrap_or(config.http.listen),
            ops: ops.as_ref().and_then(|l| l.local_addr().ok()),
            agi: agi.local_addr().unwrap_or(config.agi.listen),
        };

        let shutdown = CancellationToken::new();
        let tracker = TaskTracker::new();
        // One AMI link per Asterisk server, each up in the background.
        let servers = AsteriskServers::connect(&config.servers(), &shutdown);
        let live = LiveCalls::default();
        let mut agi_urls = vec![config.agi.url_for(bound.agi)];
        agi_urls.extend(config.agi.fallback_urls.iter().cloned());
        let metrics = Arc::new(Metrics::new());
        crate::call::declare_call_ends(&metrics);
        metrics.set_capacity(Capacity {
            agi_max_sessions: config.agi.max_sessions as u64,
            // Every server's trunk together.
            max_concurrent_calls: servers.iter().map(|s| u64::from(s.max_concurrent_calls)).sum(),
            max_queued: u64::from(config.queue.max_queued),
        });
        let dispatcher = Dispatcher::start(
            config.clone(),
            db.clone(),
            servers.clone(),
            agi_urls,
            live.clone(),
            metrics.clone(),
            &tracker,
            shutdown.clone(),
        );

        let handler = OtpAgi::new(db.clone(), live.clone(), config.call.clone(), metrics.clone());
        let agi_listening = Arc::new(AtomicBool::new(true));
        let serving = agi_listening.clone();
        let agi_shutdown = shutdown.clone();
        tracker.spawn(async move {
            agi.serve(Arc::new(handler), agi_shutdown).await;
            serving.store(false, Ordering::Relaxed);
        });
        tracker.spawn(crate::webhook::delivery::run(
            db.clone(),
            config.webhooks.clone(),
            metrics.clone(),
            shutdown.clone(),
        ));
        tracker.spawn(housekeeping(db.clone(), config.retention.days, metrics.clone(), shutdown.clone()));
        let mut limits = Limits::new(&config.limits, &config.phone);
        if let Some(daemon) = db.daemon_id() {
            // Other daemons share the database: count failed logins together.
            limits = limits.shared_through(db.clone(), daemon.to_owned());
        }
        let app =
            Arc::new(App { config, db, auth, dispatcher, servers, live, agi_listening, metrics, limits, verify_key });
        tracker.spawn(crate::http::serve(http, ops, app, shutdown.clone()));
        tracker.close();
        Ok(Daemon { bound, shutdown, tracker })
    }

    /// Stops accepting, lets calls in progress finish (bounded), returns.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        if tokio::time::timeout(DRAIN_TIMEOUT, self.tracker.wait()).await.is_err() {
            tracing::warn!("shutdown: calls still in progress after {DRAIN_TIMEOUT:?}; leaving them");
        }
    }
}

/// Runs the daemon until SIGTERM or SIGINT.
pub async fn run(config: Config) -> Result<(), StartError> {
    let daemon = Daemon::start(config).await?;
    tracing::info!(http = %daemon.bound.http, agi = %daemon.bound.agi, "voice-otp ready");
    // One machine-readable line on stdout, for scripts and tests that start
    // the daemon on port 0.
    match daemon.bound.ops {
        Some(ops) => println!("ready http={} agi={} ops={ops}", daemon.bound.http, daemon.bound.agi),
        None => println!("ready http={} agi={}", daemon.bound.http, daemon.bound.agi),
    }
    wait_for_signal().await;
    tracing::info!("shutting down");
    daemon.shutdown().await;
    Ok(())
}

/// How often old calls are purged and overdue queued calls expired.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(60);

/// Periodic chores, first run at start: expire queued calls past their
/// deadline, empty the WAL of old page images, expire verifications past
/// their time (with their webhooks), forget idempotency keys older than a
/// day, purge final calls and verifications older than `[retention] days`
/// (0: never).
async fn housekeeping(db: Db, retention_days: u32, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    loop {
        let now = crate::call::now_ms();
        match db.run(move |s| s.expire_overdue(now)).await {
            Ok(ids) => {
                for id in ids {
                    metrics.call_ended(CallEnded::undialled(crate::call::CallStatus::Expired.as_str()));
                    tracing::info!(call_id = %id, "call expired before it could be dialled");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not expire overdue calls"),
        }
        // Old page images in the WAL may hold codes erased since.
        if let Err(e) = db.run(|s| s.scrub()).await {
            tracing::error!(error = %e, "could not checkpoint the database");
        }
        match db.run(move |s| s.expire_verifications(now)).await {
            Ok(ids) => {
                for id in ids {
                    tracing::info!(verification = %id, "verification expired");
                }
            }
            Err(e) => tracing::error!(error = %e, "could not expire verifications"),
        }
        if let Err(e) = db.run(move |s| s.purge_idempotency_keys(now)).await {
            tracing::error!(error = %e, "could not purge old idempotency keys");
        }
        if retention_days > 0 {
            let cutoff = now - i64::from(retention_days) * 86_400_000;
            let purged = match purge_in_batches(&db, cutoff, Store::purge_calls).await {
                Ok(calls) => purge_in_batches(&db, cutoff, Store::purge_verifications).await.map(|v| (calls, v)),
                Err(e) => Err(e),
            };
            match purged {
                Ok((0, 0)) => {}
                Ok((calls, verifications)) => {
                    tracing::info!(calls, verifications, retention_days, "old calls and verifications purged")
                }
                Err(e) => tracing::error!(error = %e, "could not purge old calls"),
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(HOUSEKEEPING_EVERY) => {}
        }
    }
}

/// Deletes every final call (or verification: `purge` says which) that
/// ended before `cutoff`, in batches of [`PURGE_BATCH`], each its own trip
/// to the database thread: requests and calls that arrive meanwhile are
/// served between two batches instead of waiting for the whole purge.
/// Returns how many went.
async fn purge_in_batches(
    db: &Db,
    cutoff: i64,
    purge: fn(&mut Store, i64, usize) -> Result<usize, crate::store::StoreError>,
) -> Result<usize, crate::store::StoreError> {
    let mut purged = 0;
    loop {
        let n = db.run(move |s| purge(s, cutoff, PURGE_BATCH)).await?;
        purged += n;
        if n < PURGE_BATCH {
            return Ok(purged);
        }
    }
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        // Without signal handlers we can only run until killed.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A purge of many calls leaves the database thread to others between
    /// its batches: a job sent while the purge runs is served after one
    /// batch, not after the whole purge.
    #[tokio::test]
    async fn the_purge_lets_other_work_through_between_batches() {
        let store = Store::open_in_memory().unwrap();
        let total = 2 * PURGE_BATCH + 10;
        store.execute_for_tests("BEGIN", &[]);
        for i in 0..total {
            store.execute_for_tests(
                "INSERT INTO calls (id, number, status, reason, created_at, updated_at, ended_at)
                 VALUES (printf('%032x', ?1), '+923001234567', 'failed', 'busy', ?1, ?1, ?1)",
                crate::store::args![i],
            );
        }
        store.execute_for_tests("COMMIT", &[]);
        let db = Db::new(store);
        let count = "SELECT COUNT(*) FROM calls";
        let purging = tokio::spawn({
            let db = db.clone();
            async move { purge_in_batches(&db, i64::MAX, Store::purge_calls).await }
        });
        // On this single-threaded runtime the purge now sends its first
        // batch; the count below queues behind that batch alone.
        tokio::task::yield_now().await;
        let left = db.run(move |s| Ok(s.count_for_tests(count, &[]))).await.unwrap();
        assert_eq!(left as usize, total - PURGE_BATCH);
        assert_eq!(purging.await.unwrap().unwrap(), total);
        assert_eq!(db.run(move |s| Ok(s.count_for_tests(count, &[]))).await.unwrap(), 0);
    }
}
