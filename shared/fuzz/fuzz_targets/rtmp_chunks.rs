//! The RTMP chunk decoder on arbitrary bytes in arbitrary pieces (the first
//! byte picks the piece size), then every message through the command
//! (AMF0) parser, the FLV tag mapping, aggregates and user control: never
//! panic, memory within the limits, a decoded command re-encodes to a
//! payload that parses to the same command.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vantage_shared::rtmp::message::{self, Command};
use vantage_shared::rtmp::{ChunkDecoder, Limits};

fuzz_target!(|data: &[u8]| {
    let Some((&step, data)) = data.split_first() else {
        return;
    };
    let step = usize::from(step).max(1);
    let limits = Limits {
        max_chunk_size: 4096,
        max_message_len: 64 * 1024,
        max_chunk_streams: 16,
        max_buffered: 128 * 1024,
    };
    let mut d = ChunkDecoder::new(limits);
    for piece in data.chunks(step) {
        d.push(piece);
        loop {
            match d.next_message() {
                Ok(Some(m)) => {
                    assert!(m.payload.len() <= 64 * 1024);
                    if let Ok(c) = Command::parse(&m.payload, m.type_id) {
                        let again = Command::parse(&c.payload(), message::COMMAND_AMF0);
                        assert!(again.is_ok(), "{c:?} does not parse back");
                    }
                    if let Some(t) = message::to_tag(&m) {
                        let _ = (t.is_coded_keyframe(), t.is_sequence_header());
                    }
                    let _ = message::split_aggregate(&m);
                    let _ = message::parse_user_control(&m.payload);
                }
                Ok(None) => break,
                Err(_) => return,
            }
        }
        assert!(d.buffered() <= 128 * 1024 + step + 4096 + 20);
    }
});
