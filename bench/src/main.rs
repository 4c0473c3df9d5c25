//! `voice-otp-bench`: measures the release `voice-otp` binary under load and
//! prints `name=value` lines (run it through `scripts/bench`).
//!
//! - [`asterisk`]: the load generator playing Asterisk over real TCP (AMI
//!   server, FastAGI client).
//! - [`http_load`]: seed-API clients with latencies.
//! - [`daemon`]: runs the real binary with its own config and users.
//! - [`sandbox`]: `sandbox_overhead` on the real sandbox Asterisk.
//! - [`procfs`]: RSS and CPU time of a process.
//!
//! Every comparison is measured within one run, one side right after the
//! other, so a busy machine slows both alike.

mod asterisk;
mod daemon;
mod floor;
mod http_load;
mod procfs;
mod sandbox;

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
    #[arg(long)]
    daemon: PathBuf,
    /// Folder for databases, configs and logs (emptied first).
    #[arg(long)]
    work: PathBuf,
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
    /// Measure only these (comma-separated: auth,http,agi,memory,sandbox).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

impl Args {
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
    let _ = std::fs::remove_dir_all(&args.work);
    std::fs::create_dir_all(&args.work).expect("work folder");
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
    if args.wants("sandbox") {
        match &args.sandbox {
            Some(script) => {
                let o = sandbox::measure(&args.daemon, &args.work, script, args.pick(4, 6), args.pick(3, 5)).await;
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
        let dir = args.work.join(format!("auth-{name}"));
        let extra = format!("[auth]\nbcrypt_cost = 12\ncache_ttl_secs = {ttl}\n");
        let config = configure(&args.daemon, &dir, ami, 256, &extra);
        let voice_otp = Daemon::start(&args.daemon, &config);
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
    let config = configure(&args.daemon, &args.work.join("http"), ami, 4096, "");
    let voice_otp = Daemon::start(&args.daemon, &config);
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
/// of the server and of the load generator.
struct AgiRun {
    done: u64,
    per_s: f64,
    server_ms: f64,
    generator_ms: f64,
    flow: Vec<String>,
}

impl AgiRun {
    async fn measure(
        server_pid: u32,
        addr: std::net::SocketAddr,
        ids: Arc<Vec<(String, String)>>,
        concurrency: usize,
    ) -> AgiRun {
        let server_before = procfs::cpu_seconds(server_pid);
        let generator_before = procfs::cpu_seconds(std::process::id());
        let (done, secs, flow) = asterisk::agi_load(addr, ids, concurrency, Duration::ZERO).await;
        let per_session = |cpu: f64| cpu * 1000.0 / done.max(1) as f64;
        AgiRun {
            done,
            per_s: done as f64 / secs,
            server_ms: per_session(procfs::cpu_seconds(server_pid) - server_before),
            generator_ms: per_session(procfs::cpu_seconds(std::process::id()) - generator_before),
            flow,
        }
    }

    fn print(&self, name: &str) {
        print(&format!("agi_{name}_sessions_per_s"), format!("{:.0}", self.per_s));
        print(&format!("agi_{name}_completed"), self.done);
        print(&format!("agi_{name}_cpu_ms_per_session"), format!("{:.3}", self.server_ms));
        print(&format!("agi_{name}_generator_cpu_ms_per_session"), format!("{:.3}", self.generator_ms));
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

/// FastAGI OTP sessions/s: ours against the panoramisk reference, the same
/// stored calls, the same load generator, sessions and concurrency. The
/// floor server (see `floor.rs`) sends the same commands with no work at
/// all: its rate is the most any server can reach on this machine, so
/// `agi_floor_vs_panoramisk` bounds what `agi_vs_panoramisk` can be here.
async fn agi_vs_panoramisk(args: &Args, python: &std::path::Path) {
    let sessions: u64 = args.pick(1_000, 3_000);
    let concurrency = args.agi_concurrency;
    let (ami, stats) = asterisk::start_ami(CallMode::Hold, Duration::ZERO).await;
    let config = configure(&args.daemon, &args.work.join("agi"), ami, 4096, "");
    let voice_otp = Daemon::start(&args.daemon, &config);
    let ids = held_calls(&voice_otp, sessions).await;
    // Every call dialled (and so `answered` once its session starts) before
    // the clock starts: the measurement is of FastAGI, not of the dialler.
    while stats.originates.load(Ordering::Relaxed) < sessions {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let ids: Arc<Vec<(String, String)>> =
        Arc::new(ids.into_iter().map(|id| (stats.token(&id), id)).map(|(t, id)| (id, t)).collect());
    let db_before = procfs::thread_cpu_seconds(voice_otp.pid(), "voice-otp-db");
    let ours = AgiRun::measure(voice_otp.pid(), voice_otp.agi, ids.clone(), concurrency).await;
    let db_ms =
        (procfs::thread_cpu_seconds(voice_otp.pid(), "voice-otp-db") - db_before) * 1000.0 / ours.done.max(1) as f64;
    drop(voice_otp);

    let dir = args.work.join("panoramisk");
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
    let panoramisk = AgiRun::measure(reference.child.id(), reference.addr, ids.clone(), concurrency).await;
    drop(reference);

    let dir = args.work.join("floor");
    std::fs::create_dir_all(&dir).expect("floor folder");
    let commands = dir.join("commands");
    std::fs::write(&commands, ours.flow.join("\n")).expect("floor commands");
    let me = std::env::current_exe().expect("own path");
    let floor_server = AgiServer::start(
        "floor server",
        std::process::Command::new(me)
            .arg("--floor-server")
            .arg(&commands)
            .arg("--daemon")
            .arg(&args.daemon)
            .arg("--work")
            .arg(&dir),
        &dir.join("floor.log"),
    );
    let floor = AgiRun::measure(floor_server.child.id(), floor_server.addr, ids, concurrency).await;
    drop(floor_server);

    print("agi_sessions", sessions);
    print("agi_concurrency", concurrency);
    ours.print("ours");
    print("agi_ours_db_thread_cpu_ms_per_session", format!("{db_ms:.3}"));
    panoramisk.print("panoramisk");
    floor.print("floor");
    let same = !ours.flow.is_empty() && ours.flow == panoramisk.flow && ours.flow == floor.flow;
    print("agi_same_flow", if same { "yes" } else { "no" });
    if !same {
        eprintln!("flows differ:\n ours: {:?}\n reference: {:?}\n floor: {:?}", ours.flow, panoramisk.flow, floor.flow);
    }
    // Server CPU per session: what the load generator sharing the cores
    // cannot blur.
    print("agi_cpu_vs_panoramisk", format!("{:.1}", panoramisk.server_ms / ours.server_ms));
    print("agi_floor_vs_panoramisk", format!("{:.1}", floor.per_s / panoramisk.per_s));
    print("agi_ours_vs_floor", format!("{:.2}", ours.per_s / floor.per_s));
    print("agi_vs_panoramisk", format!("{:.1}", ours.per_s / panoramisk.per_s));
}

/// Daemon RSS growth per concurrent FastAGI session, at 5,000 sessions each
/// waiting on its first command.
async fn agi_memory(args: &Args) {
    let sessions: usize = 5_000;
    let (ami, stats) = asterisk::start_ami(CallMode::Hold, Duration::ZERO).await;
    let config = configure(&args.daemon, &args.work.join("memory"), ami, sessions + 100, "");
    let voice_otp = Daemon::start(&args.daemon, &config);
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
