//! What each fuzz target does with its input, shared by the cargo-fuzz
//! targets (`fuzz_targets/*.rs`) and by `tests/codec_props.rs`, which
//! replays the checked-in corpus on stable Rust in every `cargo test`.
//!
//! The first input byte picks the size of the chunks the rest is fed in,
//! so the fuzzer also explores how frames split across reads. The codecs
//! must never panic, never loop, and never buffer past their bounds.

use bytes::BytesMut;
use tokio_util::codec::Decoder;
use voice_otp::agi::AgiCodec;
use voice_otp::ami::AmiCodec;

/// Largest buffer a codec may leave behind: its frame bound plus one read.
const SLACK: usize = 64 * 1024 + 256;

/// Feeds `data` to a fresh decoder in chunks until it errs or the input
/// ends, then signals end of stream.
fn drive<D: Decoder>(mut codec: D, data: &[u8]) {
    let Some((&first, rest)) = data.split_first() else { return };
    let chunk = usize::from(first % 64) + 1;
    let mut buf = BytesMut::new();
    for piece in rest.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(_)) => continue,
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(buf.len() <= SLACK, "decoder buffered {} bytes without a frame or an error", buf.len());
    }
    while let Ok(Some(_)) = codec.decode_eof(&mut buf) {}
}

/// The AMI decoder (client side: banner, then messages).
pub fn ami_codec(data: &[u8]) {
    drive(AmiCodec::new(), data);
}

/// The FastAGI decoder (request block, then replies and HANGUP lines).
pub fn agi_codec(data: &[u8]) {
    drive(AgiCodec::new(), data);
}
