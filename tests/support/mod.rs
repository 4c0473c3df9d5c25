//! Shared helpers for voice-otp's integration tests, included by each test
//! file with `mod support;`.
//!
//! - [`harness`]: the one way to set up a daemon for a test - temp dir,
//!   config, API users - against the sandbox, a fake AMI or any AMI address.
//! - [`daemon`]: the real `voice-otp` process: seed calls, call fields,
//!   waiting for a call's final status.
//! - [`http`]: a raw HTTP/1.1 client that can send malformed requests.
//! - [`sandbox`]: the sandbox Asterisk (scripts/sandbox), its status, and the
//!   evidence of one call in it: its recording, its lines in Asterisk's log.
//! - [`wav`]: read the sandbox phone's recordings and find the speech in them.
//! - [`fake_ami`]: a scripted Asterisk Manager Interface server over real TCP.
//! - [`fake_agi`]: a scripted FastAGI client playing an answered channel.
//! - [`webhook_receiver`]: takes voice-otp's webhooks and checks their signatures.
//! - [`postgres`]: a fresh database on the test PostgreSQL, for daemons run there.
//! - [`relay`]: a TCP relay to a daemon's FastAGI port, its address known first.
//!
//! Every integration test file is its own crate and uses only part of this,
//! hence the blanket `dead_code` allowance. The self-tests of `wav` and
//! `fake_ami` live in `*_tests.rs` and run once, as the `support` test target
//! (`tests/support/main.rs`), not in every crate that includes this module.
#![allow(dead_code)]

pub mod daemon;
pub mod fake_agi;
pub mod fake_ami;
pub mod harness;
pub mod http;
pub mod postgres;
pub mod relay;
pub mod sandbox;
pub mod wav;
pub mod webhook_receiver;

/// Runs blocking test code (a child process, a socket, a poll that sleeps)
/// from plain tests and from the multi-threaded tokio tests alike: inside a
/// runtime it first hands the worker's other tasks (a fake AMI's sessions)
/// to another thread, so they keep running while this one blocks.
pub fn blocking<T>(f: impl FnOnce() -> T) -> T {
    if tokio::runtime::Handle::try_current().is_ok() { tokio::task::block_in_place(f) } else { f() }
}
