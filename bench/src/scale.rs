//! `pg_vs_sqlite` and `scale_2_daemons_vs_1`: complete simulated calls per
//! second (HTTP -> AMI -> FastAGI flow -> Hangup, as `calls_per_s`) of
//!
//! - `sqlite`: one daemon on its SQLite file;
//! - `pg1`: one daemon on a PostgreSQL database of its own;
//! - `pg2`: two daemons sharing one PostgreSQL database, the load split
//!   evenly between them, each with a scripted Asterisk of its own (as two
//!   daemons in front of two Asterisk servers would be deployed);
//!
//! the same total load (requests, clients) on each. The three take turns
//! in rounds, after a warm-up round, so a busy moment of the machine falls
//! on all of them. Each PostgreSQL side gets a fresh database (`CREATE
//! DATABASE` with a name unique to the run), dropped at the end.
//!
//! Besides calls/s each side prints its daemons' CPU time per call and the
//! CPU time per call of the PostgreSQL server processes serving its
//! database (the backends `pg_stat_activity` lists for it): on a 2-core
//! machine the server runs on the same cores as the daemons and the load
//! generator, so its cost is part of the bound.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use crate::asterisk::{self, CallMode, Stats};
use crate::daemon::{Daemon, Database, configure_on, seed_targets_from};
use crate::http_load::{self, Stop};
use crate::{print, procfs};

/// Rounds of the measured load per side, after the warm-up round.
const ROUNDS: u64 = 3;

/// HTTP clients of a side, shared among its daemons.
const CONNECTIONS: usize = 32;

/// One daemon and the scripted Asterisk it dials through.
struct Node {
    daemon: Daemon,
    stats: Arc<Stats>,
    /// Seed requests its HTTP API accepted so far (warm-up included).
    accepted: u64,
}

/// One side: its daemons, its database, and what its rounds added up to.
struct Side {
    name: &'static str,
    nodes: Vec<Node>,
    /// The PostgreSQL database, if on one.
    database: Option<String>,
    completed: u64,
    failed: u64,
    secs: f64,
    daemon_cpu: f64,
    server_cpu: f64,
}

/// Measures both figures; `admin_url` is a PostgreSQL URL whose user may
/// create databases (`scripts/postgres up` prints one).
pub async fn measure(binary: &std::path::Path, work: &std::path::Path, admin_url: &str, requests: u64) {
    let run = format!("vob_{}_{}", std::process::id(), voice_otp::time::now_ms());
    let names = [format!("{run}_one"), format!("{run}_two")];
    {
        let (url, names) = (admin_url.to_owned(), names.clone());
        tokio::task::spawn_blocking(move || {
            let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
            for name in &names {
                admin.batch_execute(&format!("CREATE DATABASE {name}")).expect("CREATE DATABASE");
            }
        })
        .await
        .expect("create the databases");
    }
    let urls = names.clone().map(|name| database_url(admin_url, &name));

    let mut sides = vec![
        side(binary, work, "sqlite", &[Database::File], None).await,
        side(binary, work, "pg1", &[Database::Postgres { url: &urls[0], user_exists: false }], Some(&names[0])).await,
        side(
            binary,
            work,
            "pg2",
            &[
                Database::Postgres { url: &urls[1], user_exists: false },
                Database::Postgres { url: &urls[1], user_exists: true },
            ],
            Some(&names[1]),
        )
        .await,
    ];
    let mut next_number = 0;
    for round in 0..=ROUNDS {
        for side in &mut sides {
            // Round 0 is the warm-up: statements prepared, pages read,
            // the user's bcrypt check cached.
            let n = if round == 0 { requests / 10 } else { requests / ROUNDS };
            let measured = load(side, admin_url, n, &mut next_number).await;
            if round > 0 {
                side.completed += measured.completed;
                side.failed += measured.failed;
                side.secs += measured.secs;
                side.daemon_cpu += measured.daemon_cpu;
                side.server_cpu += measured.server_cpu;
            }
        }
    }

    print("scale_requests_per_side", requests / ROUNDS * ROUNDS);
    print("scale_connections", CONNECTIONS);
    for side in &sides {
        let per_call = |cpu: f64| format!("{:.3}", cpu * 1000.0 / side.completed.max(1) as f64);
        print(&format!("scale_{}_daemons", side.name), side.nodes.len());
        print(&format!("scale_{}_calls_completed", side.name), side.completed);
        print(&format!("scale_{}_calls_failed", side.name), side.failed);
        print(&format!("scale_{}_calls_per_s", side.name), format!("{:.0}", side.completed as f64 / side.secs));
        print(&format!("scale_{}_daemon_cpu_ms_per_call", side.name), per_call(side.daemon_cpu));
        if side.database.is_some() {
            print(&format!("scale_{}_postgres_cpu_ms_per_call", side.name), per_call(side.server_cpu));
        }
    }
    let rate = |i: usize| sides[i].completed as f64 / sides[i].secs;
    print("pg_vs_sqlite", format!("{:.2}", rate(1) / rate(0)));
    print("scale_2_daemons_vs_1", format!("{:.2}", rate(2) / rate(1)));

    for side in sides {
        for node in side.nodes {
            tokio::task::spawn_blocking(move || node.daemon.stop()).await.expect("stop a daemon");
        }
    }
    let url = admin_url.to_owned();
    tokio::task::spawn_blocking(move || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
        for name in &names {
            admin.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).expect("DROP DATABASE");
        }
    })
    .await
    .expect("drop the databases");
}

/// `admin_url` with its database name replaced by `name`.
fn database_url(admin_url: &str, name: &str) -> String {
    let (address, query) = admin_url.split_once('?').map_or((admin_url, None), |(a, q)| (a, Some(q)));
    let (server, _) = address.rsplit_once('/').expect("a PostgreSQL URL with a database name");
    match query {
        Some(q) => format!("{server}/{name}?{q}"),
        None => format!("{server}/{name}"),
    }
}

/// Starts a side: one daemon per entry of `databases`, each with its own
/// scripted Asterisk (answering every call and running its FastAGI flow).
async fn side(
    binary: &std::path::Path,
    work: &std::path::Path,
    name: &'static str,
    databases: &[Database<'_>],
    database: Option<&str>,
) -> Side {
    let mut nodes = Vec::new();
    for (i, db) in databases.iter().enumerate() {
        let (ami, stats) = asterisk::start_ami(CallMode::Full, Duration::ZERO).await;
        let config = configure_on(binary, &work.join(format!("scale-{name}-{i}")), ami, 4096, *db, "");
        let (binary, config) = (binary.to_owned(), config.clone());
        let daemon = tokio::task::spawn_blocking(move || Daemon::start(&binary, &config)).await.expect("start");
        eprintln!("scale: {name} daemon {i} is pid {}", daemon.pid());
        nodes.push(Node { daemon, stats, accepted: 0 });
    }
    Side {
        name,
        nodes,
        database: database.map(str::to_owned),
        completed: 0,
        failed: 0,
        secs: 0.0,
        daemon_cpu: 0.0,
        server_cpu: 0.0,
    }
}

/// What one round of a side measured.
struct Round {
    completed: u64,
    failed: u64,
    secs: f64,
    daemon_cpu: f64,
    server_cpu: f64,
}

/// `requests` seed requests split evenly among the side's daemons, all at
/// once; from the start to the last call's hang-up.
async fn load(side: &mut Side, admin_url: &str, requests: u64, next_number: &mut u64) -> Round {
    let backends = match &side.database {
        Some(db) => backend_pids(admin_url, db).await,
        None => Vec::new(),
    };
    let server_before: f64 = backends.iter().map(|&pid| procfs::cpu_seconds(pid)).sum();
    let daemon_before: f64 = side.nodes.iter().map(|n| procfs::cpu_seconds(n.daemon.pid())).sum();
    let counts = |n: &Node| (n.stats.completed.load(Ordering::Relaxed), n.stats.failed.load(Ordering::Relaxed));
    let before: Vec<(u64, u64)> = side.nodes.iter().map(counts).collect();
    let per_node = requests / side.nodes.len() as u64;
    let clients = CONNECTIONS / side.nodes.len();
    let start = Instant::now();
    let runs: Vec<_> = side
        .nodes
        .iter()
        .map(|node| {
            let target = seed_targets_from(*next_number);
            *next_number += per_node;
            tokio::spawn(http_load::run(node.daemon.http, target, clients, Stop::Requests(per_node), false))
        })
        .collect();
    for (node, run) in side.nodes.iter_mut().zip(runs) {
        let out = run.await.expect("load");
        assert_eq!(out.refused, 0, "{}: {} seed requests refused", side.name, out.refused);
        node.accepted += out.accepted;
    }
    // Summed over the side: on a shared database a daemon may dial (on
    // its own Asterisk) a call another daemon accepted.
    let expected: u64 = side.nodes.iter().map(|n| n.accepted).sum();
    let ended = |side: &Side| side.nodes.iter().map(|n| counts(n).0 + counts(n).1).sum::<u64>();
    let deadline = Instant::now() + Duration::from_secs(120);
    while ended(side) < expected {
        assert!(Instant::now() < deadline, "{}: calls did not end within 120 s", side.name);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let last = side.nodes.iter().filter_map(|n| *n.stats.last_hangup.lock().unwrap()).max().unwrap_or(start);
    let after: Vec<(u64, u64)> = side.nodes.iter().map(counts).collect();
    let daemon_after: f64 = side.nodes.iter().map(|n| procfs::cpu_seconds(n.daemon.pid())).sum();
    let server_after: f64 = backends.iter().map(|&pid| procfs::cpu_seconds(pid)).sum();
    Round {
        completed: after.iter().zip(&before).map(|(a, b)| a.0 - b.0).sum(),
        failed: after.iter().zip(&before).map(|(a, b)| a.1 - b.1).sum(),
        secs: (last - start).as_secs_f64(),
        daemon_cpu: daemon_after - daemon_before,
        server_cpu: server_after - server_before,
    }
}

/// The server processes connected to database `db` (the daemons' pools
/// and lease connections).
async fn backend_pids(admin_url: &str, db: &str) -> Vec<u32> {
    let (url, db) = (admin_url.to_owned(), db.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut admin = postgres::Client::connect(&url, postgres::NoTls).expect("connect to PostgreSQL");
        admin
            .query("SELECT pid FROM pg_stat_activity WHERE datname = $1", &[&db])
            .expect("pg_stat_activity")
            .iter()
            .map(|r| r.get::<_, i32>(0) as u32)
            .collect()
    })
    .await
    .expect("backend pids")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_the_server_and_options() {
        assert_eq!(
            database_url("postgres://u:p@127.0.0.1:5433/voice_otp?sslmode=disable", "vob_1"),
            "postgres://u:p@127.0.0.1:5433/vob_1?sslmode=disable"
        );
        assert_eq!(database_url("postgres://h/x", "y"), "postgres://h/y");
    }
}
