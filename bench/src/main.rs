//! `voice-otp-bench`: measures the release `voice-otp` binary under load and
//! prints `name=value` lines (run it through `scripts/bench`).
//!
//! - [`asterisk`]: the load generator playing Asterisk over real TCP (AMI
//!   server, FastAGI client).
//! - [`http_load`]: seed-API clients with latencies.
//! - [`daemon`]: runs the real binary with its own config and users.
//! - [`sandbox`]: `sandbox_overhead` on the real sandbox Asterisk.
//! - [`procfs`]: RSS and CPU time of a process.
//! - [`fill`]: a month of history written through the product's store.
//! - [`history`]: the `history_*` figures, with that month and without.
//! - [`scale`]: `pg_vs_sqlite` and `scale_2_daemons_vs_1`.
//!
//! Every comparison is measured within one run, one side right after the
//! other, so a busy machine slows both alike.

mod asterisk;
mod daemon;
mod fill;
mod floor;
mod history;
mod http_load;
mod procfs;
mod sandbox;
mod scale;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use clap::Parser;
use tokio::time::Instant;

use asterisk::CallMode;
use daemon::{Daemon, configure, seed_targets};
use http_load::Stop;

#[derive(Parser)]
#[command(about = "Benchmarks voice-otp (see scripts/bench)")]
struct Args {
    /// The voice-otp binary to measure (a release build).
    #[arg(long, required_unless_present_any = ["fill_history", "floor_server"])]
    daemon: Option<PathBuf>,
    /// Folder for databases, configs and logs (emptied first).
    #[arg(long, required_unless_present_any = ["fill_history", "floor_server"])]
    work: Option<PathBuf>,
    /// Python with panoramisk installed, for `agi_vs_panoramisk`.
    #[arg(long)]
    python: Option<PathBuf>,
    /// scripts/sandbox, for `sandbox_overhead` (the sandbox must be up).
    #[arg(long)]
    sandbox: Option<PathBuf>,
    /// Shorter runs (under 5 minutes in all).
    #[arg(long)]
    quick: bool,
    /// Internal: serve as the floor FastAGI server with the commands in FILE
    /// (see `floor.rs`); `agi_vs_panoramisk` runs it.
    #[arg(long, value_name = "FILE", hide = true)]
    floor_server: Option<PathBuf>,
    /// FastAGI sessions open at a time in `agi_vs_panoramisk`.
    #[arg(long, default_value_t = 50)]
    agi_concurrency: usize,
    /// FastAGI sessions per server in `agi_vs_panoramisk` (default 1,000
    /// with --quick, else 3,000); more gives a profiler time to sample.
    #[arg(long)]
    agi_sessions: Option<u64>,
    /// A PostgreSQL URL whose user may create databases, for `scale`
    /// (`pg_vs_sqlite`, `scale_2_daemons_vs_1`): each run makes fresh
    /// databases on that server and drops them after.
    #[arg(long)]
    postgres: Option<String>,
    /// Measure only these (comma-separated: auth,http,agi,memory,history,scale,sandbox).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Instead of measuring: add N final calls spread over the DAYS (30)
    /// days up to now to the database DB (see `fill.rs`), check the counts
    /// its triggers keep, and exit. DB needs the user `bench` (`voice-otp
    /// user add`).
    #[arg(long, num_args = 2..=3, value_names = ["DB", "N", "DAYS"])]
    fill_history: Vec<String>,
}

impl Args {
    /// `--daemon` (clap requires it when measuring).
    fn daemon(&self) -> &std::path::Path {
        self.daemon.as_deref().expect("--daemon")
    }

    /// `--work` (clap requires it when measuring).
    fn work(&self) -> &std::path::Path {
        self.work.as_deref().expect("--work")
    }

    fn wants(&self, what: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == what)
    }

    fn pick<T>(&self, quick: T, full: T) -> T {
        if self.quick { quick } else { full }
    }
}

fn print(name: &str, value: impl std::fmt::Display) {
    println!("{name}={value}");
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    if let Some(script) = &args.floor_server {
        return floor::serve(script).await;
    }
    if let [db, n, days @ ..] = args.fill_history.as_slice() {
        let n: u64 = n.parse().expect("N: a number of calls");
        let days: i64 = days.first().map_or(30, |d| d.parse().expect("DAYS: a number of days"));
        let now = voice_otp::time::now_ms();
        let filled = fill::fill(std::path::Path::new(db), n, now - days * fill::DAY_MS, now);
        print("history_fill_calls", filled.calls);
        print("history_fill_deliveries", filled.deliveries);
        print("history_fill_s", format!("{:.1}", filled.seconds));
        print("history_counts_checked_s", format!("{:.1}", filled.check_seconds));
        return;
    }
    let _ = std::fs::remove_dir_all(args.work());
    std::fs::create_dir_all(args.work()).expect("work folder");
    machine();
    if args.wants("auth") {
        auth_cache(&args).await;
    }
    if args.wants("http") {
        http_and_calls(&args).await;
    }
    if args.wants("agi") {
        match &args.python {
            Some(python) => agi_vs_panoramisk(&args, python).await,
            None => eprintln!("agi_vs_panoramisk skipped: no --python"),
        }
    }
    if args.wants("memory") {
        agi_memory(&args).await;
    }
    if args.wants("history") {
        let sizes = history::Sizes {
            posts: args.pick(2_000, 5_000),
            reads: args.pick(1_000, 3_000),
            lookups: args.pick(300, 1_000),
        };
        history::measure(args.daemon(), args.work(), &sizes).await;
    }
    if args.wants("scale") {
        match &args.postgres {
            Some(url) => scale::measure(args.daemon(), args.work(), url, args.pick(6_000, 15_000)).await,
            None => eprintln!("pg_vs_sqlite and scale_2_daemons_vs_1 skipped: no --postgres"),
        }
    }
    if args.wants("sandbox") {
        match &args.sandbox {
            Some(script) => {
                let o = sandbox::measure(args.daemon(), args.work(), script, args.pick(4, 6), args.pick(3, 5)).await;
                print("sandbox_calls_per_side", o.calls);
                print("sandbox_cpu_s_per_call_dialplan", format!("{:.4}", sandbox::mean(&o.dialplan_only)));
                print("sandbox_cpu_s_per_call_with_daemon", format!("{:.4}", sandbox::mean(&o.with_daemon)));
                print("sandbox_daemon_cpu_s_per_call", format!("{:.4}", sandbox::mean(&o.daemon_only)));
                print("sandbox_overhead", format!("{:.3}", o.ratio()));
            }
            None => eprintln!("sandbox_overhead skipped: no --sandbox"),
        }
    }
}

fn machine() {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim().to_owned()))
        .unwrap_or_default();
    print("machine_cores", std::thread::available_parallelism().map_or(0, |n| n.get()));
    print("machine_cpu", model);
}

/// Seed requests/s with bcrypt (cost 12) on every request, then with the
/// credential cache; same load, same scripted Asterisk (calls held).
async fn auth_cache(args: &Args) {
    let secs = Duration::from_secs(args.pick(5, 15));
    let mut rates = Vec::new();
    for (name, ttl) in [("nocache", 0), ("cache", 300)] {
        let (ami, _) = asterisk::start_ami(CallMode::Hold, Duration::ZERO).await;
        let dir = args.work().join(format!("auth-{name}"));
        let extra = format!("[auth]\nbcrypt_cost = 12\ncache_ttl_secs = {ttl}\n");
        let config = configure(args.daemon(), &dir, ami, 256, &extra);
        let voice_otp = Daemon::start(args.daemon(), &config);
        let out = http_load::run(voice_otp.http, seed_targets(), 16, Stop::After(secs), false).await;
        print(&format!("auth_{name}_accepted_per_s"), format!("{:.1}", out.accepted_per_s()));
        rates.push(out.accepted_per_s());
    }
    print("auth_cache_speedup", format!("{:.1}", rates[1] / rates[0]));
}

/// Seed requests end to end under a full simulated call load: each accepted
/// request is Originated, answered, read over FastAGI and hung up.
async fn http_and_calls(args: &Args) {
    let requests = args.pick(10_000, 50_000);
    let (ami, stats) = asterisk::start_ami(CallMode::Full, Duration::ZERO).await;
    let config = configure(args.daemon(), &args.work().join("http"), ami, 4096, "");
    let voice_otp = Daemon::start(args.daemon(), &config);
    // One request first, so the figures are the steady state and not the
    // single bcrypt verify (~0.2 s) the first requests of a user wait for.
    let warm = http_load::run(voice_otp.http, seed_targets(), 1, Stop::Requests(1), false).await;
    let cpu_before = procfs::cpu_seconds(voice_otp.pid());
    let start = Instant::now();
    let mut out = http_load::run(voice_otp.http, seed_targets(), 32, Stop::Requests(requests), false).await;
    print("http_requests", requests);
    print("http_accepted_per_s", format!("{:.0}", out.accepted_per_s()));
    print("http_p50_ms", format!("{:.2}", out.latency_ms(0.50)));
    print("http_p99_ms", format!("{:.2}", out.latency_ms(0.99)));
    let deadline = Instant::now() + Duration::from_secs(120);
    let ended = || stats.completed.load(Ordering::Relaxed) + stats.failed.load(Ordering::Relaxed);
    let expected = out.accepted + warm.accepted;
    while ended() < expected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let last = stats.last_hangup.lock().unwrap().unwrap_or(start);
    let completed = stats.completed.load(Ordering::Relaxed);
    print("calls_completed", completed);
    print("calls_failed", stats.failed.load(Ordering::Relaxed) + expected.saturating_sub(ended()));
    print("calls_per_s", format!("{:.0}", completed as f64 / (last - start).as_secs_f64()));
    // CPU time is what a shared machine cannot blur: the daemon's own cost.
    let cpu = procfs::cpu_seconds(voice_otp.pid()) - cpu_before;
    print("daemon_cpu_ms_per_call", format!("{:.3}", cpu * 1000.0 / completed.max(1) as f64));
}

/// Stores `n` calls through the seed API with a scripted Asterisk that
/// answers but never runs FastAGI; returns their ids.
async fn held_calls(voice_otp: &Daemon, n: u64) -> Vec<String> {
    let out = http_load::run(voice_otp.http, seed_targets(), 32, Stop::Requests(n), true).await;
    assert_eq!(out.call_ids.len() as u64, n, "the daemon refused some seed requests");
    out.call_ids
}

/// One FastAGI server under the AGI load: sessions/s and CPU per session
/// of the server and of the load generator, summed over its rounds.
#[derive(Default)]
struct AgiRun {
    done: u64,
    secs: f64,
    server_cpu: f64,
    generator_cpu: f64,
    switches: u64,
    flow: Vec<String>,
}

impl AgiRun {
    /// Runs the sessions of `ids` against the server and adds them up.
    async fn measure(
        &mut self,
        server_pid: u32,
        addr: std::net::SocketAddr,
        ids: Arc<Vec<(String, String)>>,
        concurrency: usize,
    ) {
        let server_before = procfs::cpu_seconds(server_pid);
        let generator_before = procfs::cpu_seconds(std::process::id());
        let switches_before = procfs::context_switches(server_pid);
        let (done, secs, flow) = asterisk::agi_load(addr, ids, concurrency, Duration::ZERO).await;
        self.switches += procfs::context_switches(server_pid) - switches_before;
        self.server_cpu += procfs::cpu_seconds(server_pid) - server_before;
        self.generator_cpu += procfs::cpu_seconds(std::process::id()) - generator_before;
        self.done += done;
        self.secs += secs;
        if self.flow.is_empty() {
            self.flow = flow;
        }
    }

    fn per_s(&self) -> f64 {
        self.done as f64 / self.secs
    }

    fn server_ms(&self) -> f64 {
        self.server_cpu * 1000.0 / self.done.max(1) as f64
    }

    fn print(&self, name: &str) {
        print(&format!("agi_{name}_sessions_per_s"), format!("{:.0}", self.per_s()));
        print(&format!("agi_{name}_completed"), self.done);
        print(&format!("agi_{name}_cpu_ms_per_session"), format!("{:.3}", self.server_ms()));
        let generator_ms = self.generator_cpu * 1000.0 / self.done.max(1) as f64;
        print(&format!("agi_{name}_generator_cpu_ms_per_session"), format!("{generator_ms:.3}"));
        let switches = self.switches as f64 / self.done.max(1) as f64;
        print(&format!("agi_{name}_context_switches_per_session"), format!("{switches:.1}"));
    }
}

/// A server process that prints `ready agi=ADDR` once listening; killed on drop.
struct AgiServer {
    child: std::process::Child,
    addr: std::net::SocketAddr,
}

impl AgiServer {
    fn start(what: &str, command: &mut std::process::Command, log: &std::path::Path) -> AgiServer {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .stderr(std::fs::File::create(log).expect("log"))
            .spawn()
            .unwrap_or_else(|e| panic!("start the {what}: {e}"));
        let mut line = String::new();
        let _ =
            std::io::BufRead::read_line(&mut std::io::BufReader::new(child.stdout.take().expect("stdout")), &mut line);
        match line.trim().strip_prefix("ready agi=").and_then(|a| a.parse().ok()) {
            Some(addr) => AgiServer { child, addr },
            None => {
                let _ = child.kill();
                panic!("the {what} did not start: {line:?} (see {})", log.display());
            }
        }
    }
}

impl Drop for AgiServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Rounds of the FastAGI comparison: ours, panoramisk, the floor, and
/// again, so a busy moment of the machine falls on all three.
const AGI_ROUNDS: usize = 3;

/// Sessions each server runs first, unmeasured (statements prepared,
/// buffers grown, the Python code warm).
const AGI_WARM_UP: usize = 50;

/// FastAGI OTP sessions/s: ours against the panoramisk reference, the same
/// stored calls, the same load generator, sessions and concurrency. The
/// floor server (see `floor.rs`) sends the same commands with no work at
/// all: its rate is the most any server can reach on this machine, so
/// `agi_floor_vs_panoramisk` bounds what `agi_vs_panoramisk` can be here.
/// The three take turns in [`AGI_ROUNDS`] rounds, each round on calls of
/// its own (a call is served once).
async fn agi_vs_panoramisk(args: &Args, python: &std::path::Path) {
    let sessions: u64 = args.agi_sessions.unwrap_or(args.pick(1_000, 3_000));
    let concurrency = args.agi_concurrency;
    let (ami, stats) = asterisk::start_ami(CallMode::Hold, Duration::ZERO).await;
    let config = configure(args.daemon(), &args.work().join("agi"), ami, 4096, "");
    let voice_otp = Daemon::start(args.daemon(), &config);
    let total = sessions + AGI_WARM_UP as u64;
    let ids = held_calls(&voice_otp, total).await;
    // Every call dialled (and so `answered` once its session starts) before
    // the clock starts: the measurement is of FastAGI, not of the dialler.
    while stats.originates.load(Ordering::Relaxed) < total {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Vec<(String, String)> = ids.into_iter().map(|id| (stats.token(&id), id)).map(|(t, id)| (id, t)).collect();
    let (warm, measured) = ids.split_at(AGI_WARM_UP);
    let warm = Arc::new(warm.to_vec());
    let per_round = measured.len().div_ceil(AGI_ROUNDS);
    let rounds: Vec<Arc<Vec<(String, String)>>> = measured.chunks(per_round).map(|c| Arc::new(c.to_vec())).collect();

    let dir = args.work().join("panoramisk");
    std::fs::create_dir_all(&dir).expect("panoramisk folder");
    let ids_file = dir.join("ids");
    let lines: Vec<String> = ids.iter().map(|(id, token)| format!("{id} {token}")).collect();
    std::fs::write(&ids_file, lines.join("\n")).expect("ids file");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("panoramisk_otp.py");
    let reference = AgiServer::start(
        "panoramisk reference",
        std::process::Command::new(python).arg(&script).arg(dir.join("reference.db")).arg(&ids_file),
        &dir.join("reference.log"),
    );

    // Ours first, so the floor can be given our flow's command lines.
    let mut warm_ours = AgiRun::default();
    warm_ours.measure(voice_otp.pid(), voice_otp.agi, warm.clone(), concurrency).await;
    let dir = args.work().join("floor");
    std::fs::create_dir_all(&dir).expect("floor folder");
    let commands = dir.join("commands");
    std::fs::write(&commands, warm_ours.flow.join("\n")).expect("floor commands");
    let me = std::env::current_exe().expect("own path");
    let floor_server = AgiServer::start(
        "floor server",
        std::process::Command::new(me).arg("--floor-server").arg(&commands),
        &dir.join("floor.log"),
    );
    AgiRun::default().measure(reference.child.id(), reference.addr, warm.clone(), concurrency).await;
    AgiRun::default().measure(floor_server.child.id(), floor_server.addr, warm, concurrency).await;

    // For a profiler to attach to (`perf record -p PID`).
    eprintln!("agi: measuring ours, pid {}, the floor, pid {}", voice_otp.pid(), floor_server.child.id());
    let (mut ours, mut panoramisk, mut floor) = (AgiRun::default(), AgiRun::default(), AgiRun::default());
    let (mut db_cpu, mut io) = (0.0, [0u64; 4]);
    for round in rounds {
        let db_before = procfs::thread_cpu_seconds(voice_otp.pid(), "voice-otp-db");
        let io_before = procfs::io_counters(voice_otp.pid());
        ours.measure(voice_otp.pid(), voice_otp.agi, round.clone(), concurrency).await;
        db_cpu += procfs::thread_cpu_seconds(voice_otp.pid(), "voice-otp-db") - db_before;
        let io_after = procfs::io_counters(voice_otp.pid());
        io.iter_mut().zip(io_after.iter().zip(io_before)).for_each(|(t, (a, b))| *t += a - b);
        panoramisk.measure(reference.child.id(), reference.addr, round.clone(), concurrency).await;
        floor.measure(floor_server.child.id(), floor_server.addr, round, concurrency).await;
    }
    drop((voice_otp, reference, floor_server));

    print("agi_sessions", sessions);
    print("agi_concurrency", concurrency);
    print("agi_rounds", AGI_ROUNDS);
    ours.print("ours");
    print("agi_ours_db_thread_cpu_ms_per_session", format!("{:.3}", db_cpu * 1000.0 / ours.done.max(1) as f64));
    // Everything the daemon wrote per session (/proc/PID/io): its command
    // lines to the socket (the same for any server), the database's WAL
    // frames and checkpoints, its log lines.
    let per = |x: u64| x as f64 / ours.done.max(1) as f64;
    print("agi_ours_write_calls_per_session", format!("{:.1}", per(io[1])));
    print("agi_ours_bytes_written_per_session", format!("{:.0}", per(io[3])));
    panoramisk.print("panoramisk");
    floor.print("floor");
    let same = !ours.flow.is_empty() && ours.flow == panoramisk.flow && ours.flow == floor.flow;
    print("agi_same_flow", if same { "yes" } else { "no" });
    if !same {
        eprintln!("flows differ:\n ours: {:?}\n reference: {:?}\n floor: {:?}", ours.flow, panoramisk.flow, floor.flow);
    }
    // Server CPU per session: what the load generator sharing the cores
    // cannot blur.
    print("agi_cpu_vs_panoramisk", format!("{:.1}", panoramisk.server_ms() / ours.server_ms()));
    print("agi_cpu_floor_vs_ours", format!("{:.2}", floor.server_ms() / ours.server_ms()));
    print("agi_floor_vs_panoramisk", format!("{:.1}", floor.per_s() / panoramisk.per_s()));
    print("agi_ours_vs_floor", format!("{:.2}", ours.per_s() / floor.per_s()));
    print("agi_vs_panoramisk", format!("{:.1}", ours.per_s() / panoramisk.per_s()));
}

/// Daemon RSS growth per concurrent FastAGI session, at 5,000 sessions each
/// waiting on its first command.
async fn agi_memory(args: &Args) {
    let sessions: usize = 5_000;
    let (ami, stats) = asterisk::start_ami(CallMode::Hold, Duration::ZERO).await;
    let config = configure(args.daemon(), &args.work().join("memory"), ami, sessions + 100, "");
    let voice_otp = Daemon::start(args.daemon(), &config);
    let ids = held_calls(&voice_otp, sessions as u64 + 100).await;
    while stats.originates.load(Ordering::Relaxed) < ids.len() as u64 {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<(String, String)> = ids.into_iter().map(|id| (stats.token(&id), id)).map(|(t, id)| (id, t)).collect();
    // Warm-up: a few sessions run to the end so every lazily built piece
    // (prepared statements, buffers) exists before the baseline.
    let warm: Vec<(String, String)> = ids[..100].to_vec();
    asterisk::agi_load(voice_otp.agi, Arc::new(warm), 10, Duration::ZERO).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = procfs::rss_bytes(voice_otp.pid());
    let mut open = Vec::with_capacity(sessions);
    let mut pending = tokio::task::JoinSet::new();
    for (id, token) in &ids[100..] {
        let (addr, id, token) = (voice_otp.agi, id.clone(), token.clone());
        pending.spawn(async move { asterisk::agi_hold(addr, &id, &token).await });
        while pending.len() >= 200 {
            if let Some(Ok(Ok(stream))) = pending.join_next().await {
                open.push(stream);
            }
        }
    }
    while let Some(done) = pending.join_next().await {
        if let Ok(Ok(stream)) = done {
            open.push(stream);
        }
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = procfs::rss_bytes(voice_otp.pid());
    print("agi_open_sessions", open.len());
    print("agi_rss_before_kib", before / 1024);
    print("agi_rss_after_kib", after / 1024);
    print("agi_bytes_per_session", after.saturating_sub(before) / open.len().max(1) as u64);
}
