//! `history_*`: the same operations against a database with no history
//! and one holding a month of it (1,000,000 calls over 30 days, see
//! `fill.rs`), each printed as `history_<name>_slowdown` (with history
//! over without).
//!
//! Both daemons run side by side, each with its own scripted Asterisk,
//! and every operation is measured on one right after the other, so the
//! machine's mood weighs on both alike. Through the real daemon over
//! HTTP and FastAGI: `POST /v1/calls` (p50 and p99), `GET /v1/calls`
//! with and without a status filter, `/metrics`, `/healthz`, a FastAGI
//! session's lookup (from the token's answer to the first command of the
//! flow: token check, load, mark answered), POSTs while `/metrics` is
//! fetched in a loop, and a restart (SIGTERM, then from `exec` to the
//! dialling of calls left queued while Asterisk was down: open, migrate,
//! resume). In-process, through the product's `Store` on the stopped
//! daemon's database: the per-number quota check and one retention purge
//! of a day's calls (the side without history is given that one day of
//! calls to purge).
//!
//! The daemons keep every call (`[retention] days = 0`): the purge is
//! measured apart, on the same days on both sides.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;
use voice_otp::store::{PURGE_BATCH, Store};

use crate::asterisk::{self, CallMode, Stats};
use crate::daemon::{Daemon, configure, seed_targets, v1_get_targets, v1_post_targets};
use crate::fill::{self, DAY_MS, NUMBER_POOL, pool_number};
use crate::http_load::{self, Outcome, Stop, Target};
use crate::{print, procfs};

/// Calls in the month of history.
pub const HISTORY_CALLS: u64 = 1_000_000;

/// How much of each operation one run measures.
pub struct Sizes {
    /// `POST /v1/calls` per side (and again while scraped).
    pub posts: u64,
    /// Requests per side of each read-only endpoint.
    pub reads: u64,
    /// FastAGI sessions timed per side.
    pub lookups: u64,
}

/// One daemon and what it runs against.
struct Side {
    name: &'static str,
    config: PathBuf,
    db: PathBuf,
    daemon: Option<Daemon>,
    stats: Arc<Stats>,
}

impl Side {
    fn daemon(&self) -> &Daemon {
        self.daemon.as_ref().expect("the side's daemon runs")
    }
}

/// A latency quantile in ms on both sides, printed with its slowdown.
fn report(name: &str, empty: f64, full: f64) {
    print(&format!("history_{name}_empty_ms"), format!("{empty:.3}"));
    print(&format!("history_{name}_full_ms"), format!("{full:.3}"));
    print(&format!("history_{name}_slowdown"), format!("{:.2}", full / empty));
}

/// Measures every `history_*` figure.
pub async fn measure(binary: &Path, work: &Path, sizes: &Sizes) {
    let now = voice_otp::time::now_ms();
    let mut sides = Vec::new();
    for name in ["empty", "full"] {
        let (ami, stats) = asterisk::start_ami(CallMode::Full, Duration::ZERO).await;
        let dir = work.join(format!("history-{name}"));
        let config = configure(binary, &dir, ami, 4096, "[retention]\ndays = 0\n");
        let db = dir.join("bench.db");
        if name == "full" {
            let path = db.clone();
            let filled = tokio::task::spawn_blocking(move || fill::fill(&path, HISTORY_CALLS, now - 30 * DAY_MS, now))
                .await
                .expect("fill");
            print("history_calls", filled.calls);
            print("history_webhook_deliveries", filled.deliveries);
            print("history_fill_s", format!("{:.1}", filled.seconds));
            print("history_counts_checked", "yes");
            let size = std::fs::metadata(&db).map_or(0, |m| m.len());
            print("history_db_mib", size / (1024 * 1024));
        }
        let daemon = start(binary, &config).await;
        // For a profiler to attach to (`perf record -p PID`).
        eprintln!("history: the {name} side's daemon is pid {}", daemon.pid());
        sides.push(Side { name, config, db, daemon: Some(daemon), stats });
    }
    for side in &sides {
        // The first request of a user waits for one bcrypt check.
        let warm = http_load::run(side.daemon().http, v1_post_targets(9_000_000), 1, Stop::Requests(1), false).await;
        assert_eq!(warm.accepted, 1, "{}: the warm-up POST was refused", side.name);
    }

    let mut first = 0;
    let mut posts = |n: u64| {
        first += n;
        v1_post_targets(first - n)
    };
    let target = posts(sizes.posts);
    let [mut empty, mut full] = both(&sides, |_| target.clone(), 8, sizes.posts).await;
    report("post_p50", empty.latency_ms(0.50), full.latency_ms(0.50));
    report("post_p99", empty.latency_ms(0.99), full.latency_ms(0.99));

    for (name, path) in [
        ("list", "/v1/calls?limit=20"),
        ("list_status", "/v1/calls?status=completed&limit=20"),
        ("metrics", "/metrics"),
        ("healthz", "/healthz"),
    ] {
        let [mut empty, mut full] = both(&sides, |_| v1_get_targets(path), 4, sizes.reads).await;
        report(&format!("{name}_p50"), empty.latency_ms(0.50), full.latency_ms(0.50));
    }

    let target = posts(sizes.posts);
    let mut during = [Outcome::default(), Outcome::default()];
    let mut scrapes = [0, 0];
    for _ in 0..ROUNDS {
        for (i, side) in sides.iter().enumerate() {
            settle(side).await;
            let (o, n) = post_during_scrape(side.daemon().http, target.clone(), sizes.posts / ROUNDS).await;
            during[i].latencies_us.extend(o.latencies_us);
            scrapes[i] += n;
        }
    }
    let [mut empty, mut full] = during;
    print("history_post_p99_during_scrape_empty_ms", format!("{:.3}", empty.latency_ms(0.99)));
    print("history_post_p99_during_scrape_ms", format!("{:.3}", full.latency_ms(0.99)));
    print("history_scrapes_during_posts", scrapes[1]);

    let mut lookups = Vec::new();
    for side in &sides {
        settle(side).await;
        lookups.push(agi_lookup_ms(side, sizes.lookups).await);
    }
    report("agi_lookup_p50", lookups[0], lookups[1]);

    let mut restarts = Vec::new();
    for side in &mut sides {
        restarts.push(restart(binary, side, posts(RESTART_QUEUED)).await);
    }
    print("history_restart_ready_empty_ms", format!("{:.1}", restarts[0].0));
    print("history_restart_ready_full_ms", format!("{:.1}", restarts[1].0));
    report("restart", restarts[0].1, restarts[1].1);
    for side in &mut sides {
        side.daemon.take().expect("daemon").stop();
    }

    let dbs = [sides[0].db.clone(), sides[1].db.clone()];
    let quota = tokio::task::spawn_blocking(move || quota_checks_us([&dbs[0], &dbs[1]], now)).await.expect("quota");
    print("history_quota_check_empty_us", format!("{:.2}", quota[0]));
    print("history_quota_check_full_us", format!("{:.2}", quota[1]));
    print("history_quota_check_slowdown", format!("{:.2}", quota[1] / quota[0]));

    // The side without history gets the one day the purge takes on the
    // other: the same days, the same shares, the same number of calls.
    let (day_from, day_to) = (now - 30 * DAY_MS, now - 29 * DAY_MS);
    let db = sides[0].db.clone();
    tokio::task::spawn_blocking(move || fill::fill(&db, HISTORY_CALLS / 30, day_from, day_to))
        .await
        .expect("fill a day");
    let mut purges = Vec::new();
    for side in &sides {
        let db = side.db.clone();
        purges.push(tokio::task::spawn_blocking(move || purge(&db, day_to)).await.expect("purge"));
    }
    for (side, p) in sides.iter().zip(&purges) {
        print(&format!("history_purge_{}_calls", side.name), p.calls);
        print(&format!("history_purge_{}_ms", side.name), format!("{:.1}", p.ms));
        print(&format!("history_purge_{}_cpu_ms", side.name), format!("{:.1}", p.cpu_ms));
        print(&format!("history_purge_{}_longest_hold_ms", side.name), format!("{:.1}", p.longest_hold_ms));
    }
    // CPU time per call purged: the two days differ by a few calls.
    let per_call = |p: &Purge| p.cpu_ms / p.calls.max(1) as f64;
    print("history_purge_slowdown", format!("{:.2}", per_call(&purges[1]) / per_call(&purges[0])));
}

/// Starts the daemon off the runtime's threads (it waits for the ready line).
async fn start(binary: &Path, config: &Path) -> Daemon {
    let (binary, config) = (binary.to_owned(), config.to_owned());
    tokio::task::spawn_blocking(move || Daemon::start(&binary, &config)).await.expect("start the daemon")
}

/// Rounds of each load, the sides taking turns, so that a busy moment of
/// the machine falls on both.
const ROUNDS: u64 = 3;

/// The same load on each side, in [`ROUNDS`] turns, after a short warm-up
/// (so both have the statements prepared and the pages read); each turn
/// starts once the calls of the one before have ended (a POST's call runs
/// its whole FastAGI flow after the answer), so no load spills into the
/// next. The latencies of a side's turns are pooled.
async fn both(sides: &[Side], target: impl Fn(&Side) -> Target, connections: usize, requests: u64) -> [Outcome; 2] {
    let mut out: Vec<Outcome> = sides.iter().map(|_| Outcome::default()).collect();
    let mut costs = vec![[0.0; 5]; sides.len()];
    for round in 0..=ROUNDS {
        for (i, side) in sides.iter().enumerate() {
            let (t, addr, pid) = (target(side), side.daemon().http, side.daemon().pid());
            settle(side).await;
            // Round 0 is the warm-up.
            let n = if round == 0 { requests / 10 } else { requests / ROUNDS };
            let (cpu, db, io) =
                (procfs::cpu_seconds(pid), procfs::thread_cpu_seconds(pid, "voice-otp-db"), procfs::io_counters(pid));
            let o = http_load::run(addr, t, connections, Stop::Requests(n), false).await;
            assert_eq!(o.refused, 0, "{}: {} requests refused", side.name, o.refused);
            if round == 0 {
                continue;
            }
            settle(side).await;
            let after = procfs::io_counters(pid);
            let spent = [
                procfs::cpu_seconds(pid) - cpu,
                procfs::thread_cpu_seconds(pid, "voice-otp-db") - db,
                (after[0] - io[0]) as f64,
                (after[1] - io[1]) as f64,
                (after[3] - io[3]) as f64,
            ];
            costs[i].iter_mut().zip(spent).for_each(|(c, s)| *c += s);
            out[i].accepted += o.accepted;
            out[i].latencies_us.extend(o.latencies_us);
        }
    }
    if std::env::var_os("VOICE_OTP_BENCH_COSTS").is_some() {
        for (side, c) in sides.iter().zip(&costs) {
            let per = |x: f64| x / (requests / ROUNDS * ROUNDS) as f64;
            eprintln!(
                "history {}: per request (with what its call does) {:.3} ms CPU, {:.3} ms on the database thread, \
                 {:.1} reads, {:.1} writes, {:.0} bytes written",
                side.name,
                per(c[0] * 1000.0),
                per(c[1] * 1000.0),
                per(c[2]),
                per(c[3]),
                per(c[4])
            );
        }
    }
    out.try_into().unwrap_or_else(|_| unreachable!())
}

/// Waits until every call the side's Asterisk originated has ended.
async fn settle(side: &Side) {
    let s = &side.stats;
    let ended = || s.completed.load(Ordering::Relaxed) + s.failed.load(Ordering::Relaxed);
    wait_for(|| ended() >= s.originates.load(Ordering::Relaxed), "the calls to end").await;
}

/// POSTs (8 clients) while one more client fetches `/metrics` back to back;
/// returns the POSTs' outcome and how many scrapes ran meanwhile.
async fn post_during_scrape(addr: SocketAddr, target: Target, posts: u64) -> (Outcome, u64) {
    let stop = Arc::new(AtomicBool::new(false));
    let scraping = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut scrapes = 0;
            while !stop.load(Ordering::Relaxed) {
                let t = crate::daemon::v1_get_targets("/metrics");
                scrapes += http_load::run(addr, t, 1, Stop::Requests(1), false).await.accepted;
            }
            scrapes
        })
    };
    let out = http_load::run(addr, target, 8, Stop::Requests(posts), false).await;
    stop.store(true, Ordering::Relaxed);
    let scrapes = scraping.await.unwrap_or(0);
    (out, scrapes)
}

/// The median FastAGI lookup in ms over `n` sessions, one at a time, on
/// calls stored and dialled for them (answered, held by the scripted
/// Asterisk until their session).
async fn agi_lookup_ms(side: &Side, n: u64) -> f64 {
    let daemon = side.daemon();
    side.stats.hold.store(true, Ordering::Relaxed);
    let before = side.stats.originates.load(Ordering::Relaxed);
    let out = http_load::run(daemon.http, seed_targets(), 8, Stop::Requests(n), true).await;
    assert_eq!(out.call_ids.len() as u64, n, "{}: seed requests refused", side.name);
    wait_for(|| side.stats.originates.load(Ordering::Relaxed) >= before + n, "the held calls' Originates").await;
    side.stats.hold.store(false, Ordering::Relaxed);
    let mut lookups = Vec::new();
    for id in &out.call_ids {
        let token = side.stats.token(id);
        let end = asterisk::agi_call(daemon.agi, id, &token, Duration::ZERO, false).await.expect("FastAGI session");
        lookups.extend(end.lookup);
    }
    assert_eq!(lookups.len() as u64, n, "{}: sessions without a lookup", side.name);
    lookups.sort_unstable();
    lookups[lookups.len() / 2].as_secs_f64() * 1000.0
}

/// Calls left queued by the restart measurement.
const RESTART_QUEUED: u64 = 20;

/// Asterisk goes down, calls are accepted (and wait), the daemon is
/// stopped, Asterisk comes back and the daemon is started again: ms from
/// the start to its ready line, and to the last waiting call's Originate.
async fn restart(binary: &Path, side: &mut Side, target: Target) -> (f64, f64) {
    side.stats.refuse_logins.store(true, Ordering::Relaxed);
    side.stats.drop_sessions();
    let http = side.daemon().http;
    let health = crate::daemon::v1_get_targets("/healthz");
    let mut down = false;
    for _ in 0..500 {
        if http_load::run(http, health.clone(), 1, Stop::Requests(1), false).await.accepted == 0 {
            down = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(down, "{}: /healthz never saw Asterisk go down", side.name);
    let queued = http_load::run(http, target, 1, Stop::Requests(RESTART_QUEUED), false).await;
    assert_eq!(queued.accepted, RESTART_QUEUED, "{}: calls refused while Asterisk was down", side.name);
    let daemon = side.daemon.take().expect("daemon");
    tokio::task::spawn_blocking(move || daemon.stop()).await.expect("stop the daemon");
    side.stats.refuse_logins.store(false, Ordering::Relaxed);
    let before = side.stats.originates.load(Ordering::Relaxed);
    let started = Instant::now();
    side.daemon = Some(start(binary, &side.config).await);
    let ready = started.elapsed();
    let stats = side.stats.clone();
    wait_for(|| stats.originates.load(Ordering::Relaxed) >= before + RESTART_QUEUED, "the waiting calls' Originates")
        .await;
    let last = side.stats.last_originate.lock().unwrap().expect("an Originate");
    (ready.as_secs_f64() * 1000.0, (last - started).as_secs_f64() * 1000.0)
}

/// Waits (polling every millisecond, at most 60 s) until `done`.
async fn wait_for(done: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The per-number quota check as the daemon runs it (`limits.rs`: the
/// default window of 600 s and the day), on numbers of the history's pool,
/// on both sides in turns: for each side the median of five rounds of
/// 20,000 checks, µs of CPU time per check (the thread's own time: on a
/// shared machine wall time is mostly the neighbours').
fn quota_checks_us(dbs: [&Path; 2], now: i64) -> [f64; 2] {
    let stores = dbs.map(|db| Store::open(db).expect("open the database"));
    let mut rng = StdRng::seed_from_u64(7);
    let numbers: Vec<String> = (0..20_000).map(|_| pool_number(rng.random_range(0..NUMBER_POOL))).collect();
    let mut rounds = [Vec::new(), Vec::new()];
    for round in 0..6 {
        for (store, rounds) in stores.iter().zip(&mut rounds) {
            let start = procfs::thread_cpu_now();
            for number in &numbers {
                store.number_calls_since(number, now - DAY_MS, now - 600_000).expect("quota check");
            }
            // Round 0 warms the caches.
            if round > 0 {
                rounds.push((procfs::thread_cpu_now() - start) * 1e6 / numbers.len() as f64);
            }
        }
    }
    rounds.map(|mut r| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    })
}

/// One retention purge, through the product's store.
struct Purge {
    calls: usize,
    /// Wall time, ms.
    ms: f64,
    /// The thread's CPU time, ms.
    cpu_ms: f64,
    /// The longest the database was held at once (one statement or
    /// batch), wall time, ms.
    longest_hold_ms: f64,
}

/// Purges the final calls that ended before `cutoff` as the daemon's
/// housekeeping does: batches of `PURGE_BATCH` until one comes short.
fn purge(db: &Path, cutoff: i64) -> Purge {
    let mut store = Store::open(db).expect("open the database");
    let (start, cpu) = (std::time::Instant::now(), procfs::thread_cpu_now());
    let (mut calls, mut longest) = (0, Duration::ZERO);
    loop {
        let batch = std::time::Instant::now();
        let n = store.purge_calls(cutoff, PURGE_BATCH).expect("purge");
        longest = longest.max(batch.elapsed());
        calls += n;
        if n < PURGE_BATCH {
            break;
        }
    }
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    let cpu_ms = (procfs::thread_cpu_now() - cpu) * 1000.0;
    Purge { calls, ms, cpu_ms, longest_hold_ms: longest.as_secs_f64() * 1000.0 }
}
