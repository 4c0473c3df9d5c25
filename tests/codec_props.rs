//! Property tests of the AMI and FastAGI codecs (proptest), and a replay of
//! the cargo-fuzz corpus (`fuzz/corpus/`) through the fuzz targets' own
//! harness, so stable `cargo test` exercises what the fuzzer found.
//!
//! Properties: what we encode decodes back to the same thing, however the
//! bytes are split across reads; a value can never smuggle a second frame
//! in; an AMI message over the frame bound is skipped and the next one
//! decodes; arbitrary bytes never panic a decoder nor make it buffer
//! unbounded.

#[path = "../fuzz/harness.rs"]
mod harness;

use bytes::BytesMut;
use proptest::prelude::*;
use tokio_util::codec::{Decoder, Encoder};
use voice_otp::agi::{AgiCodec, AgiFrame, Command, Reply};
use voice_otp::ami::{Action, AmiCodec, Frame};

const BANNER: &[u8] = b"Asterisk Call Manager/11.0.0\r\n";

/// Decodes `input` fed in pieces of `chunk` bytes; every frame, or the first error.
fn decode_chunked<D: Decoder>(mut codec: D, input: &[u8], chunk: usize) -> Result<Vec<D::Item>, D::Error> {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while let Some(frame) = codec.decode(&mut buf)? {
            frames.push(frame);
        }
    }
    while let Some(frame) = codec.decode_eof(&mut buf)? {
        frames.push(frame);
    }
    Ok(frames)
}

/// AMI header keys as `Action` accepts them: visible ASCII, no colon.
fn ami_key() -> impl Strategy<Value = String> {
    "[!-9;-~]{1,24}"
}

/// Any text without the line breaks and NUL that `Action` refuses.
fn ami_value() -> impl Strategy<Value = String> {
    "[^\r\n\u{0}]{0,48}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn ami_actions_round_trip(
        name in ami_key(),
        id in proptest::option::of(ami_value()),
        headers in proptest::collection::vec((ami_key(), ami_value()), 0..12),
        chunk in 1usize..64,
    ) {
        let mut action = Action::new(name.clone()).unwrap();
        if let Some(id) = &id {
            action.set_action_id(id.clone()).unwrap();
        }
        let mut kept = Vec::new();
        for (k, v) in headers {
            // Reserved keys (Action, ActionID) are refused, not written.
            if let Ok(a) = action.clone().header(k.clone(), v.clone()) {
                action = a;
                kept.push((k, v));
            }
        }
        let mut wire = BytesMut::from(BANNER);
        AmiCodec::new().encode(&action, &mut wire).unwrap();
        let frames = decode_chunked(AmiCodec::new(), &wire, chunk).unwrap();
        prop_assert_eq!(frames.len(), 2, "banner and exactly one message");
        let Frame::Message(message) = &frames[1] else { panic!("not a message: {:?}", frames[1]) };
        let mut expected = vec![("Action".to_owned(), name)];
        if let Some(id) = id {
            expected.push(("ActionID".to_owned(), id));
        }
        expected.extend(kept);
        let decoded: Vec<(String, String)> = message.headers().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(decoded, expected);
    }

    #[test]
    fn ami_values_cannot_smuggle_a_frame(value in "(.|\r|\n|\u{0}){0,40}") {
        match Action::new("Ping").unwrap().header("X", value.clone()) {
            Err(_) => prop_assert!(value.contains(['\r', '\n', '\0'])),
            Ok(action) => {
                let mut wire = BytesMut::from(BANNER);
                AmiCodec::new().encode(&action, &mut wire).unwrap();
                prop_assert_eq!(decode_chunked(AmiCodec::new(), &wire, 7).unwrap().len(), 2);
            }
        }
    }

    #[test]
    fn ami_oversized_message_costs_only_itself(
        over in 1usize..3000,
        value in "[ -~]{0,40}",
        chunk in 1usize..512,
    ) {
        let mut wire = BytesMut::from(BANNER);
        wire.extend_from_slice(b"Event: VarSet\r\nValue: ");
        wire.extend_from_slice(&vec![b'v'; 1024 + over]);
        wire.extend_from_slice(b"\r\n\r\n");
        let action = Action::new("Ping").unwrap().header("X", value.clone()).unwrap();
        AmiCodec::new().encode(&action, &mut wire).unwrap();
        let frames = decode_chunked(AmiCodec::with_max_frame(1024), &wire, chunk).unwrap();
        prop_assert_eq!(frames.len(), 3, "banner, the skipped message, the next one: {:?}", frames);
        prop_assert_eq!(&frames[1], &Frame::Oversized { max: 1024 });
        let Frame::Message(message) = &frames[2] else { panic!("not a message: {:?}", frames[2]) };
        prop_assert_eq!(message.get("X"), Some(value.as_str()));
    }

    #[test]
    fn ami_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        harness::ami_codec(&data);
    }

    #[test]
    fn ami_decoder_survives_arbitrary_lines(lines in proptest::collection::vec("[ -~]{0,80}(\r\n|\n|)", 0..60)) {
        let mut data = vec![13u8];
        data.extend(lines.concat().bytes());
        harness::ami_codec(&data);
    }

    #[test]
    fn agi_request_blocks_round_trip(
        vars in proptest::collection::vec(("agi_[a-z0-9_]{1,20}", "[^\r\n]{0,60}"), 1..40),
        crlf in any::<bool>(),
        chunk in 1usize..64,
    ) {
        let end = if crlf { "\r\n" } else { "\n" };
        let mut wire: String = vars.iter().map(|(k, v)| format!("{k}: {v}{end}")).collect();
        wire.push_str(end);
        let frames = decode_chunked(AgiCodec::new(), wire.as_bytes(), chunk).unwrap();
        prop_assert_eq!(frames.len(), 1);
        let AgiFrame::Request(request) = &frames[0] else { panic!("not a request: {:?}", frames[0]) };
        let decoded: Vec<(String, String)> = request.vars().map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        prop_assert_eq!(decoded, vars);
    }

    #[test]
    fn agi_replies_round_trip(
        replies in proptest::collection::vec(
            (any::<i64>(), proptest::option::of("[A-Za-z0-9 ()*#-]{0,30}"), proptest::option::of(any::<u64>())),
            1..20,
        ),
        hangup_at in any::<prop::sample::Index>(),
        chunk in 1usize..64,
    ) {
        let mut wire = String::from("agi_network: yes\n\n");
        let mut expected = vec![];
        let hangup_at = hangup_at.index(replies.len());
        for (i, (result, data, endpos)) in replies.iter().enumerate() {
            if i == hangup_at {
                wire.push_str("HANGUP\n");
                expected.push(AgiFrame::Hangup);
            }
            let mut text = format!("result={result}");
            if let Some(data) = data {
                text.push_str(&format!(" ({data})"));
            }
            if let Some(endpos) = endpos {
                text.push_str(&format!(" endpos={endpos}"));
            }
            wire.push_str(&format!("100 Trying...\n200 {text}\n"));
            expected.push(AgiFrame::Reply(Reply {
                code: 200,
                result: Some(*result),
                data: data.clone(),
                endpos: *endpos,
                text,
            }));
        }
        let frames = decode_chunked(AgiCodec::new(), wire.as_bytes(), chunk).unwrap();
        prop_assert_eq!(&frames[1..], expected.as_slice());
    }

    #[test]
    fn agi_commands_encode_to_one_line_or_nothing(
        file in "(.|\n|\r){0,24}",
        escape in "[0-9*#a\n]{0,4}",
        digits in "[0-9a\r]{0,24}",
        timeout in any::<i64>(),
    ) {
        let commands = [
            Command::StreamFile { file: file.clone(), escape_digits: escape.clone(), offset: None },
            Command::GetOption { file: file.clone(), escape_digits: escape.clone(), timeout_ms: None },
            Command::GetData { file, timeout_ms: timeout as u32, max_digits: (timeout >> 32) as u32 },
            Command::SayDigits { digits, escape_digits: escape },
            Command::WaitForDigit { timeout_ms: timeout },
        ];
        for cmd in commands {
            let mut dst = BytesMut::new();
            match AgiCodec::new().encode(&cmd, &mut dst) {
                Err(_) => prop_assert!(dst.is_empty(), "a refused command wrote {:?}", dst),
                Ok(()) => {
                    prop_assert!(dst.ends_with(b"\n"));
                    prop_assert!(!dst[..dst.len() - 1].iter().any(|b| *b == b'\n' || *b == b'\r' || *b == 0));
                }
            }
        }
    }

    #[test]
    fn agi_decoder_survives_arbitrary_bytes(data in proptest::collection::vec(any::<u8>(), 0..4096)) {
        harness::agi_codec(&data);
    }

    #[test]
    fn agi_decoder_survives_arbitrary_lines(
        block in proptest::collection::vec("agi_[a-z]{1,8}: [ -~]{0,20}\n", 0..5),
        lines in proptest::collection::vec("(HANGUP|[0-9]{3}[ -]?[ -~]{0,40}|[ -~]{0,40})(\r\n|\n)", 0..40),
    ) {
        let mut data = vec![3u8];
        data.extend(block.concat().bytes());
        data.push(b'\n');
        data.extend(lines.concat().bytes());
        harness::agi_codec(&data);
    }
}

/// Every file in `fuzz/corpus/<target>/` (the seeds, and whatever a local
/// fuzzing run added) through the fuzz target's harness.
fn replay_corpus(target: &str, run: fn(&[u8])) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{dir:?}: {e}")) {
        let path = entry.unwrap().path();
        run(&std::fs::read(&path).unwrap());
        n += 1;
    }
    assert!(n > 0, "empty corpus {dir:?}");
}

#[test]
fn ami_fuzz_corpus_replays() {
    replay_corpus("ami_codec", harness::ami_codec);
}

#[test]
fn agi_fuzz_corpus_replays() {
    replay_corpus("agi_codec", harness::agi_codec);
}

#[test]
fn fuzz_seeds_decode_to_frames() {
    // The seeds are real transcripts, not noise: they must decode whole, so
    // the fuzzer starts from inputs that reach deep into the parsers.
    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/ami_codec/login")).unwrap();
    assert_eq!(decode_chunked(AmiCodec::new(), &seed[1..], 5).unwrap().len(), 3);
    let seed = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/agi_codec/call")).unwrap();
    let frames = decode_chunked(AgiCodec::new(), &seed[1..], 7).unwrap();
    assert_eq!(frames.len(), 5, "{frames:?}");
}
