//! Shared helpers for voice-otp's integration tests, included by each test
//! file with `mod support;`.
//!
//! - [`daemon`]: run the real `voice-otp` binary with its own config and ports.
//! - [`http`]: a raw HTTP/1.1 client that can send malformed requests.
//! - [`sandbox`]: the sandbox Asterisk (scripts/sandbox) and its status.
//! - [`wav`]: read the sandbox phone's recordings and find the speech in them.
//! - [`fake_ami`]: a scripted Asterisk Manager Interface server over real TCP.
//! - [`fake_agi`]: a scripted FastAGI client playing an answered channel.
//!
//! Every integration test file is its own crate and uses only part of this,
//! hence the blanket `dead_code` allowance. The self-tests of `wav` and
//! `fake_ami` live in `*_tests.rs` and run once, as the `support` test target
//! (`tests/support/main.rs`), not in every crate that includes this module.
#![allow(dead_code)]

pub mod daemon;
pub mod fake_agi;
pub mod fake_ami;
pub mod http;
pub mod sandbox;
pub mod wav;
