//! `cargo fuzz run agi_codec`: arbitrary bytes from "Asterisk" into the FastAGI decoder.
#![no_main]

// Each target uses one of the harness functions.
#[allow(dead_code)]
#[path = "../harness.rs"]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::agi_codec(data));
