//! voice-otp: delivers one-time passwords by phone call through Asterisk.
//!
//! A request comes in over HTTP, is stored, and is dialled with an AMI
//! `Originate`; when the callee answers, Asterisk's dialplan connects to our
//! FastAGI server, which reads the code digit by digit.
//!
//! Where everything lives:
//! - [`cli`]: command line (`serve`, `user ...`, `call ...`); `main.rs` only calls it.
//! - [`config`]: the TOML configuration and its defaults.
//! - [`daemon`]: `serve` - starts and stops every part below.
//! - [`http`]: the HTTP API (`/outbound.cgi`, the seed API; `/v1/calls`, the
//!   JSON API; `/healthz`, `/metrics`; `/v1/openapi.json`, their OpenAPI document).
//! - [`webhook`]: signed status-change POSTs from an SQLite outbox.
//! - [`metrics`]: Prometheus metrics.
//! - [`auth`]: API users' credentials (bcrypt).
//! - [`limits`]: abuse limits - failed logins, request rates, per-number
//!   quotas, the toll-fraud guard.
//! - [`store`]: SQLite - users, calls, migrations.
//! - [`phone`]: destination numbers: validation, E.164, dial templates.
//! - [`verify`]: verifications - generated codes (derived, never stored),
//!   checks with attempts and expiry.
//! - [`call`]: the call domain - status, the dispatcher (its dialler: queue
//!   -> Originate, reconciliation, expiry; its event follower: AMI events ->
//!   status), the flows the callee hears (the code read, or typed on the
//!   keypad) and their FastAGI entry point.
//! - [`ami`]: Asterisk Manager Interface - codec, actions, typed events and
//!   answers, client connection.
//! - [`agi`]: FastAGI - codec, typed commands, session, playback (sounds
//!   and keys as typed outcomes), server.
//! - [`sounds`]: the sounds the configured languages need in Asterisk.
//! - [`id`]: random public ids (calls, verifications) and `hex_id!`.
//! - [`time`]: timestamps - Unix ms stored, RFC 3339 UTC shown (jiff).
//! - [`secret`]: [`secret::Secret`], the one type for secrets in memory
//!   (redacted in `Debug`, compared in constant time).

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod agi;
pub mod ami;
pub mod auth;
pub mod call;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod http;
pub mod id;
pub mod limits;
pub mod metrics;
pub mod phone;
pub mod secret;
pub mod sounds;
pub mod store;
pub mod time;
pub mod verify;
pub mod webhook;
