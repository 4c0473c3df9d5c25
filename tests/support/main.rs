//! Self-tests of the integration-test support code.
//!
//! Cargo builds `tests/<dir>/main.rs` as a test target of its own (here:
//! `support`), so these tests run once, in `cargo test --test support`,
//! instead of being compiled into and run by every integration test file
//! that includes `mod support;` (which only pulls in `mod.rs`).
#![allow(dead_code)]

mod fake_ami;
mod sandbox;
mod wav;

mod fake_ami_tests;
mod sandbox_tests;
mod wav_tests;
