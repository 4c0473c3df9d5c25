//! The Debian package as an admin meets it: `scripts/package` builds it, and
//! dpkg installs it into a fresh copy of a clean Debian 12 (minbase) tree,
//! where it is looked at, used as the `voice-otp` user (the CLI, and the
//! daemon with the shipped config and no Asterisk), reinstalled over an
//! edited config, removed and purged.
//!
//! Needs root (debootstrap, chroot, unshare) and, the first time, Debian's
//! mirror: the clean tree is built once into
//! `/var/cache/voice-otp-package-test/bookworm` (`VOICE_OTP_PACKAGE_CACHE` to
//! move it, `VOICE_OTP_PACKAGE_MIRROR` for another mirror) and never changed;
//! each run works on its own copy, deleted at the end.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use voice_otp::call::flow::sounds_needed;
use voice_otp::config::Config;

const SUITE: &str = "bookworm";
const USER: &str = "voice-otp";
const CONF: &str = "/etc/voice-otp.toml";
const STATE: &str = "/var/lib/voice-otp";
const DATABASE: &str = "/var/lib/voice-otp/voice-otp.db";
const UNIT: &str = "/usr/lib/systemd/system/voice-otp.service";
const SOUNDS: &str = "/usr/share/asterisk/sounds";
const DOC: &str = "/usr/share/doc/voice-otp";
/// PATH inside the chroot: the host's may name folders it does not have.
const CHROOT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn describe(cmd: &Command) -> String {
    let mut words = vec![cmd.get_program().to_string_lossy().into_owned()];
    words.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    words.join(" ")
}

/// Runs `cmd` to its end with no stdin; panics only if it cannot start.
fn output(cmd: &mut Command) -> Output {
    cmd.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)))
}

/// Runs `cmd`, which must succeed; returns its stdout.
fn ok(cmd: &mut Command) -> String {
    let out = output(cmd);
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}\n{}",
        describe(cmd),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `scripts/package`; the path of the .deb it made (its last stdout line).
fn build_package() -> PathBuf {
    let out = ok(Command::new(repo().join("scripts/package")).current_dir(repo()));
    let deb = PathBuf::from(out.lines().last().expect("scripts/package printed the .deb's path"));
    assert!(deb.is_file(), "{} is not a file", deb.display());
    deb
}

fn deb_field(deb: &Path, field: &str) -> String {
    ok(Command::new("dpkg-deb").arg("--field").arg(deb).arg(field)).trim().to_owned()
}

/// A fresh copy of the clean Debian tree; deleted on drop.
struct Chroot {
    root: PathBuf,
}

impl Chroot {
    /// Copies the cached clean tree, building it first if there is none.
    /// The cache's lock is held while building and copying, so parallel
    /// runs neither build twice nor copy a half-built tree.
    fn fresh() -> Chroot {
        let cache = std::env::var_os("VOICE_OTP_PACKAGE_CACHE")
            .map_or("/var/cache/voice-otp-package-test".into(), PathBuf::from);
        std::fs::create_dir_all(&cache).expect("create the cache folder");
        let lock = File::create(cache.join("lock")).expect("open the cache's lock");
        lock.lock().expect("lock the cache");
        let clean = cache.join(SUITE);
        if !clean.join("usr/bin/dpkg").is_file() {
            assert!(!clean.exists(), "{} exists but has no usr/bin/dpkg: remove it to rebuild", clean.display());
            let partial = cache.join(format!("{SUITE}.partial"));
            let _ = std::fs::remove_dir_all(&partial);
            let log_path = cache.join("debootstrap.log");
            let log = File::create(&log_path).expect("create debootstrap.log");
            let mut debootstrap = Command::new("debootstrap");
            debootstrap.arg("--variant=minbase").arg(SUITE).arg(&partial);
            if let Some(mirror) = std::env::var_os("VOICE_OTP_PACKAGE_MIRROR") {
                debootstrap.arg(mirror);
            }
            let status = debootstrap
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .status()
                .expect("run debootstrap (scripts/test installs it)");
            let log_text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = log_text.lines().rev().take(30).collect();
            assert!(status.success(), "debootstrap failed; {}:\n{}", log_path.display(), tail.join("\n"));
            // Renamed into place only once complete: an interrupted build is
            // never taken for a clean tree.
            std::fs::rename(&partial, &clean).expect("move the finished tree into place");
        }
        // Copies left by runs that were killed (no Drop ran) would pile up.
        for entry in std::fs::read_dir(&cache).unwrap().map(Result::unwrap) {
            let name = entry.file_name().to_string_lossy().into_owned();
            if let Some(pid) = name.strip_prefix("run-")
                && !Path::new("/proc").join(pid).exists()
            {
                drop(Chroot { root: entry.path() });
            }
        }
        let root = cache.join(format!("run-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        ok(Command::new("cp").arg("-a").arg("--reflink=auto").arg(&clean).arg(&root));
        Chroot { root }
    }

    /// The host path of `path` inside the chroot.
    fn path(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// `args` run as root inside the chroot, with a clean environment.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("chroot");
        cmd.arg(&self.root).args(["env", "-i", CHROOT_PATH, "LC_ALL=C", "DEBIAN_FRONTEND=noninteractive"]).args(args);
        cmd
    }

    /// `args` run inside the chroot as the `voice-otp` user and group, the
    /// name looked up in the chroot's own passwd.
    fn as_user(&self, args: &[&str]) -> Command {
        let mut all = vec!["setpriv", "--reuid", USER, "--regid", USER, "--init-groups", "--"];
        all.extend(args);
        self.cmd(&all)
    }

    /// The fields of `name`'s line in the chroot's `file` (passwd, group).
    fn entry(&self, file: &str, name: &str) -> Option<Vec<String>> {
        let text = std::fs::read_to_string(self.path(file)).expect("read the chroot's account file");
        text.lines().map(|l| l.split(':').map(str::to_owned).collect::<Vec<_>>()).find(|fields| fields[0] == name)
    }

    /// dpkg's status of voice-otp (`install ok installed`, ...), empty when
    /// dpkg knows nothing of it.
    fn status(&self) -> String {
        let out = output(&mut self.cmd(&["dpkg-query", "--show", "--showformat=${Status}", "voice-otp"]));
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// `dpkg -i`, then `apt-get -f install` from Debian's mirror if dpkg
    /// left it waiting for dependencies the clean tree lacks.
    fn install(&self, deb_in_chroot: &str) {
        let out = output(&mut self.cmd(&["dpkg", "-i", deb_in_chroot]));
        if !out.status.success() {
            let log = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            assert!(
                log.contains("dependency problems"),
                "dpkg -i failed ({}), and not for dependencies:\n{log}",
                out.status
            );
            std::fs::copy("/etc/resolv.conf", self.path("/etc/resolv.conf")).expect("copy resolv.conf");
            ok(&mut self.cmd(&["apt-get", "update"]));
            ok(&mut self.cmd(&["apt-get", "--fix-broken", "--yes", "--no-install-recommends", "install"]));
        }
        assert_eq!(self.status(), "install ok installed");
    }
}

impl Drop for Chroot {
    fn drop(&mut self) {
        // Nothing is mounted under it, so deleting it cannot reach the host;
        // if something is (a run gone wrong), leave it for a person to see.
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let root = self.root.to_string_lossy();
        if mounts.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(&*root))) {
            eprintln!("package test: {root} has mounts under it; not deleted");
            return;
        }
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

/// Every entry under `dir` (folders too, symlinks not followed), as paths
/// relative to it, sorted.
fn entries_under(dir: &Path) -> Vec<(PathBuf, std::fs::FileType)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("read {}: {e}", d.display())) {
            let entry = entry.unwrap();
            let kind = entry.file_type().unwrap();
            if kind.is_dir() {
                stack.push(entry.path());
            }
            found.push((entry.path().strip_prefix(dir).unwrap().to_owned(), kind));
        }
    }
    found.sort_by(|a, b| a.0.cmp(&b.0));
    found
}

/// Every regular file under `dir`, as paths relative to it.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    entries_under(dir).into_iter().filter(|(_, kind)| kind.is_file()).map(|(path, _)| path).collect()
}

/// What the package must install, each with the repo file it must equal
/// (None: made at build time, checked on its own).
fn expected_files() -> Vec<(String, Option<PathBuf>)> {
    let mut files = vec![
        ("/usr/bin/voice-otp".to_owned(), None),
        (CONF.to_owned(), None),
        (UNIT.to_owned(), None),
        (format!("{DOC}/copyright"), None),
        (format!("{DOC}/changelog.gz"), None),
        (format!("{DOC}/README.md"), Some(repo().join("README.md"))),
        (format!("{DOC}/sounds/README.md"), Some(repo().join("sounds/README.md"))),
        (format!("{DOC}/examples/README.md"), Some(repo().join("asterisk-conf/README.md"))),
    ];
    for entry in std::fs::read_dir(repo().join("asterisk-conf")).unwrap().map(Result::unwrap) {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().unwrap().is_file() && name.ends_with(".conf") {
            files.push((format!("{DOC}/examples/{name}"), Some(entry.path())));
        }
    }
    // sounds/<language>/<folder>/<file>, as cargo-deb's glob takes them.
    for rel in files_under(&repo().join("sounds")) {
        if rel.components().count() == 3 {
            files.push((format!("{SOUNDS}/{}", rel.display()), Some(repo().join("sounds").join(&rel))));
        }
    }
    files
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

fn owner(path: &Path) -> (u32, u32) {
    let meta = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (meta.uid(), meta.gid())
}

/// The non-comment lines of a systemd unit.
fn unit_settings(text: &str) -> Vec<String> {
    text.lines().filter(|l| !l.starts_with('#')).map(str::to_owned).collect()
}

/// A running `voice-otp serve` and the lines it prints.
struct Daemon {
    child: Child,
    stdout: mpsc::Receiver<String>,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
}

impl Daemon {
    fn spawn(mut cmd: Command) -> Daemon {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(&cmd)));
        let (tx, stdout) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let (sink, err) = (stderr.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Daemon { child, stdout, stderr }
    }

    fn logs(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the daemon did not exit within {timeout:?}:\n{}", self.logs());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The installed daemon, as the `voice-otp` user with the shipped config
/// untouched, in a network namespace of its own (only loopback, no Asterisk,
/// none of the host's ports taken): it must start, serve, and say in
/// `/healthz` that only AMI is down - which is why postinst may start it.
fn serve_without_asterisk(chroot: &Chroot) {
    let mut cmd = Command::new("unshare");
    let inner = chroot.as_user(&["voice-otp", "--config", CONF, "serve"]);
    // unshare, sh, chroot, env and setpriv each exec the next: the child's
    // pid is the daemon's, and its namespace is the one to query.
    cmd.args(["--net", "--", "sh", "-c", "ip link set lo up && exec \"$@\"", "sh"])
        .arg(inner.get_program())
        .args(inner.get_args());
    let mut daemon = Daemon::spawn(cmd);
    let ready = match daemon.stdout.recv_timeout(Duration::from_secs(30)) {
        Ok(line) => line,
        Err(_) => panic!("no ready line from the installed daemon:\n{}", daemon.logs()),
    };
    assert_eq!(ready, "ready http=127.0.0.1:8080 agi=127.0.0.1:4573", "{}", daemon.logs());

    let pid = daemon.child.id().to_string();
    let out = ok(Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["curl", "--silent", "--max-time", "10", "--write-out", "\n%{http_code}"])
        .arg("http://127.0.0.1:8080/healthz"));
    let (body, status) = out.rsplit_once('\n').expect("curl printed the status");
    assert_eq!(status, "503", "{body}\n{}", daemon.logs());
    let health: serde_json::Value = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert_eq!(health["down"], serde_json::json!(["ami"]), "{body}");
    assert_eq!(health["checks"]["database"], "up", "{body}");
    assert_eq!(health["checks"]["fastagi"], "up", "{body}");

    ok(Command::new("kill").args(["-TERM", &pid]));
    let status = daemon.wait_exit(Duration::from_secs(40));
    assert!(status.success(), "the daemon exited with {status} after SIGTERM:\n{}", daemon.logs());
}

/// The release build scripts/package made (run from this test, with the
/// variables cargo sets for it) is the one a build from a shell finds fresh,
/// as scripts/bench's is: neither rebuilds the other's.
fn assert_release_build_is_shared() {
    let mut shell = Command::new("cargo");
    shell.env_clear().current_dir(repo()).args(["build", "--release", "--locked", "-p", "voice-otp"]);
    for keep in ["PATH", "HOME", "CARGO_HOME", "RUSTUP_HOME"] {
        if let Some(value) = std::env::var_os(keep) {
            shell.env(keep, value);
        }
    }
    let out = output(&mut shell);
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(!said.contains("Compiling"), "a shell's release build redid scripts/package's:\n{said}");
}

#[test]
fn the_package_installs_runs_as_its_user_and_purges_in_a_clean_debian_12() {
    let deb = build_package();
    assert_release_build_is_shared();
    let version = deb_field(&deb, "Version");
    let arch = deb_field(&deb, "Architecture");
    assert_eq!(deb_field(&deb, "Package"), "voice-otp");
    // No Debian revision (Cargo.toml's `revision = ""`): the package carries
    // the crate's version, exactly what `--version` prints.
    assert_eq!(version, env!("CARGO_PKG_VERSION"));
    assert_eq!(deb, repo().join(format!("target/debian/voice-otp_{version}_{arch}.deb")));
    let depends = deb_field(&deb, "Depends");
    assert!(depends.contains("libc6") && depends.contains("passwd"), "Depends: {depends}");
    assert!(deb_field(&deb, "Suggests").contains("asterisk"));
    assert!(deb_field(&deb, "Recommends").contains("asterisk-core-sounds-en-gsm"));
    assert_eq!(ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("conffiles")).trim(), CONF);
    // The chroot has no systemd, so what postinst does for it is read here:
    // enable and start come once, after the user and its folder are made.
    let postinst = ok(Command::new("dpkg-deb").arg("--info").arg(&deb).arg("postinst"));
    let start = postinst.find("deb-systemd-invoke $_dh_action voice-otp.service").expect("postinst starts the unit");
    assert_eq!(postinst.matches("deb-systemd-invoke").count(), 1, "{postinst}");
    assert_eq!(postinst.matches("deb-systemd-helper enable voice-otp.service").count(), 1, "{postinst}");
    assert!(postinst.find("useradd").is_some_and(|at| at < start), "the user is made before the start:\n{postinst}");
    assert!(postinst.find("install -d").is_some_and(|at| at < start), "{postinst}");

    let chroot = Chroot::fresh();
    let deb_in_chroot = format!("/tmp/{}", deb.file_name().unwrap().to_string_lossy());
    std::fs::copy(&deb, chroot.path(&deb_in_chroot)).expect("copy the .deb into the chroot");
    assert_eq!(chroot.status(), "", "the clean tree already knows voice-otp");
    chroot.install(&deb_in_chroot);

    // Every file where it belongs, and nothing else.
    let expected = expected_files();
    let listed: BTreeSet<String> = ok(&mut chroot.cmd(&["dpkg", "--listfiles", "voice-otp"]))
        .lines()
        .filter(|p| chroot.path(p).symlink_metadata().is_ok_and(|m| m.is_file()))
        .map(str::to_owned)
        .collect();
    let wanted: BTreeSet<String> = expected.iter().map(|(p, _)| p.clone()).collect();
    assert_eq!(listed, wanted, "the package's files");
    for (path, source) in &expected {
        if let Some(source) = source {
            assert!(
                std::fs::read(chroot.path(path)).unwrap() == std::fs::read(source).unwrap(),
                "{path} differs from {source:?}"
            );
        }
    }
    assert_eq!(mode(&chroot.path("/usr/bin/voice-otp")), 0o755);
    let changelog = ok(Command::new("gzip").arg("-dc").arg(chroot.path(&format!("{DOC}/changelog.gz"))));
    assert_eq!(changelog, std::fs::read_to_string(repo().join("packaging/debian/changelog")).unwrap());
    assert!(changelog.starts_with(&format!("voice-otp ({version}) ")), "{changelog}");

    // The unit: contrib's, started from /usr/bin.
    let unit = std::fs::read_to_string(chroot.path(UNIT)).unwrap();
    let contrib = std::fs::read_to_string(repo().join("contrib/voice-otp.service")).unwrap();
    let want: Vec<String> = unit_settings(&contrib)
        .into_iter()
        .map(|l| l.replace("ExecStart=/usr/local/bin/voice-otp ", "ExecStart=/usr/bin/voice-otp "))
        .collect();
    assert!(want.iter().any(|l| l == "ExecStart=/usr/bin/voice-otp --config /etc/voice-otp.toml serve"), "{contrib}");
    assert_eq!(unit_settings(&unit), want, "{unit}");
    // systemd's own check, on the host, of the unit as installed (ExecStart
    // pointed at the chroot's binary, which it requires to exist).
    let check = chroot.path("/tmp/unit-check/voice-otp.service");
    std::fs::create_dir_all(check.parent().unwrap()).unwrap();
    let host_binary = format!("ExecStart={} ", chroot.path("/usr/bin/voice-otp").display());
    std::fs::write(&check, unit.replace("ExecStart=/usr/bin/voice-otp ", &host_binary)).unwrap();
    let verify = output(Command::new("systemd-analyze").arg("verify").arg(&check));
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(verify.status.success() && said.trim().is_empty(), "systemd-analyze verify: {said}");
    // Enabled, as Debian's daemons are (the chroot runs no systemd to start it).
    let wants = chroot.path("/etc/systemd/system/multi-user.target.wants/voice-otp.service");
    assert!(wants.symlink_metadata().is_ok(), "postinst enabled the unit");

    // The conffile: every default, but the database in the state folder.
    let text = std::fs::read_to_string(chroot.path(CONF)).unwrap();
    let mut config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{CONF}: {e}"));
    assert_eq!(config.database.path, Path::new(DATABASE));
    config.database.path = Config::default().database.path;
    // The example spells the single-server form out; the defaults leave it unset.
    assert_eq!(
        format!("{:?}", config.canonical()),
        format!("{:?}", Config::default().canonical()),
        "{CONF} otherwise the defaults"
    );
    assert_eq!(config.servers()[0].secret, Config::default().servers()[0].secret);

    // The system user, its folder, and who reads the config.
    let user = chroot.entry("/etc/passwd", USER).expect("the voice-otp user exists");
    let group = chroot.entry("/etc/group", USER).expect("the voice-otp group exists");
    let (uid, gid): (u32, u32) = (user[2].parse().unwrap(), group[2].parse().unwrap());
    assert!(uid < 1000, "a system uid: {user:?}");
    assert_eq!(user[3], group[2], "its primary group is voice-otp: {user:?}");
    assert_eq!((user[5].as_str(), user[6].as_str()), (STATE, "/usr/sbin/nologin"), "{user:?}");
    assert!(chroot.path(STATE).is_dir());
    assert_eq!((owner(&chroot.path(STATE)), mode(&chroot.path(STATE))), ((uid, gid), 0o700), "{STATE}");
    assert_eq!((owner(&chroot.path(CONF)), mode(&chroot.path(CONF))), ((0, gid), 0o640), "{CONF}");

    // --version: what the package carries.
    let printed = ok(&mut chroot.cmd(&["voice-otp", "--version"]));
    assert_eq!(printed, format!("voice-otp {version}\n"));

    // sounds check against what the package put in Asterisk's folder: every
    // prompt and Urdu digit is ours and found; only the English digits, which
    // are Asterisk's core sounds (not installed here), are missing.
    let out = output(&mut chroot.as_user(&["voice-otp", "--config", CONF, "sounds", "check", "--dir", SOUNDS]));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!out.status.success(), "the English digits are missing: {stdout}");
    let languages = Config::default().call.languages;
    let needed = languages.len() * sounds_needed().len();
    let mut missing = BTreeSet::new();
    let mut found = 0;
    for line in stdout.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["ok", _, _, path] => {
                assert!(listed.contains(*path), "{path} is not one of the package's files");
                found += 1;
            }
            ["MISSING", language, name, _] => {
                missing.insert(format!("{language} {name}"));
            }
            _ => panic!("unexpected line from sounds check: {line}"),
        }
    }
    let core_digits: BTreeSet<String> = (0..=9).map(|d| format!("en digits/{d}")).collect();
    assert_eq!(missing, core_digits, "{stdout}");
    assert_eq!(found + missing.len(), needed, "{stdout}");
    assert!(stderr.contains(&format!("10 of {needed} sounds missing in {SOUNDS}")), "{stderr}");

    // The CLI as the daemon's user, with the shipped config: the database
    // lands in the state folder, the user's own.
    let mut add = chroot.as_user(&["voice-otp", "--config", CONF, "user", "add", "acme1", "--password-stdin"]);
    let mut child = add.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"s3cret-password\n").unwrap();
    let added = child.wait_with_output().unwrap();
    assert!(added.status.success(), "user add: {}", String::from_utf8_lossy(&added.stderr));
    assert!(String::from_utf8_lossy(&added.stdout).contains("webhook_secret="));
    let users = || ok(&mut chroot.as_user(&["voice-otp", "--config", CONF, "user", "list"]));
    assert!(users().lines().any(|l| l.split_whitespace().next() == Some("acme1")), "{}", users());
    assert_eq!((owner(&chroot.path(DATABASE)), mode(&chroot.path(DATABASE))), ((uid, gid), 0o600));

    serve_without_asterisk(&chroot);

    // An upgrade (the same package again): the admin's edit of the conffile,
    // the database and the modes all stay, with no question asked.
    let edited = text.replace("\ndays = 30\n", "\ndays = 7\n");
    assert_ne!(edited, text, "[retention] days = 30 is in the conffile");
    std::fs::write(chroot.path(CONF), &edited).unwrap();
    chroot.install(&deb_in_chroot);
    assert_eq!(std::fs::read_to_string(chroot.path(CONF)).unwrap(), edited);
    assert_eq!((owner(&chroot.path(CONF)), mode(&chroot.path(CONF))), ((0, gid), 0o640));
    assert!(users().contains("acme1"));

    // remove: the program goes, the config and the data stay.
    ok(&mut chroot.cmd(&["dpkg", "--remove", "voice-otp"]));
    assert_eq!(chroot.status(), "deinstall ok config-files");
    assert!(!chroot.path("/usr/bin/voice-otp").exists() && !chroot.path(UNIT).exists());
    assert!(!chroot.path(&format!("{SOUNDS}/en/voice-otp")).exists());
    assert!(chroot.path(CONF).is_file() && chroot.path(DATABASE).is_file());
    let mask = chroot.path("/etc/systemd/system/voice-otp.service");
    assert_eq!(std::fs::read_link(&mask).ok(), Some(PathBuf::from("/dev/null")), "masked until purge");

    // purge: the config, the data and the stat override go too; the system
    // user stays (as Debian keeps system users), owning nothing.
    ok(&mut chroot.cmd(&["dpkg", "--purge", "voice-otp"]));
    assert_eq!(chroot.status(), "", "dpkg still knows voice-otp after purge");
    // (/etc/systemd/system/voice-otp.service: the mask made on remove.)
    for gone in ["/usr/bin/voice-otp", CONF, UNIT, STATE, DOC, "/etc/systemd/system/voice-otp.service"] {
        assert!(!chroot.path(gone).exists(), "{gone} is left after purge");
    }
    for (path, _) in &expected {
        assert!(!chroot.path(path).exists(), "{path} is left after purge");
    }
    assert!(wants.symlink_metadata().is_err(), "the unit is still enabled after purge");
    let overrides = output(&mut chroot.cmd(&["dpkg-statoverride", "--list", CONF]));
    assert!(overrides.stdout.is_empty(), "{}", String::from_utf8_lossy(&overrides.stdout));
    assert!(chroot.entry("/etc/passwd", USER).is_some(), "the system user is kept on purge");
    let owned: Vec<PathBuf> = entries_under(&chroot.root)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|p| chroot.root.join(p).symlink_metadata().is_ok_and(|m| m.uid() == uid || m.gid() == gid))
        .collect();
    assert!(owned.is_empty(), "files of the voice-otp user left after purge: {owned:?}");
}
