//! `sandbox_overhead`: what reading a code through voice-otp costs on the
//! real sandbox Asterisk, against Asterisk's dialplan reading the same code
//! the same way by itself.
//!
//! Both sides place the same number of calls to the sandbox phone, the same
//! number at a time, and read the code with the daemon's default pacing:
//! 1 s after answer, intro, each digit after 0.4 s, 0.6 s and "I repeat",
//! the code again, 0.6 s and goodbye. With voice-otp, the daemon (default
//! `[call]` settings) Originates into the `[voice-otp]` context and its
//! FastAGI session plays them; without it, the `voice-otp` AMI user
//! Originates the same channel into the sandbox's `[sandbox-read-code]`
//! context, whose `Wait()`s and `Playback()`s do the same with the code in
//! a channel variable. The one setting changed is `max_extra_readings = 0`:
//! the dialplan makes no "press 1 to hear it again" offer, so the daemon
//! must not either. CPU seconds come from /proc/<pid>/stat of Asterisk and
//! of the daemon.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::daemon::{self, Daemon};
use crate::procfs::cpu_seconds;

/// The code read in every call.
const CODE: &str = "482915";
/// A call must end within this long.
const CALL_LIMIT: Duration = Duration::from_secs(120);

/// What `scripts/sandbox status` said.
pub struct Sandbox {
    status: HashMap<String, String>,
}

impl Sandbox {
    /// Runs `script status`.
    pub fn status(script: &Path) -> Sandbox {
        let out = std::process::Command::new(script).arg("status").output().expect("scripts/sandbox status");
        let status = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        Sandbox { status }
    }

    fn get(&self, key: &str) -> &str {
        self.status.get(key).map(String::as_str).unwrap_or_else(|| panic!("sandbox status has no {key}"))
    }

    fn pid(&self) -> u32 {
        self.get("pid").parse().expect("sandbox pid")
    }

    fn ami(&self) -> SocketAddr {
        self.get("ami").parse().expect("sandbox ami address")
    }
}

/// The two sides' figures, per wave (one wave of each side, back to back).
pub struct Overhead {
    /// Asterisk + daemon CPU seconds per call, voice-otp reading.
    pub with_daemon: Vec<f64>,
    /// Of which the daemon's.
    pub daemon_only: Vec<f64>,
    /// Asterisk CPU seconds per call, dialplan reading.
    pub dialplan_only: Vec<f64>,
    /// Calls per side.
    pub calls: usize,
}

impl Overhead {
    /// The median of the waves' ratios. The sandbox is shared: other
    /// people's calls add Asterisk CPU to whichever wave they fall in, so
    /// each wave is compared with its neighbour and outliers are dropped.
    pub fn ratio(&self) -> f64 {
        let mut ratios: Vec<f64> = self.with_daemon.iter().zip(&self.dialplan_only).map(|(a, b)| a / b).collect();
        ratios.sort_by(f64::total_cmp);
        ratios.get(ratios.len() / 2).copied().unwrap_or(f64::NAN)
    }
}

/// The mean of some figures.
pub fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len() as f64
}

/// Measures `waves` rounds of `concurrency` calls on each side, alternating
/// sides so load from others on the machine hits both alike.
pub async fn measure(binary: &Path, work: &Path, script: &Path, concurrency: usize, waves: usize) -> Overhead {
    let sandbox = Sandbox::status(script);
    assert_eq!(sandbox.get("state"), "running", "the sandbox is not running (scripts/sandbox up)");
    let asterisk = sandbox.pid();
    let dir = work.join("sandbox");
    // Default pacing; no replay offer, as the dialplan baseline has none.
    let no_offer = "[call]\nmax_extra_readings = 0\n\n[auth]\nbcrypt_cost = 4\n";
    let config = daemon::configure(binary, &dir, sandbox.ami(), 256, no_offer);
    let voice_otp = Daemon::start(binary, &config);
    let mut ami = Ami::login(sandbox.ami(), sandbox.get("ami_username"), sandbox.get("ami_secret")).await;
    tokio::time::sleep(Duration::from_secs(1)).await; // the daemon logs in to AMI
    let mut numbers = Vec::new();
    let (mut daemon_side, mut daemon_cpu, mut dialplan_side) = (Vec::new(), Vec::new(), Vec::new());
    let per_call = |cpu: f64| cpu / concurrency as f64;
    for _ in 0..waves {
        let batch: Vec<String> = (0..concurrency).map(|_| number()).collect();
        let (a0, d0) = (cpu_seconds(asterisk), cpu_seconds(voice_otp.pid()));
        let ids: Vec<String> = {
            let mut ids = Vec::new();
            for n in &batch {
                let mut out = crate::http_load::run(
                    voice_otp.http,
                    std::sync::Arc::new({
                        let t = crate::http_load::get(&daemon::seed_target(n), "");
                        move |_| t.clone()
                    }),
                    1,
                    crate::http_load::Stop::Requests(1),
                    true,
                )
                .await;
                ids.append(&mut out.call_ids);
            }
            ids
        };
        assert_eq!(ids.len(), concurrency, "the daemon refused sandbox calls");
        wait_final(binary, &config, &ids).await;
        tokio::time::sleep(Duration::from_secs(1)).await; // callee legs and recordings close
        let (a1, d1) = (cpu_seconds(asterisk), cpu_seconds(voice_otp.pid()));
        daemon_side.push(per_call((a1 - a0) + (d1 - d0)));
        daemon_cpu.push(per_call(d1 - d0));
        numbers.extend(batch);

        let batch: Vec<String> = (0..concurrency).map(|_| number()).collect();
        let a0 = cpu_seconds(asterisk);
        ami.read_code_all(&batch).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        dialplan_side.push(per_call(cpu_seconds(asterisk) - a0));
        numbers.extend(batch);
    }
    drop(voice_otp);
    remove_recordings(Path::new(sandbox.get("recordings")), &numbers);
    Overhead {
        with_daemon: daemon_side,
        daemon_only: daemon_cpu,
        dialplan_only: dialplan_side,
        calls: concurrency * waves,
    }
}

/// A national number the sandbox phone answers and records (`_X.`), unique
/// enough not to meet another run's recordings; 0346, where the tests use
/// 0345, so the two never mix.
fn number() -> String {
    format!("0346{:07}", rand::random_range(0..10_000_000u32))
}

/// Polls `voice-otp call show` until every call is completed or failed.
async fn wait_final(binary: &Path, config: &Path, ids: &[String]) {
    let deadline = Instant::now() + CALL_LIMIT;
    let mut open: HashSet<&String> = ids.iter().collect();
    while !open.is_empty() {
        assert!(Instant::now() < deadline, "sandbox calls did not end within {CALL_LIMIT:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        open.retain(|id| {
            let out = std::process::Command::new(binary)
                .arg("--config")
                .arg(config)
                .args(["call", "show", id])
                .output()
                .expect("voice-otp call show");
            let text = String::from_utf8_lossy(&out.stdout);
            !(text.contains("status=completed") || text.contains("status=failed"))
        });
    }
}

fn remove_recordings(dir: &Path, numbers: &[String]) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let ours: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| {
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            numbers.iter().any(|n| name.starts_with(&format!("{n}-")))
        })
        .collect();
    for p in ours {
        let _ = std::fs::remove_file(p);
    }
}

/// A minimal AMI session as the `voice-otp` user (Originate into a context
/// needs only its `originate` right; `call` events show the Hangups).
struct Ami {
    lines: tokio::io::Lines<BufReader<tokio::net::tcp::OwnedReadHalf>>,
    write: tokio::net::tcp::OwnedWriteHalf,
}

impl Ami {
    async fn login(addr: SocketAddr, user: &str, secret: &str) -> Ami {
        let (read, write) = TcpStream::connect(addr).await.expect("connect to sandbox AMI").into_split();
        let mut ami = Ami { lines: BufReader::new(read).lines(), write };
        let _banner = ami.lines.next_line().await;
        ami.send(&format!(
            "Action: Login\r\nActionID: login\r\nUsername: {user}\r\nSecret: {secret}\r\nEvents: call\r\n\r\n"
        ))
        .await;
        let reply = ami.message().await;
        assert!(reply.get("Response").is_some_and(|r| r == "Success"), "sandbox AMI login as {user} failed: {reply:?}");
        ami
    }

    async fn send(&mut self, text: &str) {
        self.write.write_all(text.as_bytes()).await.expect("write to sandbox AMI");
    }

    async fn message(&mut self) -> HashMap<String, String> {
        let mut msg = HashMap::new();
        while let Some(line) = self.lines.next_line().await.expect("read sandbox AMI") {
            let line = line.trim_end_matches('\r');
            if line.is_empty() {
                if msg.is_empty() {
                    continue;
                }
                return msg;
            }
            if let Some((k, v)) = line.split_once(": ") {
                msg.entry(k.to_owned()).or_insert_with(|| v.to_owned());
            }
        }
        panic!("sandbox AMI closed");
    }

    /// Originates one call per number at once into `[sandbox-read-code]`,
    /// which reads [`CODE`] (a fixed bench code, so it may go in a channel
    /// variable; the daemon never puts real codes there), and waits for all
    /// their Hangup events.
    async fn read_code_all(&mut self, numbers: &[String]) {
        let mut open = HashSet::new();
        for (i, n) in numbers.iter().enumerate() {
            let id = format!("{:032x}", rand::random::<u128>());
            self.send(&format!(
                "Action: Originate\r\nActionID: bench-{i}\r\nChannel: PJSIP/{n}@carrier\r\n\
                 Context: sandbox-read-code\r\nExten: s\r\nPriority: 1\r\nVariable: CODE={CODE}\r\n\
                 Timeout: 30000\r\nChannelId: {id}\r\nAsync: true\r\n\r\n"
            ))
            .await;
            open.insert(id);
        }
        let deadline = Instant::now() + CALL_LIMIT;
        while !open.is_empty() {
            let msg = tokio::time::timeout_at(deadline, self.message()).await.expect("dialplan calls did not end");
            // Events of everyone's calls come by: only ours count.
            let Some(id) = msg.get("Uniqueid").filter(|id| open.contains(*id)) else {
                continue;
            };
            match msg.get("Event").map(String::as_str) {
                Some("Hangup") => {
                    open.remove(&id.clone());
                }
                Some("OriginateResponse") if msg.get("Response").is_some_and(|r| r != "Success") => {
                    panic!("sandbox refused a dialplan Originate: {msg:?}");
                }
                _ => {}
            }
        }
    }
}
