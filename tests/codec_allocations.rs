//! Decoding an AMI message allocates per message, not per header: its text
//! once and the list of where its headers lie. Counted with a global
//! allocator that tallies the allocations of the current thread while a
//! decode runs (an exact count, not a timing).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use bytes::BytesMut;
use tokio_util::codec::Decoder;
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
    ALLOCATIONS.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    let frame = codec.decode(&mut buf);
    COUNTING.with(|c| c.set(false));
    let Ok(Some(Frame::Message(message))) = frame else { panic!("no message decoded: {frame:?}") };
    assert_eq!(message.headers().count(), headers);
    assert_eq!(message.get("Event"), Some("Newchannel"));
    drop(message);
    ALLOCATIONS.with(Cell::get)
}

#[test]
fn a_message_costs_two_allocations_whatever_its_size() {
    for headers in [2, 12, 200] {
        assert_eq!(allocations_to_decode(headers), 2, "{headers} headers");
    }
}
