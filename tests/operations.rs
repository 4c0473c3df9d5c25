//! What an operator runs beside the daemon: the metrics the alert rules and
//! the dashboard need, counted by the real binary where calls end (with a
//! scripted AMI and a scripted FastAGI callee); the alert rules in
//! `contrib/prometheus/` checked and unit-tested by `promtool`; the Grafana
//! dashboard in `contrib/grafana/` valid, and every metric name it or the
//! rules use found in a live daemon's `/metrics`.

mod support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::daemon::Daemon;
use support::fake_agi::{self, Callee};
use support::fake_ami::{FakeScript, OriginateOutcome};
use support::harness::{FAST_FLOW, NO_NUMBER_QUOTAS, PASSWORD, Setup};
use support::http;

fn api(daemon: &Daemon, method: &str, target: &str, json: Option<&str>) -> http::Response {
    support::blocking(|| http::with_basic(daemon.http, method, target, "acme1", PASSWORD, json))
}

fn create(daemon: &Daemon) -> String {
    let resp = api(daemon, "POST", "/v1/calls", Some(r#"{"number":"03001234567","code":"482915"}"#));
    assert_eq!(resp.status, 202, "{}", resp.body);
    resp.json()["id"].as_str().expect("call id").to_owned()
}

fn scrape(daemon: &Daemon) -> String {
    let resp = support::blocking(|| http::get(daemon.http, "/metrics"));
    assert_eq!(resp.status, 200, "{}", resp.body);
    resp.body
}

/// The value of the sample line that starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with(' ')))
        .unwrap_or_else(|| panic!("no sample {series} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

/// Each way a call ends is counted once in `voice_otp_calls_ended_total`:
/// by the FastAGI session (completed), by the event follower (busy), by a
/// cancel over the API and by expiry in the queue; ring and talk times go
/// to their histograms, and the configured maximums are exported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_counted_where_they_end() {
    let (_home, fake, daemon) = Setup::new("ops-ended")
        .agi_keys("max_sessions = 7")
        .config(FAST_FLOW)
        .config(NO_NUMBER_QUOTAS)
        .config("[queue]\nmax_concurrent_calls = 3\nmax_queued = 50\n\n[dial]\ndeadline_secs = 3\n")
        .fake(FakeScript::outcome(OriginateOutcome::Silent))
        .await;
    let before = scrape(&daemon);
    for series in [
        "voice_otp_calls_ended_total{status=\"completed\",reason=\"\"}",
        "voice_otp_calls_ended_total{status=\"failed\",reason=\"system_error\"}",
        "voice_otp_calls_ended_total{status=\"expired\",reason=\"\"}",
        "voice_otp_call_talk_duration_seconds_count{mode=\"enter\"}",
    ] {
        assert_eq!(sample(&before, series), 0.0, "{series} there from the start");
    }
    assert_eq!(sample(&before, "voice_otp_agi_max_sessions"), 7.0);
    assert_eq!(sample(&before, "voice_otp_queue_max_concurrent_calls"), 3.0);
    assert_eq!(sample(&before, "voice_otp_queue_max_queued"), 50.0);

    // Rings, is answered, hears the code: the FastAGI session ends it.
    let answered = create(&daemon);
    let token = fake.wait_agi_token(&answered, Duration::from_secs(10)).await.expect("Originate with a token");
    fake.emit_ringing(&answered);
    daemon.wait_status(&answered, "ringing", Duration::from_secs(10));
    let commands = fake_agi::session(daemon.agi, &answered, Callee { token: Some(&token), ..Callee::default() }).await;
    assert!(commands.iter().any(|c| c.contains("digits/4")), "the code was read: {commands:?}");
    assert_eq!(daemon.wait_final(&answered, Duration::from_secs(10))["status"], "completed");

    // Busy: the Hangup's cause ends it in the event follower.
    let busy = create(&daemon);
    fake.wait_for_originate(&busy, Duration::from_secs(10)).await.expect("Originate");
    fake.emit_event(&[
        ("Event", "Hangup"),
        ("Privilege", "call,all"),
        ("Uniqueid", &busy),
        ("Cause", "17"),
        ("Cause-txt", "User busy"),
    ]);
    assert_eq!(daemon.wait_final(&busy, Duration::from_secs(10))["reason"], "busy");

    // Canceled over the API while dialling.
    let canceled = create(&daemon);
    fake.wait_for_originate(&canceled, Duration::from_secs(10)).await.expect("Originate");
    let resp = api(&daemon, "POST", &format!("/v1/calls/{canceled}/cancel"), None);
    assert_eq!(resp.status, 200, "{}", resp.body);

    // Asterisk gone: a call waits in the queue past its deadline. Created
    // only once the daemon has seen the link drop - before that it would
    // be dialled into the closing link and stay in flight, not queued.
    fake.stop();
    daemon.wait_servers(&[("default", "down")]);
    let expired = create(&daemon);
    daemon.wait_status(&expired, "expired", Duration::from_secs(10));

    // Counted once the expiry's write is back from the database, a moment
    // after the status shows.
    let expired_count = "voice_otp_calls_ended_total{status=\"expired\",reason=\"\"}";
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let after = loop {
        let text = scrape(&daemon);
        if sample(&text, expired_count) >= 1.0 || std::time::Instant::now() > deadline {
            break text;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    for (series, want) in [
        ("voice_otp_calls_ended_total{status=\"completed\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"failed\",reason=\"busy\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"canceled\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"expired\",reason=\"\"}", 1.0),
        ("voice_otp_calls_ended_total{status=\"failed\",reason=\"system_error\"}", 0.0),
        // Only the answered call rang (the others never reported Ringing).
        ("voice_otp_call_ring_duration_seconds_count{answered=\"true\"}", 1.0),
        ("voice_otp_call_ring_duration_seconds_count{answered=\"false\"}", 0.0),
        ("voice_otp_call_talk_duration_seconds_count{mode=\"read\"}", 1.0),
        ("voice_otp_call_talk_duration_seconds_count{mode=\"enter\"}", 0.0),
    ] {
        assert_eq!(sample(&after, series), want, "{series}\n{after}");
    }
    let total: f64 = after
        .lines()
        .filter(|l| l.starts_with("voice_otp_calls_ended_total{"))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum();
    assert_eq!(total, 4.0, "each call counted once:\n{after}");
}

fn contrib(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib").join(path)
}

/// Runs `promtool ARGS`; returns its output. Fails (never skips) without
/// promtool: `scripts/test` installs Debian's `prometheus` package for it.
fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool").args(args).output().unwrap_or_else(|e| {
        panic!("cannot run promtool ({e}): install Debian's prometheus package (scripts/test does)")
    });
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The alert rules, one (name, text of its block) per `- alert:`.
fn alert_blocks(rules: &str) -> Vec<(String, String)> {
    let mut blocks: Vec<(String, String)> = Vec::new();
    for line in rules.lines() {
        if let Some(name) = line.trim_start().strip_prefix("- alert: ") {
            blocks.push((name.trim().to_owned(), String::new()));
        } else if line.trim_start().starts_with("- record: ") {
            blocks.push((String::new(), String::new()));
        } else if let Some((_, text)) = blocks.last_mut() {
            text.push_str(line);
            text.push('\n');
        }
    }
    blocks.retain(|(name, _)| !name.is_empty());
    blocks
}

/// The rules are valid and lint-clean, every alert has a severity, a
/// summary and a description and is unit-tested, and the unit tests pass.
#[test]
fn the_alert_rules_pass_promtool() {
    let rules_path = contrib("prometheus/voice-otp.rules.yml");
    let tests_path = contrib("prometheus/voice-otp.rules.test.yml");
    let rules = std::fs::read_to_string(&rules_path).unwrap();
    let tests = std::fs::read_to_string(&tests_path).unwrap();
    let checked = promtool(&["check", "rules", "--lint=all", "--lint-fatal", rules_path.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
    let alerts = alert_blocks(&rules);
    assert!(alerts.len() >= 15, "{alerts:?}");
    for (name, block) in &alerts {
        assert!(name.starts_with("VoiceOtp"), "{name}");
        assert!(block.contains("severity: critical") || block.contains("severity: warning"), "{name} has no severity");
        for key in ["summary: ", "description: "] {
            assert!(block.contains(key), "{name} has no {key}");
        }
        assert!(tests.contains(&format!("alertname: {name}\n")), "{name} has no promtool unit test");
    }
    let tested = promtool(&["test", "rules", tests_path.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

/// Every PromQL expression of the dashboard's panels and variables, with
/// Grafana's variables filled in.
fn dashboard_queries(dash: &serde_json::Value) -> Vec<String> {
    fn walk(v: &serde_json::Value, out: &mut Vec<String>) {
        match v {
            serde_json::Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("expr" | "definition", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(dash, &mut out);
    out
}

/// The dashboard: Grafana's JSON model with a `DS_PROMETHEUS` input every
/// panel and query uses, unique panel ids, a place on the grid for each,
/// the panels the operator needs, and queries that are valid PromQL.
#[test]
fn the_dashboard_is_a_grafana_dashboard_of_valid_queries() {
    let text = std::fs::read_to_string(contrib("grafana/voice-otp.json")).unwrap();
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let input = &dash["__inputs"][0];
    assert_eq!((input["name"].as_str(), input["pluginId"].as_str()), (Some("DS_PROMETHEUS"), Some("prometheus")));
    assert!(dash["schemaVersion"].as_u64().unwrap() >= 38, "Grafana 10's schema");
    assert_eq!(dash["uid"], "voice-otp");
    let mut ids = BTreeSet::new();
    let mut titles = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        assert!(ids.insert(panel["id"].as_u64().unwrap()), "duplicate panel id: {panel}");
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "panel without gridPos.{key}: {}", panel["title"]);
        }
        titles.push(panel["title"].as_str().unwrap().to_owned());
        if panel["type"] == "row" {
            continue;
        }
        assert_eq!(panel["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for t in targets {
            assert_eq!(t["datasource"]["uid"], "${DS_PROMETHEUS}", "{}", panel["title"]);
            assert!(
                t["expr"].as_str().unwrap().contains("instance=~\"$instance\""),
                "{}: {}",
                panel["title"],
                t["expr"]
            );
        }
    }
    for variable in dash["templating"]["list"].as_array().unwrap() {
        assert_eq!(variable["datasource"]["uid"], "${DS_PROMETHEUS}");
    }
    for wanted in [
        "Calls ended by status and reason",
        "Answer rate",
        "Ring time",
        "Talk time",
        "Queue",
        "Calls in flight vs capacity",
        "Webhooks pending",
        "Webhook attempts by outcome",
        "FastAGI sessions",
        "AMI link",
        "Requests by route and status",
        "Latency by route",
    ] {
        assert!(titles.iter().any(|t| t == wanted), "no panel {wanted:?}: {titles:?}");
    }
    // promtool parses rule expressions: each query becomes a recording rule.
    let dir = support::daemon::TempDir::new("dashboard-promql");
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, query) in dashboard_queries(&dash).iter().enumerate() {
        let expr = match query.strip_prefix("label_values(").and_then(|q| q.strip_suffix(')')) {
            // label_values(SELECTOR, LABEL) is Grafana's, not PromQL: check the selector.
            Some(args) => args.rsplit_once(',').expect("label_values(selector, label)").0.to_owned(),
            None => query.clone(),
        };
        let expr = expr
            .replace("$__rate_interval", "1m")
            .replace("$__range", "6h")
            .replace("$job", ".*")
            .replace("$instance", ".*");
        // A JSON string is a YAML double-quoted scalar.
        rules.push_str(&format!(
            "      - record: dashboard:query{i}\n        expr: {}\n",
            serde_json::to_string(&expr).unwrap()
        ));
    }
    let path = dir.0.join("dashboard.rules.yml");
    std::fs::write(&path, rules).unwrap();
    let checked = promtool(&["check", "rules", path.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS"), "{checked}");
}

/// Metric names (`voice_otp_...`, not recording rules' `voice_otp:...`) in `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("voice_otp_") {
        let tail = &rest[at..];
        let end = tail.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(tail.len());
        names.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every metric the dashboard and the alert rules query is one the real
/// daemon exports: the names come from a live `/metrics`, after one call
/// and one request, not from a list kept by hand.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_dashboard_and_the_rules_use_is_exported() {
    let (_home, _fake, daemon) = Setup::new("ops-names").fake(FakeScript::outcome(OriginateOutcome::busy())).await;
    let id = daemon.seed_call("03001234567", "482915");
    daemon.wait_final(&id, Duration::from_secs(10));
    let health = support::blocking(|| http::get(daemon.http, "/healthz"));
    assert_eq!(health.status, 200, "{}", health.body);
    let exported: BTreeSet<String> = scrape(&daemon)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.split(['{', ' ']).next().unwrap().to_owned())
        .collect();
    assert!(exported.contains("voice_otp_calls_ended_total"), "{exported:?}");
    // The dashboard's queries must name samples exactly as exported.
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(contrib("grafana/voice-otp.json")).unwrap()).unwrap();
    let queried = metric_names(&dashboard_queries(&dash).join("\n"));
    assert!(queried.len() >= 15, "{queried:?}");
    let unknown: Vec<&String> = queried.difference(&exported).collect();
    assert!(unknown.is_empty(), "the dashboard queries metrics the daemon does not export: {unknown:?}\n{exported:?}");
    // Everything else either file names (rule expressions, descriptions)
    // is a sample, or a histogram named by its family.
    for file in ["grafana/voice-otp.json", "prometheus/voice-otp.rules.yml"] {
        let named = metric_names(&std::fs::read_to_string(contrib(file)).unwrap());
        let unknown: Vec<&String> =
            named.iter().filter(|n| !exported.contains(*n) && !exported.contains(&format!("{n}_bucket"))).collect();
        assert!(unknown.is_empty(), "{file} names metrics the daemon does not export: {unknown:?}\n{exported:?}");
    }
}
