//! Decoding allocates per frame, not per line: an AMI message its text once
//! and the list of where its headers lie; a FastAGI request block the same
//! into buffers sized up front; a FastAGI reply its text. Counted with a
//! global allocator that tallies the allocations of the current thread
//! while a decode runs (an exact count, not a timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use voice_otp::agi::codec::{AgiCodec, AgiFrame};
use voice_otp::ami::codec::{AmiCodec, Frame};

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is forwarded to the system allocator unchanged; the
// tally only touches const-initialised thread locals, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if COUNTING.with(Cell::get) {
            ALLOCATIONS.with(|n| n.set(n.get() + 1));
        }
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Runs `f` and returns what it returned and how many allocations it made.
fn counted<T>(f: impl FnOnce() -> T) -> (T, usize) {
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let out = f();
    COUNTING.with(|c| c.set(false));
    (out, ALLOCATIONS.with(Cell::get))
}

/// Allocations made by one decode of a whole message of `headers` headers.
fn allocations_to_decode(headers: usize) -> usize {
    let mut codec = AmiCodec::new();
    let mut buf = BytesMut::from(&b"Asterisk Call Manager/11.0.0\r\n"[..]);
    assert!(matches!(codec.decode(&mut buf), Ok(Some(Frame::Banner(_)))));
    buf.extend_from_slice(b"Event: Newchannel\r\nPrivilege: call,all\r\n");
    for i in 0..headers.saturating_sub(2) {
        buf.extend_from_slice(format!("ChanVariable: VAR{i}=value{i}\r\n").as_bytes());
    }
    buf.extend_from_slice(b"\r\n");
    let (frame, allocations) = counted(|| codec.decode(&mut buf));
    let Ok(Some(Frame::Message(message))) = frame else { panic!("no message decoded: {frame:?}") };
    assert_eq!(message.headers().count(), headers);
    assert_eq!(message.get("Event"), Some("Newchannel"));
    allocations
}

#[test]
fn a_message_costs_two_allocations_whatever_its_size() {
    for headers in [2, 12, 200] {
        assert_eq!(allocations_to_decode(headers), 2, "{headers} headers");
    }
}

/// The request block Asterisk 22 sends (25 variables), then a reply.
#[test]
fn a_fastagi_request_block_and_a_reply_allocate_per_frame() {
    let mut codec = AgiCodec::new();
    let mut buf = BytesMut::with_capacity(4096);
    for (name, value) in [
        ("network", "yes"),
        ("network_script", "otp"),
        ("request", "agi://127.0.0.1:4573/otp"),
        ("channel", "PJSIP/carrier-00000001"),
        ("language", "en"),
        ("type", "PJSIP"),
        ("uniqueid", "c0b27d86de52fcd777de3e85096d68d6"),
        ("version", "22.0.0"),
        ("callerid", "unknown"),
        ("calleridname", "unknown"),
        ("callingpres", "67"),
        ("callingani2", "0"),
        ("callington", "0"),
        ("callingtns", "0"),
        ("dnid", "unknown"),
        ("rdnis", "unknown"),
        ("context", "voice-otp"),
        ("extension", "s"),
        ("priority", "4"),
        ("enhanced", "0.0"),
        ("accountcode", ""),
        ("threadid", "140000000000000"),
        ("arg_1", "one"),
        ("arg_2", "two"),
        ("arg_3", "three"),
    ] {
        buf.extend_from_slice(format!("agi_{name}: {value}\n").as_bytes());
    }
    buf.extend_from_slice(b"\n200 result=0 endpos=8000\n");
    let (frame, allocations) = counted(|| codec.decode(&mut buf));
    let Ok(Some(AgiFrame::Request(request))) = frame else { panic!("no request decoded: {frame:?}") };
    assert_eq!(request.vars().count(), 25);
    assert_eq!(request.uniqueid(), Some("c0b27d86de52fcd777de3e85096d68d6"));
    assert!(allocations <= 1, "{allocations} allocations for a 25-variable request block");
    let (frame, allocations) = counted(|| codec.decode(&mut buf));
    let Ok(Some(AgiFrame::Reply(reply))) = frame else { panic!("no reply decoded: {frame:?}") };
    assert_eq!((reply.code, reply.result, reply.endpos), (200, Some(0), Some(8000)));
    assert!(allocations <= 1, "{allocations} allocations for one reply");
}
